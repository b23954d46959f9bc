"""A full disk while an output is written: the write fails naming the output, a finished output stays
as it was, and no half file (nor a temporary one that DVC would hash) is left; the stores stay readable.
Training writes into a new folder: no half checkpoint is left there for a later run to resume from."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.faults.harness import REPO, output_files, store_problems, temporary_files, unreadable_files

pytestmark = pytest.mark.slow

OUTPUTS = {
    "metrics_json": ("metrics/iground/s.json",),
    "predictions": ("predictions/iground/s.json",),
    "pool_table": ("annotation/pool/clips.parquet",),
    "subset": ("subsets/s",),
    "training": ("checkpoints/pretrain/s-full-disk",),  # a new training: no finished output to keep
}
NAMED = {  # the file the error names (the first one each case writes past the limit)
    "metrics_json": "metrics/iground/s.json",
    "predictions": "predictions/iground/s.json",
    "pool_table": "annotation/pool/clips.parquet",
    "subset": "subsets/s/clips.parquet",
}


@pytest.fixture(scope="module")
def after_full_disk(fault_base, tmp_path_factory):
    """One process rewrites each output of a copy of the uninterrupted run on a full disk: (root, report)."""
    root = fault_base.copy(tmp_path_factory.mktemp("full_disk") / "runs")
    done = subprocess.run([sys.executable, "-m", "tests.faults.full_disk", str(fault_base.params), str(root), *OUTPUTS],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return root, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", list(NAMED))
def test_a_full_disk_leaves_the_finished_output_and_no_half_file(case, fault_base, after_full_disk):
    root, report = after_full_disk
    outputs = OUTPUTS[case]
    assert f"{root / NAMED[case]}: could not be written (File too large)" in str(report[case]["error"]), report[case]
    assert output_files(root, outputs) == output_files(fault_base.root, outputs), f"{case}: the finished output changed"
    assert set(temporary_files(root, outputs)).isdisjoint(output_files(root, outputs))  # left-overs are not hashed


def test_a_full_disk_during_the_first_checkpoint_leaves_no_half_checkpoint(after_full_disk):
    """The error names the checkpoint folder (torch's own says only "unexpected pos"), and the temporary
    folder goes (were one left, its name keeps it out of the output's DVC hash)."""
    root, report = after_full_disk
    outputs = OUTPUTS["training"]
    error = report["training"]["error"]
    assert error is not None, "training did not fail on a full disk"
    checkpoints = root / outputs[0] / "checkpoints"
    assert f"FolderWriteError: {checkpoints}/step_" in error and "could not be written" in error, error
    assert not list(checkpoints.glob(".tmp-*")), "the half-written checkpoint folder was left"
    assert unreadable_files(root, outputs) == []
    assert set(temporary_files(root, outputs)).isdisjoint(output_files(root, outputs))
    assert not any(path.endswith("model.safetensors") for path in output_files(root, outputs))  # no checkpoint recorded


def test_the_stores_are_readable_after_the_full_disk(after_full_disk):
    root, _ = after_full_disk
    assert store_problems(root) == []
