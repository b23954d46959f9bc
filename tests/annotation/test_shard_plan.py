"""The shard plan never reshuffles: videos added to a finished pool go into new shards, every finished
shard's files stay byte-identical and are not re-annotated; changed and removed clips are retired
explicitly; the plan is a function of the catalog history alone."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from annotation.shards import STAGES, AnnotatorConfig, annotate, load_plan, plan_shards, shard_dir
from grove.data.dataset import load_dataset
from tests.annotation.conftest import make_synthetic

CONFIG = AnnotatorConfig(stage1_options={"noise": "moderate", "seed": 1})
POOL_TABLES = ("clips.parquet", "boxes_raw.parquet", "boxes_processed.parquet", "rejects.parquet")


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """16 clips (vid0005 corrupt); catalog A holds the first 12, catalog B all 16."""
    root = tmp_path_factory.mktemp("grown")
    fixture = make_synthetic(root, 16, corrupt=(5,))
    return subset_catalog(fixture.catalog, root / "catalog_a", [f"vid{i:04d}_0" for i in range(12)]), fixture.catalog


def subset_catalog(catalog: Path, folder: Path, keys: list[str], content: dict[str, str] | None = None) -> Path:
    """The clips of `catalog` named by `keys`; with `content`, a catalog.parquet of video content hashes."""
    folder.mkdir(parents=True, exist_ok=True)
    clips = pq.read_table(catalog / "clips.parquet")
    pq.write_table(clips.filter(pc.is_in(clips["key"], value_set=pa.array(keys))), folder / "clips.parquet")
    shutil.copy(catalog / "catalog.json", folder / "catalog.json")
    if content is not None:
        paths = dict(zip(clips["key"].to_pylist(), clips["video_path"].to_pylist()))
        pq.write_table(pa.table({"relative_path": [paths[k] for k in content], "content_hash": list(content.values())}),
                       folder / "catalog.parquet")
    return folder


def shard_digests(out: Path, name: str) -> dict[str, str]:
    """sha256 of every file under the shard's folder of every stage."""
    shard = next(s for s in load_plan(out).shards if s.name == name)
    return {f"{stage}/{p.relative_to(shard_dir(out, stage, shard))}": hashlib.sha256(p.read_bytes()).hexdigest()
            for stage in STAGES for p in sorted(shard_dir(out, stage, shard).rglob("*")) if p.is_file()}


def test_adding_videos_adds_shards_and_leaves_finished_shards_byte_identical(grown, tmp_path, caplog):
    catalog_a, catalog_b = grown
    out = tmp_path / "pool"
    first = annotate(catalog_a, out, CONFIG, shard_size=5, batch_size=2)
    assert first.new_shards == ("shard-00000", "shard-00001", "shard-00002")  # 5 + 5 + 2 clips
    finished = {name: shard_digests(out, name) for name in first.new_shards}
    assert all(len(files) == 3 + 3 + 4 for files in finished.values())  # every stage's tables and done.json

    with caplog.at_level(logging.INFO, logger="annotation.shards"):
        second = annotate(catalog_b, out, CONFIG, shard_size=5, batch_size=2)
    assert second.new_shards == ("shard-00003",)
    assert load_plan(out).shards[3].keys == ("vid0012_0", "vid0013_0", "vid0014_0", "vid0015_0")
    assert [s.keys for s in load_plan(out).shards[:3]] == [s.keys for s in plan_shards(catalog_a, tmp_path / "a", 5)]
    # only the new shard ran, in every stage; the finished shards are byte for byte what they were
    assert {stage: second.ran(stage) for stage in STAGES} == {1: ["shard-00003"], 2: ["shard-00003"], 3: ["shard-00003"]}
    assert {name: shard_digests(out, name) for name in first.new_shards} == finished
    messages = [r.getMessage() for r in caplog.records]
    assert "shard plan: generation 1 adds 4 clips in 1 new shards (shard-00003), retires 0 (0 changed, 0 removed)" in messages
    assert "stage 1: 1 shards run (shard-00003), 3 already done" in messages

    # The pool holds every clip, the same tables as annotating catalog B in one go.
    fresh = tmp_path / "fresh"
    annotate(catalog_b, fresh, CONFIG, shard_size=5, batch_size=2)
    assert load_dataset(out).clips.num_rows == 15  # 16 clips, one corrupt video
    assert all((out / name).read_bytes() == (fresh / name).read_bytes() for name in POOL_TABLES)


def test_changed_and_removed_clips_are_retired_and_only_the_changed_clip_is_annotated_again(grown, tmp_path):
    catalog_a, _ = grown
    keys = [f"vid{i:04d}_0" for i in range(12)]
    content = {key: f"hash-{key}" for key in keys}
    before_catalog = subset_catalog(catalog_a, tmp_path / "before", keys, content)
    out = tmp_path / "pool"
    first = annotate(before_catalog, out, CONFIG, shard_size=5, batch_size=2)
    finished = {name: shard_digests(out, name) for name in first.new_shards}

    # vid0003's video has new content under the same key; vid0007 left the catalog
    kept = [k for k in keys if k != "vid0007_0"]
    after_catalog = subset_catalog(catalog_a, tmp_path / "after", kept, {k: content[k] for k in kept} | {"vid0003_0": "new"})
    second = annotate(after_catalog, out, CONFIG, shard_size=5, batch_size=2)
    plan = load_plan(out)
    assert second.new_shards == ("shard-00003",)
    new = plan.shard("shard-00003")
    assert new is not None and new.keys == ("vid0003_0",)
    assert plan.shards[0].retired == ("vid0003_0",) and plan.shards[1].retired == ("vid0007_0",)
    assert {stage: second.ran(stage) for stage in STAGES} == {stage: [new.name] for stage in STAGES}
    assert {name: shard_digests(out, name) for name in first.new_shards} == finished
    rows = pq.read_table(plan.folder / "gen-00001.parquet", columns=["event", "shard", "key", "reason"]).to_pylist()
    assert rows == [
        {"event": "retire", "shard": "shard-00000", "key": "vid0003_0", "reason": "changed"},
        {"event": "retire", "shard": "shard-00001", "key": "vid0007_0", "reason": "removed"},
        {"event": "add", "shard": new.name, "key": "vid0003_0", "reason": "changed"},
    ]
    pool = load_dataset(out).clips["key"].to_pylist()
    assert "vid0007_0" not in pool and pool.count("vid0003_0") == 1 and len(pool) == 10
    fresh = tmp_path / "fresh"
    annotate(after_catalog, fresh, CONFIG, shard_size=5, batch_size=2)
    assert all((out / name).read_bytes() == (fresh / name).read_bytes() for name in POOL_TABLES)
    assert json.loads((out / "dataset.json").read_text())["stats"]["clips"] == 10


def test_the_plan_is_a_function_of_the_catalog_history(grown, tmp_path):
    catalog_a, catalog_b = grown
    for run in ("one", "two"):  # the same history on two "machines"
        plan_shards(catalog_a, tmp_path / run, 5)
        plan_shards(catalog_a, tmp_path / run, 5)  # an unchanged catalog adds nothing
        plan_shards(catalog_b, tmp_path / run, 3)  # a new shard size applies to new shards only
    files = [sorted((tmp_path / run / "shards" / "plan").glob("gen-*.parquet")) for run in ("one", "two")]
    assert [f.name for f in files[0]] == ["gen-00000.parquet", "gen-00001.parquet"]
    assert [f.read_bytes() for f in files[0]] == [f.read_bytes() for f in files[1]]
    shards = load_plan(tmp_path / "one").shards
    assert [len(s.keys) for s in shards] == [5, 5, 2, 3, 1]
    live = [key for shard in shards for key in shard.live_keys]
    assert sorted(live) == sorted(set(live)) == [f"vid{i:04d}_0" for i in range(16)]
    # another history of catalogs is another plan: B at once is cut 5, 5, 5, 1
    assert [len(s.keys) for s in plan_shards(catalog_b, tmp_path / "direct", 5)] == [5, 5, 5, 1]


def test_a_damaged_plan_is_refused(grown, tmp_path):
    catalog_a, catalog_b = grown
    plan_shards(catalog_a, tmp_path, 5)
    plan_shards(catalog_b, tmp_path, 5)
    (tmp_path / "shards" / "plan" / "gen-00000.parquet").unlink()
    with pytest.raises(ValueError, match="plan is damaged"):
        plan_shards(catalog_b, tmp_path, 5)
