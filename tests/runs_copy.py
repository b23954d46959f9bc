"""A copy of a runs root that works on its own: tests that change a lineage (kill it, launch runs from a UI)
work on a copy, so the session's lineage stays as other tests expect it."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Collection


def copy_runs_root(source: Path, dest: Path, left_out: Collection[str] = ()) -> Path:
    """Copy `source` (data, Dagster home, MLflow store) to `dest`, leaving out its paths named in `left_out`
    (relative to `source`), with the MLflow store's artifact locations moved to the copy. Dagster's
    dagster.yaml still names the source's storage: `orchestration.demo.prepare_home` rewrites it."""
    skipped = {source / name for name in left_out}
    shutil.copytree(source, dest, symlinks=True, ignore=lambda folder, names: [n for n in names if Path(folder, n) in skipped])
    old, new = source.resolve().as_uri(), dest.resolve().as_uri()
    with sqlite3.connect(dest / "mlflow.db") as db:
        db.execute("UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)", (old, new))
        db.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
    return dest
