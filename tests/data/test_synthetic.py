"""The synthetic dataset: determinism, ground truth that matches the pixels, official pickles, re-runs, CLI."""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from grove.data.boxes import merge_same_phrase_boxes
from grove.data.dataset import load_dataset
from grove.data.frames import annotated_frame_ids
from grove.data.howtoground import read_official
from grove.data.schema import read_boxes, read_clips
from grove.data.synthetic import (
    FRAME_OBJECT_SCHEMA,
    SPLITS,
    SynthConfig,
    config_from_params,
    generate_dataset,
    official_file_names,
    split_counts_for_total,
)
from grove.data.synthetic_render import MIN_VISIBLE_FRACTION
from grove.data.synthetic_scene import ALL_MOTIONS, COLOURS, KINDS, Infeasible, sample_scene
from orchestration.cli import app

CONFIG = SynthConfig(seed=7, pool_clips=24, train_clips=6, val_clips=2, test_clips=4)
ANNOTATION_FILES = ["clips.parquet", "boxes_raw.parquet", "boxes_processed.parquet", "frame_objects.parquet", "dataset.json"]
TAG = re.compile(r"<p>(.*?)</p>")


def decode(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def official_files(root: Path) -> list[str]:
    return sorted(f"official/{name}" for split in SPLITS for name in official_file_names(split).values())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "two-workers"
    generate_dataset(out, CONFIG, workers=2)
    return out


@pytest.fixture(scope="module")
def tables(dataset):
    clips = read_clips(dataset / "clips.parquet").to_pylist()
    raw = read_boxes(dataset / "boxes_raw.parquet").to_pylist()
    objects = pq.read_table(dataset / "frame_objects.parquet").to_pylist()
    return {c["key"]: c for c in clips}, raw, objects


# ---------------------------------------------------------------------------------------------- config


def test_split_counts_for_total():
    assert split_counts_for_total(1000) == {"pool": 700, "train": 150, "val": 50, "test": 100}
    assert split_counts_for_total(8) == {"pool": 5, "train": 1, "val": 1, "test": 1}
    assert split_counts_for_total(2) == {"pool": 2, "train": 0, "val": 0, "test": 0}
    with pytest.raises(ValueError):
        split_counts_for_total(-1)


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="even"):
        SynthConfig(width=161)
    with pytest.raises(ValueError, match="fps"):
        SynthConfig(fps=2.0)
    params = tmp_path / "params.yaml"
    params.write_text("profile: demo\ndemo:\n  seed: 5\n  synthetic:\n    pool_clips: 3\n    colour_depth: 8\n")
    with pytest.raises(ValueError, match=r"params.yaml.*colour_depth"):
        config_from_params(params)


def test_config_from_params_reads_the_profile(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("profile: demo\ndemo:\n  seed: 5\n  synthetic: {pool_clips: 3, width: 128}\npaper:\n  seed: 9\n")
    demo = config_from_params(params)
    assert (demo.seed, demo.pool_clips, demo.width, demo.height) == (5, 3, 128, SynthConfig().height)
    assert config_from_params(params, "paper") == SynthConfig(seed=9)
    repo_params = Path(__file__).resolve().parents[2] / "params.yaml"
    assert config_from_params(repo_params, "demo").split_counts["pool"] > 0


# ---------------------------------------------------------------------------------------------- layout


def test_dataset_folder_layout(dataset, tables):
    clips, raw, objects = tables
    manifest = json.loads((dataset / "dataset.json").read_text())
    assert manifest["kind"] == "synthetic" and manifest["name"] == "synthetic" and manifest["seed"] == 7
    assert manifest["splits"] == CONFIG.split_counts and manifest["parameters"]["width"] == CONFIG.width
    assert manifest["rows"] == {"clips": len(clips), "boxes_raw": len(raw), "frame_objects": len(objects),
                                "boxes_processed": pq.read_metadata(dataset / "boxes_processed.parquet").num_rows}
    for relative in official_files(dataset):
        assert (dataset / relative).is_file(), relative
    loaded = load_dataset(dataset, processed=False)
    assert loaded.splits == sorted(SPLITS)
    assert sorted(loaded.split("test").clips["key"].to_pylist()) == [f"synth-test-{i:06d}_0" for i in range(4)]
    for clip in clips.values():
        assert loaded.video_file(clip["video_path"]).is_file()
    assert pq.read_schema(dataset / "frame_objects.parquet").names == FRAME_OBJECT_SCHEMA.names


def test_videos_are_h264_yuv420p_on_the_declared_grid(dataset, tables):
    clips, raw, _ = tables
    clip = next(iter(clips.values()))
    with av.open(str(dataset / clip["video_path"])) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (clip["width"], clip["height"])
        assert float(stream.average_rate) == clip["fps"]
        assert sum(1 for _ in container.decode(video=0)) == clip["clip_end_frame"] + 1
    grid = annotated_frame_ids(clip["fps"], clip["clip_start_frame"], clip["clip_end_frame"])
    assert clip["num_frames"] == len(grid) == 40  # 8 s at 5 fps
    for box in raw:
        assert box["frame_id"] == grid[box["frame_index"]]


# ---------------------------------------------------------------------------------------------- determinism


def test_same_bytes_and_frames_for_any_worker_count(dataset, tmp_path):
    again = tmp_path / "one-worker"
    generate_dataset(again, CONFIG, workers=1)
    for relative in ANNOTATION_FILES + official_files(dataset):
        assert (again / relative).read_bytes() == (dataset / relative).read_bytes(), relative
    assert pq.read_metadata(again / "boxes_raw.parquet").to_dict() == pq.read_metadata(dataset / "boxes_raw.parquet").to_dict()
    videos = sorted(p.name for p in (dataset / "videos").iterdir())
    assert videos == sorted(p.name for p in (again / "videos").iterdir()) and len(videos) == 36
    for name in videos:
        assert (again / "videos" / name).read_bytes() == (dataset / "videos" / name).read_bytes(), name
    for name in videos[::4]:
        np.testing.assert_array_equal(decode(again / "videos" / name), decode(dataset / "videos" / name))


def test_a_clip_does_not_depend_on_the_other_splits(dataset, tmp_path):
    small = SynthConfig(seed=7, pool_clips=0, train_clips=0, val_clips=0, test_clips=2)
    generate_dataset(tmp_path / "test-only", small, workers=1)
    mine = read_clips(tmp_path / "test-only" / "clips.parquet").to_pylist()
    theirs = {c["key"]: c for c in read_clips(dataset / "clips.parquet").to_pylist()}
    assert mine == [theirs[c["key"]] for c in mine]


# ---------------------------------------------------------------------------------------------- ground truth


def test_boxes_lie_inside_the_frame(tables):
    clips, raw, objects = tables
    for row in raw + objects:
        clip = clips[row["key"]]
        assert 0 <= row["x1"] < row["x2"] <= clip["width"] and 0 <= row["y1"] < row["y2"] <= clip["height"], row


def test_captions_tag_their_phrases(tables):
    clips, _, _ = tables
    for clip in clips.values():
        phrases = clip["phrases"]
        assert 1 <= len(phrases) <= 4 and len(set(phrases)) == len(phrases)
        assert TAG.findall(clip["tagged_caption"]) == phrases  # tags in phrase order, none nested
        assert TAG.sub(lambda m: m.group(1), clip["tagged_caption"]) == clip["caption"]
        assert "<" not in TAG.sub("", clip["tagged_caption"]) and ">" not in TAG.sub("", clip["tagged_caption"])
        for phrase in phrases:
            assert phrase in clip["caption"] and phrase == phrase.strip() and phrase == phrase.lower()
        assert clip["caption"].endswith(".") and "  " not in clip["caption"]


def test_every_phrase_has_a_box_and_only_caption_phrases_do(tables):
    clips, raw, _ = tables
    boxed = defaultdict(set)
    for box in raw:
        assert clips[box["key"]]["phrases"][box["phrase_index"]] == box["phrase"]
        boxed[box["key"]].add(box["phrase_index"])
    for key, clip in clips.items():
        assert boxed[key] == set(range(len(clip["phrases"]))), key


def test_nothing_is_boxed_behind_the_occluder(tables):
    clips, raw, objects = tables
    hiders = 0
    for key, clip in clips.items():
        scene = json.loads(clip["extra"])["synthetic"]
        if scene["occluder"] is None:
            continue
        x0, x1 = scene["occluder"]
        # the panel spans the full height: a visible part always has pixels outside its columns
        for row in [r for r in raw + objects if r["key"] == key]:
            assert not (row["x1"] >= x0 and row["x2"] <= x1), row
        grid = annotated_frame_ids(clip["fps"], clip["clip_start_frame"], clip["clip_end_frame"])
        for entity in scene["entities"]:
            if entity["motion"] != "hides" or not entity["in_caption"]:
                continue
            hiders += 1
            start, end = entity["window"]
            frames = {b["frame_id"] for b in raw if b["key"] == key and b["phrase_index"] == entity["phrase_index"]}
            inside = [f for f in grid if start <= f <= end]
            hidden = [f for f in inside if f not in frames]
            assert hidden, f"{key}: {entity} never disappears"
            assert min(frames) < min(hidden) and max(frames) > max(hidden), f"{key}: {entity} does not reappear"
    assert hiders > 0  # the fixture holds clips where something hides


def test_frame_objects_agree_with_the_boxes(tables):
    clips, raw, objects = tables
    from_objects = sorted((o["key"], o["frame_index"], o["phrase_index"], o["x1"], o["y1"], o["x2"], o["y2"])
                          for o in objects if o["in_caption"])
    from_boxes = sorted((b["key"], b["frame_index"], b["phrase_index"], b["x1"], b["y1"], b["x2"], b["y2"]) for b in raw)
    assert from_objects == from_boxes
    ids_by_entity = defaultdict(set)
    for o in objects:
        kind = KINDS[o["kind"]]
        assert o["is_human"] == kind.is_human and o["colour"] in COLOURS and o["size"] in ("small", "large")
        assert MIN_VISIBLE_FRACTION <= o["visible_fraction"] <= 1.0
        assert (o["phrase_index"] >= 0) == o["in_caption"]
        expected = f"a {o['kind']} in" if kind.is_human else f"{o['size']} {o['colour']} {o['kind']}"
        assert expected in o["description"] and o["action"]
        ids_by_entity[(o["key"], o["entity_index"])].add(o["object_id"])
        if o["target_object_id"] >= 0:
            assert o["is_human"]
    assert any(not o["in_caption"] for o in objects), "no distractors in the fixture"
    assert any(len(ids) > 1 for ids in ids_by_entity.values()), "no phrase with several instances in the fixture"


def test_boxes_show_the_object_colour(dataset, tables):
    """Independent of the renderer's bookkeeping: a fully visible object's box holds its colour in the decoded video."""
    clips, _, objects = tables
    checked = 0
    for key in list(clips)[:10]:
        frames = decode(dataset / clips[key]["video_path"])
        for o in objects:
            if o["key"] != key or o["visible_fraction"] < 0.999:
                continue
            patch = frames[o["frame_id"], int(o["y1"]):int(o["y2"]), int(o["x1"]):int(o["x2"])].astype(float)
            close = np.linalg.norm(patch - np.array(COLOURS[o["colour"]]), axis=-1) < 70
            assert close.mean() >= 0.1, (o, close.mean())
            checked += 1
    assert checked > 100


def test_processed_boxes_are_the_union_of_instances(dataset):
    raw = read_boxes(dataset / "boxes_raw.parquet")
    processed = read_boxes(dataset / "boxes_processed.parquet")
    assert processed.equals(merge_same_phrase_boxes(raw))
    counts = processed.group_by(["key", "frame_index", "phrase_index"]).aggregate([("x1", "count")])
    assert pc.max(counts["x1_count"]).as_py() == 1 and processed.num_rows < raw.num_rows


def test_official_pickles_round_trip_with_the_tables(dataset):
    clips = read_clips(dataset / "clips.parquet")
    for split in SPLITS:
        split_clips = clips.filter(pc.equal(clips["split"], split))
        keys = split_clips["key"]
        for form, boxes_file in (("raw", "boxes_raw.parquet"), ("processed", "boxes_processed.parquet")):
            boxes = read_boxes(dataset / boxes_file)
            boxes = boxes.filter(pc.is_in(boxes["key"], value_set=keys))
            got_clips, got_boxes = read_official(dataset / "official" / official_file_names(split)[form], "synthetic", split)
            assert got_boxes.equals(boxes), (split, form)
            columns = [name for name in split_clips.column_names if name != "extra"]  # extra: scene details, not in pickles
            assert got_clips.select(columns).equals(split_clips.select(columns)), (split, form)


# ---------------------------------------------------------------------------------------------- re-runs and CLI


def test_rerun_skips_what_is_done_and_repairs_what_is_missing(dataset, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    assert generate_dataset(copy, CONFIG, workers=1).up_to_date
    victim = copy / "videos" / "synth-val-000001_0.mp4"
    victim.unlink()
    (copy / "boxes_raw.parquet").unlink()
    summary = generate_dataset(copy, CONFIG, workers=1)
    assert not summary.up_to_date and summary.encoded == 1
    for relative in ANNOTATION_FILES + ["videos/synth-val-000001_0.mp4"]:
        assert (copy / relative).read_bytes() == (dataset / relative).read_bytes(), relative
    fewer = SynthConfig(seed=7, pool_clips=20, train_clips=6, val_clips=2, test_clips=4)
    summary = generate_dataset(copy, fewer, workers=1)
    assert summary.encoded == 0 and summary.clips == 32
    assert not (copy / "videos" / "synth-pool-000020_0.mp4").exists()
    assert len(list((copy / "videos").iterdir())) == 32
    assert json.loads((copy / "dataset.json").read_text())["splits"]["pool"] == 20


def test_cli_synth_uses_the_profile_and_overrides(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("profile: demo\ndemo:\n  seed: 3\n  synthetic: {pool_clips: 2, train_clips: 1, val_clips: 1, test_clips: 1}\n")
    out = tmp_path / "data"
    args = ["data", "synth", "--out", str(out), "--params", str(params), "--profile", "demo", "--workers", "1"]
    result = CliRunner().invoke(app, args + ["--test", "0", "--seconds", "4"])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["seed"] == 3 and manifest["splits"] == {"pool": 2, "train": 1, "val": 1, "test": 0}
    assert manifest["parameters"]["seconds"] == 4.0
    assert read_clips(out / "clips.parquet")["num_frames"].to_pylist() == [20] * 4
    bad = CliRunner().invoke(app, args + ["--width", "63"])
    assert bad.exit_code == 1 and "even" in bad.output


# ---------------------------------------------------------------------------------------------- scenes


def test_scenes_cover_the_vocabulary_and_keep_it_small():
    words, kinds, motions, counts, passives = set(), set(), set(), set(), 0
    check_frames = np.arange(0, 80, 2)
    for i in range(300):
        rng = np.random.default_rng([11, i])
        while True:
            try:
                scene = sample_scene(rng, 160, 96, 80, check_frames)
                break
            except Infeasible:
                continue
        words.update(re.findall(r"[a-z]+", scene.caption))
        for entity in scene.entities:
            kinds.add(entity.kind)
            motions.add(entity.motion)
            counts.add(entity.count)
        passives += " by " in scene.caption
    assert kinds == set(KINDS) and motions == set(ALL_MOTIONS) and counts == {1, 2, 3}
    assert passives > 0 and len(words) < 200, sorted(words)
