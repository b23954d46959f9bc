"""Two materialisations of the same partition at once (two processes, as two `dagster dev` launches or
a launch and a `grove demo` would be) leave one correct output: the uninterrupted run's bytes, no half
file, a consistent DVC record and readable stores. Each process must succeed or fail with a clear error."""

from __future__ import annotations

import pytest

from tests.faults.harness import KINDS, output_files, start_steps, store_problems, unreadable_files, wait

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["annotation_shard", "subset"])
def test_two_materialisations_of_one_partition_leave_one_correct_output(name, fault_base, tmp_path):
    kind = KINDS[name]
    root = fault_base.copy(tmp_path / "runs")
    processes = [start_steps(fault_base.params, root, [kind.step], tmp_path / f"run{i}.out", recover=False) for i in (1, 2)]
    finished = [wait(process, tmp_path / f"run{i}.out") for i, process in zip((1, 2), processes)]
    assert any(f.returncode == 0 for f in finished), [f.error_line() for f in finished]
    for run in finished:
        assert run.returncode in (0, 1), run.output[-3000:]
    assert unreadable_files(root, kind.outputs) == []
    assert output_files(root, kind.outputs) == output_files(fault_base.root, kind.outputs)
    assert store_problems(root, kind.outputs if kind.dvc_stage else ()) == []
