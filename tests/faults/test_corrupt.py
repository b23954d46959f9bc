"""A corrupt or truncated input (a video, an annotation file, a checkpoint, a prediction file) makes
the asset that reads it fail with an error naming the file, and leaves every finished output (its
own from the uninterrupted run included) untouched and the stores readable."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.faults.harness import SIZE, output_files, run_steps, store_problems

pytestmark = pytest.mark.slow

FINISHED = ("annotation/pool", "benchmarks/iground", f"subsets/{SIZE}", f"checkpoints/finetune/{SIZE}",
            f"predictions/iground/{SIZE}.json", f"metrics/iground/{SIZE}.json")


def names_file(error: str, path: Path) -> bool:
    """Whether the error names `path` (written as any path that normalises to it: a clip table's video
    path is relative to its dataset folder, `benchmarks/iground/../../raw/...`)."""
    candidates = re.findall(r"/[^\s'\":]*" + re.escape(path.name), error)
    return any(os.path.normpath(candidate) == os.path.normpath(path) for candidate in candidates)


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\x00garbage\xff" * 64)


def first_test_video(root: Path) -> Path:
    from grove.data.dataset import load_dataset

    dataset = load_dataset(root / "benchmarks" / "iground").split("test")
    return dataset.video_file(sorted(dataset.clips["video_path"].to_pylist())[0]).resolve()


def best_checkpoint_weights(root: Path) -> Path:
    from grove.train import resolve_checkpoint

    return resolve_checkpoint(root / "checkpoints" / "finetune" / SIZE) / "model.safetensors"


def official_pickle(root: Path) -> Path:
    """The raw iGround test pickle that iground_benchmark converts (the synthetic release's)."""
    return root / "raw" / "synthetic" / "official" / "iGround_test_set_raw.pkl"


CASES = {
    # name: (the damaged file, the asset that reads it, its partition)
    "video": (first_test_video, "iground_predictions", SIZE),
    "annotation_pickle": (official_pickle, "iground_benchmark", None),
    "annotation_shard": (lambda root: next((root / "annotation" / "pool" / "shards" / "stage3").rglob("clips.parquet")),
                         "annotated_pool", None),
    "checkpoint": (best_checkpoint_weights, "iground_predictions", SIZE),
    "predictions": (lambda root: root / "predictions" / "iground" / f"{SIZE}.json", "iground_metrics", SIZE),
}


# the Pipes-launched cases (a process each) and the shard (checked by its digests either way) are
# damaged one way only, to keep the suite in its budget
DAMAGES = [(case, how) for case in CASES for how in ("truncated", "garbage")
           if how == "truncated" or case not in ("video", "checkpoint", "annotation_shard")]
# a stage's shard files are checked as one output, by the digests its done.json records: the error
# names the shard's folder (and says to re-run the stage, which rewrites the damaged file)
NAMED_BY_FOLDER = {"annotation_shard"}


@pytest.mark.parametrize("case, how", DAMAGES)
def test_a_damaged_input_fails_naming_the_file_and_keeps_finished_outputs(case, how, fault_base, tmp_path):
    locate, asset, partition = CASES[case]
    root = fault_base.copy(tmp_path / "runs")
    damaged = locate(root)
    damage(damaged, how)
    before = {out: output_files(root, [out]) for out in FINISHED}
    failed = run_steps(fault_base.params, root, [{"assets": [asset], "partition": partition}], tmp_path / "run.out")
    assert failed.returncode == 1, f"{case} ({how}): {asset} did not fail:\n{failed.output[-3000:]}"
    error = failed.error_line()
    assert names_file(error, damaged.parent if case in NAMED_BY_FOLDER else damaged), \
        f"{case} ({how}): the error does not name {damaged}: {error}"
    for out, files in before.items():
        assert output_files(root, [out]) == files, f"{case} ({how}): the failed {asset} changed {out}"
    assert store_problems(root) == []
