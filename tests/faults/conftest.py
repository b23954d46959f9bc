"""The uninterrupted run every fault test compares against: the tiny lineage up to the iGround metrics
of one pre-training size, materialised once per session by the runner process (with its writes
counted, so that each kind of asset knows the writes a kill can land on), in a runs root that is
also a DVC repository."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.faults.harness import (
    BASE_STEPS,
    STEP_MARKS,
    Event,
    Kind,
    init_dvc,
    read_events,
    run_steps,
    step_writes,
    under,
    write_params,
)
from tests.runs_copy import copy_runs_root


@dataclass(frozen=True)
class Base:
    params: Path
    root: Path
    events: list[Event]

    def writes(self, kind: Kind) -> list[Event]:
        """The watched writes of `kind`'s materialisation in the uninterrupted run."""
        step = BASE_STEPS.index(kind.step)
        return [event for event in step_writes(self.events, step) if under(event.path, kind.watched)]

    def copy(self, dest: Path) -> Path:
        """A runs root holding the uninterrupted run's data, Dagster history, MLflow store (its artifact
        locations moved to the copy) and DVC repository with an empty cache (so that a commit writes
        what it wrote in the uninterrupted run)."""
        return copy_runs_root(self.root, dest, left_out=(STEP_MARKS, ".dvc/cache"))


@pytest.fixture(scope="session")
def fault_base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    folder = tmp_path_factory.mktemp("faults")
    params = write_params(folder)
    root = folder / "runs"
    init_dvc(root)
    log = folder / "base_writes.log"
    finished = run_steps(params, root, BASE_STEPS, folder / "base.out", log=log, mark_steps=True)
    assert finished.returncode == 0, f"the uninterrupted run failed:\n{finished.output[-4000:]}"
    return Base(params, root, read_events(log))
