"""`grove demo`: the whole lineage on the demo profile, into a Dagster home that `dagster dev` opens.

synthetic raw videos → catalog → annotation stages 1/2/3 per shard → pre-training subsets →
pre-training per size → fine-tuning (and FT-only) → inference → metrics → data-scaling curve.
Everything lands under runs/demo (or $GROVE_RUNS): data, checkpoints, metrics, the MLflow store
and the Dagster home. A second run reuses every asset Dagster reports as up to date.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from grove.io import atomic_write_text
from orchestration.profile import REPO_ROOT, Profile, load_profile, runs_root

log = logging.getLogger(__name__)


def instance_settings(home: Path, gpu_slots: int) -> dict[str, Any]:
    """dagster.yaml of a pipeline home: the `gpu` pool's limit, and storage that is quick to write.

    The consolidated event log is one SQLite file; Dagster's default makes a new file per run and
    spends about a second creating its schema, which a lineage of many small runs pays every time.
    """
    return {
        "event_log_storage": {
            "module": "dagster._core.storage.event_log",
            "class": "ConsolidatedSqliteEventLogStorage",
            "config": {"base_dir": str(home / "history")},
        },
        "concurrency": {"pools": {"granularity": "op", "default_limit": int(gpu_slots)}},
        "telemetry": {"enabled": False},
    }


def prepare_home(home: Path, gpu_slots: int) -> Path:
    """Write the home's dagster.yaml (kept when identical, so a running `dagster dev` is undisturbed)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    text = yaml.safe_dump(instance_settings(home, gpu_slots), sort_keys=True)
    if not config.exists() or config.read_text() != text:
        atomic_write_text(config, text)
    return home


@contextlib.contextmanager
def exclusive_demo(root: Path) -> Iterator[None]:
    """One demo at a time per runs root: a second one fails at once instead of corrupting the first."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".demo.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RuntimeError(f"{root}: another `grove demo` is running on this runs root") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class DemoResult:
    profile: Profile
    root: Path
    seconds: float
    materialised: int
    reused: int
    rows: list[tuple[str, dict[str, float]]]
    plot: Path | None
    experiment: str
    mlflow_store: str
    dagster_home: Path


def ui_commands(result: DemoResult) -> list[str]:
    venv = REPO_ROOT / ".venv" / "bin"
    return [
        f"DAGSTER_HOME={result.dagster_home} GROVE_PROFILE={result.profile.name} "
        f"{'GROVE_RUNS=' + str(result.root) + ' ' if result.root != REPO_ROOT / 'runs' / result.profile.name else ''}"
        f"{venv / 'dagster'} dev -w {REPO_ROOT / 'workspace.yaml'}",
        f"{venv / 'mlflow'} ui --backend-store-uri {result.mlflow_store} --port 5000",
    ]


def read_metric_rows(metrics_dir: Path, order: list[str], labels: dict[str, str]) -> list[tuple[str, dict[str, float]]]:
    """Rows of the demo table from the metrics files the evaluation assets write (one per partition)."""
    rows = []
    for partition in order:
        path = metrics_dir / f"{partition}.json"
        if path.exists():
            values = json.loads(path.read_text())
            rows.append((labels.get(partition, partition), {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}))
    return rows
