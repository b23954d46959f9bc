"""kill -9 at a seeded random write of each kind of asset, then a re-materialisation: the outputs equal
the uninterrupted run's, no half file is left where a later run would read it, and the MLflow,
Dagster and DVC stores stay readable.

Each kind starts from a copy of the uninterrupted run's root with that asset's outputs removed, so
the killed run writes them from scratch, and is killed at one of its output writes; a second test
kills a re-materialisation over finished outputs at one of its MLflow or DVC writes, which must leave
the outputs as they were and the stores readable. Training is killed as an asset (the Pipes process
with it); bitwise resume of the training loop itself is tests/train's subject.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.faults.harness import KINDS, fault_seed, kill_point, output_files, run_steps, store_problems, temporary_files, unreadable_files

pytestmark = pytest.mark.slow

def remove_outputs(root: Path, outputs: tuple[str, ...]) -> None:
    for output in outputs:
        path = root / output
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def killed_run(fault_base, kind, root: Path, tmp_path: Path, among: str):
    point = kill_point(fault_seed(), kind, fault_base.writes(kind), among)
    print(point)  # the seed and the write: `pytest -rP` shows them
    killed = run_steps(fault_base.params, root, [kind.step], tmp_path / "killed.out", log=tmp_path / "killed.log",
                       watched=kind.watched_among(among), kill_at=point.number, delay=point.delay)
    assert killed.killed, f"{point}: the run was not killed (exit {killed.returncode}):\n{killed.output[-3000:]}"
    return point


@pytest.mark.parametrize("name", list(KINDS))
def test_sigkill_then_rematerialise_equals_the_uninterrupted_run(name, fault_base, tmp_path):
    kind = KINDS[name]
    root = fault_base.copy(tmp_path / "runs")
    remove_outputs(root, kind.outputs)
    point = killed_run(fault_base, kind, root, tmp_path, "outputs")
    assert unreadable_files(root, kind.outputs) == [], f"{point}: half-written files"
    assert store_problems(root) == [], f"{point}: a store is unreadable after the kill"

    rerun = run_steps(fault_base.params, root, [kind.step], tmp_path / "rerun.out")
    assert rerun.returncode == 0, f"{point}: re-materialising failed: {rerun.error_line()}"
    assert output_files(root, kind.outputs) == output_files(fault_base.root, kind.outputs), f"{point}: outputs differ"
    dvc_outputs = kind.outputs if kind.dvc_stage else ()
    assert store_problems(root, dvc_outputs) == [], f"{point}: a store is unreadable after the re-materialisation"
    # left-over temporary files are named so that DVC's hash (and dvc_md5) leaves them out
    assert set(temporary_files(root, kind.outputs)).isdisjoint(output_files(root, kind.outputs)), point


@pytest.mark.parametrize("name", ["subset", "training"])
def test_sigkill_during_a_rematerialisation_leaves_the_finished_outputs(name, fault_base, tmp_path):
    """A re-run killed while it records its outputs (MLflow artifacts, the DVC commit), with the same inputs
    and so the same bytes, leaves every finished file whole and equal."""
    kind = KINDS[name]
    root = fault_base.copy(tmp_path / "runs")
    point = killed_run(fault_base, kind, root, tmp_path, "stores")
    assert output_files(root, kind.outputs) == output_files(fault_base.root, kind.outputs), f"{point}: a finished output changed"
    assert store_problems(root) == [], f"{point}: a store is unreadable after the kill"


def test_an_empty_dvc_lock_file_left_by_a_kill_does_not_block_the_next_materialisation(fault_base, tmp_path):
    """The deterministic form of a kill that lands while DVC writes .dvc/tmp/rwlock (the random kill of
    inference hit it once): DvcResource.run removes the unreadable lock file under its serial lock."""
    kind = KINDS["subset"]
    root = fault_base.copy(tmp_path / "runs")
    (root / ".dvc" / "tmp").mkdir(parents=True, exist_ok=True)
    (root / ".dvc" / "tmp" / "rwlock").write_text("")
    rerun = run_steps(fault_base.params, root, [kind.step], tmp_path / "rerun.out")
    assert rerun.returncode == 0, rerun.error_line()
    assert store_problems(root, kind.outputs) == []
