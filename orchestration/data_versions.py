"""Data versioning of a profile whose runs dvc.yaml does not describe (the paper profile): `grove dvc track`.

The demo's outputs are versioned by dvc.yaml's stages, which the Dagster assets commit. A paper run lives
wherever `GROVE_RUNS` points (a cluster file system), with no stages: there, each asset's data version is
`dvc_md5` of its output, the hash DVC itself records for it (DvcResource with DVC off). `track` makes the runs
root a git + DVC repository of its own, `dvc add`s the outputs worth keeping (annotation pool and shards,
pre-training subsets, pre-trained and fine-tuned checkpoints), checks that every recorded hash is the data
version the asset recorded, commits the `.dvc` files, and pushes the data to a remote (a folder or any URL
`dvc remote add` takes, such as s3://bucket/path with an S3-compatible endpoint).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
import yaml

from orchestration.commands import PARAMS_OPTION, PROFILE_OPTION
from orchestration.profile import REPO_ROOT, Profile

if TYPE_CHECKING:  # they load Dagster, and `grove` imports this module at every start: imported where used
    from orchestration.resources import DvcResource, PipelinePaths

REMOTE_NAME = "grove"


class DataVersionError(RuntimeError):
    """A git or DVC step of versioning failed, or DVC recorded another hash than the asset's data version."""


@dataclass(frozen=True)
class TrackedOutput:
    """One output under DVC: its path relative to the runs root, and the hash its .dvc file records."""

    path: str
    md5: str


def versioned_outputs(profile: Profile, paths: PipelinePaths) -> list[Path]:
    """The profile's outputs that exist, among those worth a version: the annotated pool (with its shards),
    each pre-training subset, each pre-trained and each fine-tuned checkpoint folder."""
    from orchestration.defs.common import FT_ONLY

    candidates = [paths.path("annotation")]
    candidates += [paths.path("subsets", size) for size in profile.sizes]
    candidates += [paths.path("pretrained", size) for size in profile.sizes]
    candidates += [paths.path("finetuned", variant) for variant in [*profile.sizes, FT_ONLY]]
    return [path for path in candidates if path.exists()]


def _call(root: Path, *command: str) -> str:
    try:
        done = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise DataVersionError(f"`{' '.join(command)}` in {root}: {exc}") from exc
    if done.returncode != 0:
        raise DataVersionError(f"`{' '.join(command)}` in {root} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done.stdout


def _git(root: Path, *args: str) -> str:
    return _call(root, "git", *args)


def prepare_repository(root: Path, remote: Optional[str]) -> DvcResource:
    """The runs root as a git + DVC repository (made once), with the project's .dvcignore (so DVC leaves out
    of its hashes the names the data versions leave out) and, when given, `remote` as its default remote."""
    from orchestration.resources import DVCIGNORE, DvcResource

    root.mkdir(parents=True, exist_ok=True)
    if not (root / ".git").exists():
        _git(root, "init", "-q")
    executable = DvcResource().dvc_executable()  # the project's DVC
    if not (root / ".dvc").is_dir():
        _call(root, executable, "init", "--quiet")  # before DvcResource.run, whose lock file lives in .dvc
    dvc = DvcResource(repo=str(root), executable=executable)
    dvc.run("config", "core.autostage", "true")  # `dvc add` stages the .dvc and .gitignore files it writes
    dvc.run("config", "core.analytics", "false")  # as the project's own repository: no network but the remote's
    shutil.copy(REPO_ROOT / DVCIGNORE, root / DVCIGNORE)
    if remote:
        dvc.run("remote", "add", "--force", "--default", REMOTE_NAME, remote)
    return dvc


def recorded_md5(dvc_file: Path) -> str:
    """The hash a .dvc file records for its single output."""
    try:
        outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or []
    except (OSError, yaml.YAMLError) as exc:
        raise DataVersionError(f"{dvc_file}: unreadable .dvc file: {exc}") from exc
    if len(outs) != 1 or "md5" not in outs[0]:
        raise DataVersionError(f"{dvc_file}: expected one output with an md5, found {outs!r}")
    return str(outs[0]["md5"])


def track(root: Path, outputs: list[Path], dvc: DvcResource, message: str) -> list[TrackedOutput]:
    """`dvc add` the outputs, check each recorded hash against the data version the assets computed
    (`dvc_md5`, with the repository's .dvcignore), and commit what changed to the runs root's git."""
    from orchestration.resources import DVCIGNORE, dvc_md5

    relative = [output.resolve().relative_to(root.resolve()).as_posix() for output in outputs]
    if not relative:
        return []
    dvc.run("add", "--quiet", *relative)
    tracked = []
    for path in relative:
        md5 = recorded_md5(root / f"{path}.dvc")
        version = dvc_md5(root / path)
        if md5 != version:
            raise DataVersionError(f"{root / path}.dvc: DVC recorded {md5}, the assets' data version is {version} "
                           f"(is {root / DVCIGNORE} the project's?)")
        tracked.append(TrackedOutput(path, md5))
    _git(root, "add", DVCIGNORE, ".dvc/config", *(f"{path}.dvc" for path in relative))
    if _git(root, "status", "--porcelain", "--untracked-files=no").strip():
        _git(root, "commit", "-q", "-m", message)
    return tracked


dvc_app = typer.Typer(no_args_is_help=True, add_completion=False)


@dvc_app.command("track")
def track_command(
    profile: Optional[str] = PROFILE_OPTION,
    params: Optional[Path] = PARAMS_OPTION,
    remote: Optional[str] = typer.Option(None, "--remote", help="Default DVC remote of the runs root: a folder, or a URL "
                                         "`dvc remote add` takes (s3://bucket/path; endpoint and keys: `dvc remote modify`)."),
    push: bool = typer.Option(False, "--push", help="Push the tracked data to the default remote."),
) -> None:
    """Version a profile's annotation, subsets and checkpoints with DVC in its runs root (its own git + DVC
    repository), commit the .dvc files, and optionally push the data to a remote."""
    from orchestration.definitions import dvc_enabled
    from orchestration.profile import load_profile, runs_root
    from orchestration.resources import PipelinePaths

    chosen = load_profile(profile, params)
    root = runs_root(chosen)
    if dvc_enabled(chosen, root):
        typer.echo(f"error: {root}: dvc.yaml's stages version these outputs already (grove demo commits them)", err=True)
        raise typer.Exit(1)
    outputs = versioned_outputs(chosen, PipelinePaths(root=str(root)))
    if not outputs:
        typer.echo(f"error: {root}: none of the profile '{chosen.name}' outputs to version exists yet", err=True)
        raise typer.Exit(1)
    dvc = prepare_repository(root, remote)
    for output in track(root, outputs, dvc, f"grove dvc track: profile {chosen.name}, {len(outputs)} outputs"):
        typer.echo(f"{output.md5}  {output.path}")
    if push:
        dvc.run("push", "--quiet")
        typer.echo(f"pushed to the default remote of {root}")
