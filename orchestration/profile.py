"""Profiles: the `demo` and `paper` sections of params.yaml, and where a profile's runs live.

One file configures both orchestrators: Dagster builds its definitions from the selected profile
and DVC stages read the same keys. The profile is picked by `GROVE_PROFILE`, then by the file's
top-level `profile:` key; another params file by `GROVE_PARAMS`. Paths come from the environment
(`GROVE_RUNS`), never from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PARAMS_FILE = REPO_ROOT / "params.yaml"
PROFILE_ENV = "GROVE_PROFILE"
PARAMS_ENV = "GROVE_PARAMS"
RUNS_ENV = "GROVE_RUNS"
_MISSING = object()


class ProfileError(ValueError):
    """params.yaml is missing, unreadable, or lacks a key a profile needs; the message names the file and key."""


@dataclass(frozen=True)
class Profile:
    """One profile section of params.yaml, with dotted-key access and fingerprints of its parts."""

    name: str
    params: Mapping[str, Any]
    params_file: Path

    def get(self, dotted: str, default: Any = _MISSING) -> Any:
        node: Any = self.params
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if default is _MISSING:
                    raise ProfileError(f"{self.params_file}: profile '{self.name}' has no key '{dotted}'")
                return default
            node = node[part]
        return node

    @property
    def seed(self) -> int:
        return int(self.get("seed"))

    @property
    def sizes(self) -> list[str]:
        """Pre-training subset sizes, smallest first (partition keys of the scaling and model assets)."""
        return [str(size) for size in self.get("scaling.sizes")]

    def size_clips(self, size: str) -> int | None:
        """Clips in a subset; None means the whole auto-annotated pool."""
        clips = self.get(f"scaling.size_clips.{size}")
        return None if clips is None else int(clips)

    def fingerprint(self, *dotted_keys: str) -> str:
        """A short stable hash of some parameters: part of the code version of the assets they shape."""
        chosen = {key: self.get(key, None) for key in dotted_keys}
        payload = json.dumps(chosen, sort_keys=True, default=str).encode()
        return hashlib.sha256(payload).hexdigest()[:12]


def read_params(params_file: str | os.PathLike[str] = PARAMS_FILE) -> dict[str, Any]:
    path = Path(params_file)
    if not path.exists():
        raise ProfileError(f"{path}: no such params file")
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ProfileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ProfileError(f"{path}: expected a mapping of profiles at the top level")
    return params


def load_profile(name: str | None = None, params_file: str | os.PathLike[str] | None = None) -> Profile:
    """The named profile, else `$GROVE_PROFILE`, else the file's `profile:` key, else `demo`; from
    `params_file`, else `$GROVE_PARAMS`, else the repository's params.yaml."""
    params_file = params_file or os.environ.get(PARAMS_ENV) or PARAMS_FILE
    params = read_params(params_file)
    name = name or os.environ.get(PROFILE_ENV) or params.get("profile") or "demo"
    section = params.get(name)
    if not isinstance(section, dict):
        known = sorted(key for key, value in params.items() if isinstance(value, dict))
        raise ProfileError(f"{params_file}: no profile '{name}' (profiles: {', '.join(known)})")
    return Profile(name=name, params=section, params_file=Path(params_file))


def runs_root(profile: Profile) -> Path:
    """Where a profile's data, checkpoints, metrics, MLflow store and Dagster home live."""
    override = os.environ.get(RUNS_ENV)
    return Path(override).resolve() if override else REPO_ROOT / "runs" / profile.name
