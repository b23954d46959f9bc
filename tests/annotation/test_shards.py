import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from annotation.shards import (
    AnnotatorConfig,
    annotate,
    annotator_version,
    is_done,
    load_catalog,
    merge_shards,
    plan_shards,
    run_stage,
    shard_dir,
    stage_version,
)
from grove.data.dataset import load_dataset

FINAL = ("clips.parquet", "boxes_raw.parquet", "boxes_processed.parquet", "rejects.parquet", "dataset.json")
CONFIG = AnnotatorConfig(stage1_options={"noise": "moderate", "seed": 1})


def _final_bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in FINAL}


@pytest.fixture(scope="module")
def reference(synthetic, tmp_path_factory):
    """One uninterrupted run, shard size 5 (12 clips: three shards)."""
    out = tmp_path_factory.mktemp("reference")
    run = annotate(synthetic.catalog, out, CONFIG, shard_size=5)
    return out, run


def test_the_output_is_a_dataset_folder_training_can_read(synthetic, reference):
    out, run = reference
    assert run.shards == 3 and all(not r.skipped for r in run.results)
    dataset = load_dataset(out)
    assert dataset.clips.num_rows == 11 and dataset.boxes.num_rows > 0
    raw = load_dataset(out, processed=False).boxes
    assert raw.num_rows >= dataset.boxes.num_rows
    for clip in dataset.clips.to_pylist():
        assert clip["phrases"] and "<p>" in clip["tagged_caption"] and "<p>" not in clip["caption"]
        assert clip["num_frames"] == 10 and clip["dataset"] == "auto"
    phrases = {c["key"]: c["phrases"] for c in dataset.clips.to_pylist()}
    for box in raw.to_pylist():
        assert phrases[box["key"]][box["phrase_index"]] == box["phrase"]
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["creator"]["annotator_version"] == annotator_version(CONFIG) == run.version
    assert manifest["stats"]["clips"] == 11 and manifest["stats"]["rejects"] == 1


def test_a_corrupt_video_is_rejected_and_its_shard_completes(synthetic, reference):
    out, _ = reference
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    assert [(r["key"], r["stage"]) for r in rejects] == [("vid0005_0", "stage1")]
    assert "unreadable video" in rejects[0]["reason"]
    shard = next(s for s in plan_shards(synthetic.catalog, out, 5) if "vid0005_0" in s.keys)
    assert all(is_done(out, stage, shard, stage_version(CONFIG, stage)) for stage in (1, 2, 3))


def test_a_rerun_skips_done_shards_and_changes_nothing(synthetic, reference, tmp_path):
    out, _ = reference
    before = _final_bytes(out)
    run = annotate(synthetic.catalog, out, CONFIG, shard_size=5)
    assert all(r.skipped for r in run.results)
    assert _final_bytes(out) == before


def test_another_version_redoes_only_the_stages_it_changes(synthetic, reference, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    changed = AnnotatorConfig(stage1_options=CONFIG.stage1_options, stage3="embedding")
    assert stage_version(changed, 2) == stage_version(CONFIG, 2) and stage_version(changed, 3) != stage_version(CONFIG, 3)
    run = annotate(synthetic.catalog, out, changed, shard_size=5)
    assert {r.stage for r in run.results if not r.skipped} == {3}
    assert json.loads((out / "dataset.json").read_text())["creator"]["config"]["stage3"] == "embedding"


def test_a_damaged_shard_output_is_redone(synthetic, reference, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(reference[0], out)
    shards = plan_shards(synthetic.catalog, out, 5)
    frames = shard_dir(out, 1, shards[1]) / "frames.parquet"
    frames.write_bytes(frames.read_bytes()[:100])  # a torn file behind a valid-looking stamp
    (shard_dir(out, 2, shards[0]) / "done.json").write_text("{not json")
    assert not is_done(out, 1, shards[1], stage_version(CONFIG, 1))
    run = annotate(synthetic.catalog, out, CONFIG, shard_size=5)
    redone = {(r.stage, r.shard) for r in run.results if not r.skipped}
    assert {(1, "shard-00001"), (2, "shard-00000")} <= redone
    assert _final_bytes(out) == _final_bytes(reference[0])


KILL_SCRIPT = """
import os, signal, sys
from annotation.shards import AnnotatorConfig, annotate
config = AnnotatorConfig(stage1_options={"noise": "moderate", "seed": 1})
def progress(what, done, total):
    if what == sys.argv[3] and done == int(sys.argv[4]):
        os.kill(os.getpid(), signal.SIGKILL)
annotate(sys.argv[1], sys.argv[2], config, shard_size=5, progress=progress)
"""


@pytest.mark.parametrize("stage, shards_done", [("stage 1", 2), ("stage 2", 1)])
def test_a_killed_run_resumes_to_byte_identical_tables(synthetic, reference, tmp_path, stage, shards_done):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(synthetic.catalog), str(out), stage, str(shards_done)],
                            env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "clips.parquet").exists()
    first = plan_shards(synthetic.catalog, out, 5)[0]
    shard_dir(out, 3, first).mkdir(parents=True, exist_ok=True)
    (shard_dir(out, 3, first) / ".clips.parquet.x.tmp").write_bytes(b"half")
    run = annotate(synthetic.catalog, out, CONFIG, shard_size=5)
    assert sum(r.skipped for r in run.results) == (shards_done if stage == "stage 1" else 3 + shards_done)
    assert _final_bytes(out) == _final_bytes(reference[0])


def test_plain_functions_for_orchestration(synthetic, tmp_path):
    shards = plan_shards(synthetic.catalog, tmp_path, 4)
    assert [s.name for s in shards] == ["shard-00000", "shard-00001", "shard-00002"]
    assert [k for s in shards for k in s.keys] == sorted(synthetic.keys)
    assert plan_shards(synthetic.catalog, tmp_path, 4) == shards
    assert plan_shards(synthetic.catalog, tmp_path, 3) == shards  # planned shards keep their size
    for stage in (1, 2, 3):
        result = run_stage(stage, shards[0], tmp_path, CONFIG, synthetic.catalog)
        assert not result.skipped and result.clips == 4
    with pytest.raises(RuntimeError, match="stage 1 of shard-00001 is missing"):
        run_stage(2, shards[1], tmp_path, CONFIG, synthetic.catalog)
    with pytest.raises(RuntimeError, match="run stage 3 for this shard first"):
        merge_shards(tmp_path, shards, CONFIG)
    assert merge_shards(tmp_path, shards[:1], CONFIG) == tmp_path
    assert load_dataset(tmp_path).clips.num_rows == 4


def test_bad_catalogs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a catalog"):
        load_catalog(tmp_path)
    with pytest.raises(ValueError, match="shard size"):
        from annotation.shards import shards_of

        shards_of(["a"], 0)


def test_long_videos_are_split_into_clips(synthetic, tmp_path):
    catalog = load_catalog(synthetic.catalog, clip_seconds=0.6)  # 6 native frames: three grid steps
    keys = catalog.clips["key"].to_pylist()
    assert len(keys) == 3 * 12 and "vid0000_2" in keys
    first = catalog.clips.slice(0, 3).to_pylist()
    assert [(c["clip_start_frame"], c["clip_end_frame"]) for c in first] == [(0, 5), (6, 11), (12, 17)]
    assert json.loads(first[1]["extra"])["parent_clip_id"] == "0"  # (the 2-frame tail is dropped)


def test_annotating_a_catalog_from_grove_data_ingest(synthetic, tmp_path):
    from grove.data.catalog import build_catalog

    build_catalog(synthetic.gt, tmp_path / "catalog", workers=1)
    catalog = load_catalog(tmp_path / "catalog")
    assert catalog.frame_objects is not None and catalog.clips.num_rows == 11  # ingest rejected the corrupt video
    run = annotate(tmp_path / "catalog", tmp_path / "auto", CONFIG, shard_size=20)
    assert run.shards == 1
    assert load_dataset(tmp_path / "auto").clips.num_rows == 11


def test_a_model_named_by_the_environment_changes_the_llm_stages_versions(monkeypatch):
    from annotation.engines import LLM_ENV
    from annotation.shards import AnnotatorConfig, stage_version

    config = AnnotatorConfig(stage2="transformers", stage3="transformers",
                             stage2_options={"model": "a"}, stage3_options={"model": "a"})
    monkeypatch.delenv(LLM_ENV, raising=False)
    before = [stage_version(config, stage) for stage in (1, 2, 3)]
    monkeypatch.setenv(LLM_ENV, "/models/llama-2-13b-chat")
    after = [stage_version(config, stage) for stage in (1, 2, 3)]
    assert before[0] == after[0] and before[1] != after[1] and before[2] != after[2]
    lexical = AnnotatorConfig()  # no LLM: the variable changes nothing
    with_variable = stage_version(lexical, 3)
    monkeypatch.delenv(LLM_ENV)
    assert stage_version(lexical, 3) == with_variable


def test_stage1_weights_named_by_the_environment_change_every_stage_version(monkeypatch):
    from annotation.shards import AnnotatorConfig, stage_version
    from annotation.stage1 import MODEL_ENV

    config = AnnotatorConfig(stage1="glamm", stage1_options={"model": "/weights/GLaMM-GranD-Pretrained"})
    monkeypatch.delenv(MODEL_ENV["glamm"], raising=False)
    before = [stage_version(config, stage) for stage in (1, 2, 3)]
    monkeypatch.setenv(MODEL_ENV["glamm"], "/weights/GLaMM-GCG")
    after = [stage_version(config, stage) for stage in (1, 2, 3)]
    assert all(b != a for b, a in zip(before, after))
    simulated = AnnotatorConfig()  # a backend without weights: the variable changes nothing
    monkeypatch.setenv(MODEL_ENV["florence2"], "/weights/florence")
    assert stage_version(simulated, 1) == stage_version(AnnotatorConfig(stage1_options={}), 1)
