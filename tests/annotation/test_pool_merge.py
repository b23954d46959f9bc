"""The incremental pool merge: a merge reads only the shards that are new or changed since the last one,
and writes the same bytes as a whole merge of the same shards; anything it cannot trust (no state,
a pool file it did not write, another annotator, a merge killed half way) makes the next merge whole."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from annotation import merge
from annotation.merge import STATE, merge_pool
from annotation.records import ClipFailure, failures_table
from annotation.shards import STAGES, Annotator, AnnotatorConfig, ShardSpec, _write_shard, shard_dir, stage_version, update_plan
from grove.data.boxes import merge_same_phrase_boxes
from grove.data.schema import box_table, clip_table, sort_boxes, write_clips
from tests.annotation.conftest import make_synthetic
from tests.annotation.test_shard_plan import subset_catalog

CONFIG = AnnotatorConfig(stage1_options={"noise": "moderate", "seed": 1})
POOL_FILES = ("clips.parquet", "boxes_raw.parquet", "boxes_processed.parquet", "rejects.parquet", "dataset.json")


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory):
    """16 clips (vid0005's video corrupt) with content hashes: A holds the first 12, B all 16, C is
    B with vid0003's video changed and vid0007 removed, and D is C with vid0001's video changed too."""
    root = tmp_path_factory.mktemp("merge")
    fixture = make_synthetic(root, 16, corrupt=(5,))
    keys = [f"vid{i:04d}_0" for i in range(16)]
    content = {key: f"hash-{key}" for key in keys}
    a = subset_catalog(fixture.catalog, root / "a", keys[:12], {k: content[k] for k in keys[:12]})
    b = subset_catalog(fixture.catalog, root / "b", keys, content)
    kept = [k for k in keys if k != "vid0007_0"]
    c = subset_catalog(fixture.catalog, root / "c", kept, {k: content[k] for k in kept} | {"vid0003_0": "new"})
    d = subset_catalog(fixture.catalog, root / "d", kept,
                       {k: content[k] for k in kept} | {"vid0003_0": "new", "vid0001_0": "new"})
    return a, b, c, d


def annotate_shards(catalog: Path, out: Path) -> list[ShardSpec]:
    """Extend the plan with the catalog and run every stage of every live shard (done ones are skipped)."""
    annotator = Annotator(CONFIG, catalog, out)
    shards = list(annotator.update_plan(5).shards)
    for stage in STAGES:
        for shard in shards:
            if shard.live_keys:
                annotator.run_stage(stage, shard)
    return shards


def pool_bytes(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in POOL_FILES}


def whole_merge(out: Path, shards: list[ShardSpec], tmp_path: Path) -> dict[str, bytes]:
    """The pool a whole merge of the same shards writes (in a copy of the folder)."""
    copy = tmp_path / "whole"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(out / "shards", copy / "shards")
    result = merge_pool(copy, shards, CONFIG, incremental=False)
    assert result.whole and len(result.read) == len([s for s in shards if s.live_keys])
    return pool_bytes(copy)


def test_a_merge_reads_only_new_and_changed_shards_and_writes_what_a_whole_merge_writes(catalogs, tmp_path):
    a, b, c, d = catalogs
    out = tmp_path / "pool"
    shards = annotate_shards(a, out)
    first = merge_pool(out, shards, CONFIG)
    assert first.whole and first.reason == "no previous merge" and first.read == ("shard-00000", "shard-00001", "shard-00002")

    again = merge_pool(out, shards, CONFIG)  # nothing changed: no shard is read
    assert not again.whole and again.read == () and pool_bytes(out) == whole_merge(out, shards, tmp_path)

    shards = annotate_shards(b, out)  # four new clips: one new shard
    grown = merge_pool(out, shards, CONFIG)
    assert not grown.whole and grown.read == ("shard-00003",)
    assert pool_bytes(out) == whole_merge(out, shards, tmp_path)

    # vid0003 changed (retired from shard 0, annotated again in a new shard 4), vid0007 left (retired
    # from shard 1): the shards with newly retired clips are read again, with the new one.
    shards = annotate_shards(c, out)
    changed = merge_pool(out, shards, CONFIG)
    assert not changed.whole and changed.read == ("shard-00000", "shard-00001", "shard-00004")
    assert pool_bytes(out) == whole_merge(out, shards, tmp_path)
    clips = pq.read_table(out / "clips.parquet")["key"].to_pylist()
    assert "vid0007_0" not in clips and clips.count("vid0003_0") == 1 and len(clips) == 14  # vid0005 failed
    # vid0001 changes as well: shard 0 is read again, but vid0003, once in shard 0 and live in shard 4
    # (not read), keeps its rows
    shards = annotate_shards(d, out)
    again = merge_pool(out, shards, CONFIG)
    assert not again.whole and again.read == ("shard-00000", "shard-00005")
    assert pool_bytes(out) == whole_merge(out, shards, tmp_path)
    assert pq.read_table(out / "clips.parquet")["key"].to_pylist().count("vid0003_0") == 1
    # processed boxes, merged shard by shard, are what merging the whole raw table gives
    assert pq.read_table(out / "boxes_processed.parquet").equals(merge_same_phrase_boxes(pq.read_table(out / "boxes_raw.parquet")))


def test_a_pool_it_cannot_trust_is_merged_whole(catalogs, tmp_path, monkeypatch):
    a = catalogs[0]
    out = tmp_path / "pool"
    shards = annotate_shards(a, out)
    merge_pool(out, shards, CONFIG)
    expected = pool_bytes(out)

    os.utime(out / "clips.parquet", ns=(0, 0))  # the same bytes, touched (as DVC relinking from its cache)
    assert not merge_pool(out, shards, CONFIG).whole
    pq.write_table(pq.read_table(out / "clips.parquet").slice(0, 3), out / "clips.parquet")  # other bytes
    result = merge_pool(out, shards, CONFIG)
    assert result.whole and result.reason == f"{out / 'clips.parquet'}: not the file the last merge wrote"
    assert pool_bytes(out) == expected

    (out / "shards" / STATE).unlink()
    assert merge_pool(out, shards, CONFIG).reason == "no previous merge"

    renamed = AnnotatorConfig(stage1_options={"noise": "moderate", "seed": 1}, dataset_name="renamed")
    other = merge_pool(out, shards, renamed)
    assert other.whole and other.reason == "the annotator changed (annotator_version)"
    merge_pool(out, shards, CONFIG)

    # A merge killed while writing the pool leaves no state: the next merge is whole, and right.
    written = []

    def write_then_die(table, path, schema=None):
        if written:
            raise KeyboardInterrupt("killed")
        written.append(path)
        return real_write(table, path, schema)

    real_write = merge.write_table
    monkeypatch.setattr(merge, "write_table", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        merge_pool(out, shards, CONFIG)
    monkeypatch.undo()
    assert not (out / "shards" / STATE).exists()
    assert merge_pool(out, shards, CONFIG).whole and pool_bytes(out) == expected
    assert set(json.loads((out / "shards" / STATE).read_text())["shards"]) == {s.name for s in shards}


def test_a_shard_changed_behind_the_state_is_read_again_and_named_when_broken(catalogs, tmp_path):
    a = catalogs[0]
    out = tmp_path / "pool"
    shards = annotate_shards(a, out)
    merge_pool(out, shards, CONFIG)
    before = pool_bytes(out)
    (shard_dir(out, 3, shards[1]) / "boxes_raw.parquet").unlink()
    with pytest.raises(RuntimeError, match="stage 3 of shard-00001 is missing or stale"):
        merge_pool(out, shards, CONFIG)
    assert pool_bytes(out) == before  # refused before writing anything


@pytest.mark.parametrize("seed", range(5))
def test_splicing_new_rows_into_the_pool_equals_filtering_and_sorting(seed):
    """The incremental merge's splice: kept runs sliced around the new ones, against a filter and a sort
    (new keys before, between and after the kept ones, some equal to dropped keys, empty sides)."""
    rng = random.Random(seed)
    keys = sorted(rng.sample(range(1000), 60))
    rows = [(f"k{k:04d}", i) for k in keys for i in range(rng.randint(1, 4))]
    previous = pa.table({"key": [k for k, _ in rows], "n": [i for _, i in rows]})
    dropped = {f"k{k:04d}" for k in rng.sample(keys, 15)}
    kept = {f"k{k:04d}" for k in keys} - dropped
    candidates = sorted({f"k{k:04d}" for k in range(-5, 1005)} - kept)
    new_keys = sorted(rng.sample(candidates, 20))
    new = pa.table({"key": [k for k in new_keys for _ in range(2)], "n": [10, 11] * len(new_keys)})
    expected = pa.concat_tables([previous.filter(pc.invert(pc.is_in(previous["key"], pa.array(sorted(dropped))))), new])
    expected = expected.sort_by([("key", "ascending"), ("n", "ascending")])
    assert merge._splice(previous, pa.array(sorted(dropped)), new).equals(expected)
    assert merge._splice(previous.slice(0, 0), pa.array([], pa.string()), new).equals(new)
    assert merge._splice(previous, pa.array(sorted(dropped)), new.slice(0, 0)).equals(expected.filter(pc.is_in(expected["key"], pa.array(sorted(kept)))))


def write_fake_catalog(folder: Path, content: dict[str, str]) -> Path:
    """A catalog of one clip per key whose video content hash is `content[key]`."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [dict(key=key, dataset="pool", split="all", video_id=key[:-2], clip_id="0", video_path=f"videos/{key[:-2]}.mp4",
                 fps=10.0, clip_start_frame=0, clip_end_frame=19, num_frames=0, width=64, height=48, caption="",
                 tagged_caption="", phrases=[], extra={}) for key in sorted(content)]
    write_clips(clip_table(rows), folder / "clips.parquet")
    pq.write_table(pa.table({"relative_path": [f"videos/{k[:-2]}.mp4" for k in sorted(content)],
                             "content_hash": [content[k] for k in sorted(content)]}), folder / "catalog.parquet")
    return folder


def write_fake_outputs(out: Path, plan, shard: ShardSpec, rng: random.Random) -> None:
    """Stage outputs for a shard as the runner writes them (done.json included), without an annotator:
    some clips fail in stage 1, the others get boxes, two of a phrase in a frame now and then."""
    clips = plan.clips(shard)
    failed = {key for key in shard.keys if rng.random() < 0.2}
    boxes = [dict(key=key, frame_index=f, frame_id=2 * f, box_index=b, phrase_index=rng.randint(0, 1),
                  phrase=("a hand", "a cup")[b % 2], x1=rng.random(), y1=0.0, x2=5.0, y2=5.0)
             for key in shard.keys if key not in failed for f in range(2) for b in range(rng.randint(1, 3))]
    done = clips.filter(pc.invert(pc.is_in(clips["key"], pa.array(sorted(failed), pa.string()))))
    fails = failures_table([ClipFailure(key, f"run {rng.random():.6f}") for key in sorted(failed)], "stage1")
    empty = failures_table([], "stage2")
    _write_shard(out, 1, shard, stage_version(CONFIG, 1), {"failures.parquet": fails}, {})
    _write_shard(out, 2, shard, stage_version(CONFIG, 2), {"failures.parquet": empty}, {"clips": len(shard.keys)})
    tables = {"clips.parquet": done, "boxes_raw.parquet": sort_boxes(box_table(boxes)), "failures.parquet": empty}
    _write_shard(out, 3, shard, stage_version(CONFIG, 3), tables, {"boxes": len(boxes)})


@pytest.mark.parametrize("seed", range(3))
def test_random_catalog_histories_merge_incrementally_to_the_whole_merge(seed, tmp_path):
    """Clips added, removed, changed (again and again) and shards re-annotated, in random order: after
    every step the incremental merge writes what a whole merge of the same shards writes."""
    rng = random.Random(seed)
    content: dict[str, str] = {}
    out, annotated = tmp_path / "pool", set()
    for step in range(8):
        for _ in range(rng.randint(1, 6)):
            content[f"v{rng.randint(0, 40):03d}_0"] = f"c{rng.randint(0, 2)}"  # a new clip, or another video for one
        for key in rng.sample(sorted(content), min(len(content) - 1, rng.randint(0, 2))):
            del content[key]
        plan = update_plan(write_fake_catalog(tmp_path / f"catalog{step}", content), out, shard_size=3)
        for shard in plan.shards:
            if shard.live_keys and (shard.name not in annotated or rng.random() < 0.15):  # new, or re-annotated
                write_fake_outputs(out, plan, shard, rng)
                annotated.add(shard.name)
        shards = list(plan.shards)
        result = merge_pool(out, shards, CONFIG)
        assert step == 0 or not result.whole, result
        assert pool_bytes(out) == whole_merge(out, shards, tmp_path), f"step {step}"
