"""The VidSTG- and ActivityNet-Entities-like stand-ins: official layouts that the converters read back to the
generator's truth, that the official scorers score perfectly as their own predictions, and that leave the
synthetic dataset untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from evaluation.anet_entities import evaluate_anet_entities, load_reference
from evaluation.bootstrap import BootstrapSettings, add_intervals
from evaluation.vidstg import evaluate_vidstg, evaluate_vidstg_grounding, load_vidstg_gt
from grove.data.anet_entities import nearest_frame, read_anet_entities, slot_times
from grove.data.synthetic import SynthConfig
from grove.data.synthetic_benchmarks import (
    ANET_FILE,
    ANET_SPLIT_IDS,
    ANET_WIDTH,
    MANIFEST,
    VIDSTG_FILE,
    StandinConfig,
    caption_tokens,
    generate_standin,
    generate_standins,
    standin_config_from_params,
    standins_folder,
)
from grove.data.synthetic_scene import KINDS
from grove.data.vidstg import read_vidstg, tube_frame_ids
from orchestration.cli import app

CONFIG = SynthConfig(seed=5, seconds=4.0)
CLIPS = 6


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("standins")
    generate_standins(root, StandinConfig(CONFIG, vidstg_clips=CLIPS, anet_entities_clips=CLIPS), workers=1)
    return root


def digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def frame_count(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def identity(texts):
    return [t.lower() for t in texts]


# ---------------------------------------------------------------------------------------------- VidSTG


def test_vidstg_standin_round_trips_through_the_converter(standins):
    folder = standins / "vidstg"
    data = json.loads((folder / VIDSTG_FILE).read_text())
    clips, boxes = read_vidstg(folder / VIDSTG_FILE, "test")
    assert clips.num_rows == CLIPS and {v["qtype"] for v in data["videos"]} <= {"declarative", "interrogative"}
    rows = boxes.to_pylist()
    for video, clip in zip(data["videos"], clips.to_pylist()):
        assert frame_count(folder / video["video_path"]) == CONFIG.n_frames == video["end_frame"]
        track = data["trajectories"][video["original_video_id"]][str(video["target_id"])]
        tube = range(video["tube_start_frame"], video["tube_end_frame"])
        assert all(str(f) in track for f in tube)  # the tube is a run of frames where the object is visible
        assert str(video["tube_end_frame"]) not in track or str(video["tube_start_frame"] - 1) not in track
        assert clip["phrases"] == [video["caption"]] and "frames_without_box" not in json.loads(clip["extra"])
        frames = tube_frame_ids(video["fps"], video["tube_start_frame"], video["tube_end_frame"])
        mine = [r for r in rows if r["key"] == clip["key"]]
        assert [r["frame_id"] for r in mine] == frames
        for r in mine:  # xywh in the file, the trajectory's box in the table
            x, y, w, h = track[str(r["frame_id"])]["bbox"]
            assert [r["x1"], r["y1"], r["x2"], r["y2"]] == [x, y, x + w, y + h]
            assert 0 <= r["x1"] < r["x2"] <= CONFIG.width and 0 <= r["y1"] < r["y2"] <= CONFIG.height


def test_vidstg_standin_queries_name_one_object_and_most_tubes_are_partial(standins):
    data = json.loads((standins / "vidstg" / VIDSTG_FILE).read_text())
    for video in data["videos"]:
        caption = video["caption"]
        if video["qtype"] == "interrogative":
            assert caption.split()[0] in ("what", "who") and caption.endswith("?")
        else:
            assert caption.startswith("the ") and caption.endswith(".")
    partial = [v for v in data["videos"] if v["tube_end_frame"] - v["tube_start_frame"] < 0.5 * CONFIG.n_frames]
    assert partial


def test_vidstg_ground_truth_scores_perfectly_as_its_own_prediction(standins):
    gt = load_vidstg_gt(standins / "vidstg" / VIDSTG_FILE)
    predictions = {}
    for key, sentence in gt.items():
        frames = tube_frame_ids(sentence.fps, sentence.tube_start, sentence.tube_end)
        predictions[key] = {"frame_ids": frames, "boxes": [sentence.boxes[f].tolist() for f in frames], "qtype": sentence.qtype,
                            "temporal": {"start_s": sentence.tube_start / sentence.fps, "end_s": sentence.tube_end / sentence.fps}}
    report = evaluate_vidstg_grounding(gt, predictions)
    assert report.counts["scored"] == CLIPS and not report.problems
    assert report.metrics["msIoU"] == 1.0 and report.metrics["R1@0.7"] == 1.0 and report.metrics["mIoU"] == 1.0
    assert all(v == 1.0 for k, v in report.metrics.items() if k.endswith("_msIoU"))
    assert evaluate_vidstg(gt, predictions, "grove").metrics == {k: v for k, v in report.metrics.items()
                                                                 if "msIoU" in k and k != "msIoU"}
    add_intervals(report, BootstrapSettings(resamples=50, seed=1))  # every metric is a mean of per-sentence values
    assert set(report.intervals) == set(report.metrics)
    assert all(report.intervals[name].low == report.intervals[name].high == 1.0 for name in ("msIoU", "R1@0.7", "mIoU"))
    half = dict(predictions)
    for key in sorted(half)[: CLIPS // 2]:
        half[key] = {**half[key], "boxes": [[0, 0, 1, 1]] * len(half[key]["boxes"]), "temporal": {"start_s": 0.0, "end_s": 0.05}}
    worse = add_intervals(evaluate_vidstg_grounding(gt, half), BootstrapSettings(resamples=200, seed=1))
    assert worse.metrics["msIoU"] < 1 and worse.intervals["msIoU"].low < worse.metrics["msIoU"] < worse.intervals["msIoU"].high


# ---------------------------------------------------------------------------------------------- ActivityNet-Entities


def test_anet_standin_round_trips_through_the_converter(standins):
    folder = standins / "anet_entities"
    data = json.loads((folder / ANET_FILE).read_text())
    split_ids = json.loads((folder / ANET_SPLIT_IDS).read_text())
    assert split_ids["validation"] == sorted(data["annotations"]) and split_ids["training"] == []
    clips, boxes = read_anet_entities(folder / ANET_FILE, folder / ANET_SPLIT_IDS, "val")
    assert clips.num_rows == CLIPS and set(clips["split"].to_pylist()) == {"val"}
    rows = boxes.to_pylist()
    for clip in clips.to_pylist():
        video = data["annotations"][clip["video_id"]]
        segment = video["segments"][clip["clip_id"]]
        assert (folder / clip["video_path"]).is_file() and frame_count(folder / clip["video_path"]) == CONFIG.n_frames
        start, end = segment["timestamps"]
        assert end - start >= 0.5 and end <= (CONFIG.n_frames - 2) / CONFIG.fps  # GROVE's end clamp changes nothing
        assert clip["caption"] == " ".join(segment["tokens"]) and json.loads(clip["extra"])["grove_skip"] in (None, "duplicate labels")
        times = slot_times(start, end)
        mine = [r for r in rows if r["key"] == clip["key"]]
        assert len(mine) == len(segment["frame_ind"])
        for r in mine:
            assert r["frame_id"] == nearest_frame(times[r["frame_index"]], CONFIG.fps)
            assert 0 <= r["x1"] < r["x2"] <= ANET_WIDTH and 0 <= r["y1"] < r["y2"] <= video["rheight"]
        for classes, (index,) in zip(segment["process_clss"], segment["process_idx"]):
            word = segment["tokens"][index]
            assert any(word in (*k.nouns, *k.plurals) and classes[0] in k.nouns for k in KINDS.values())


def test_caption_tokens_keep_each_phrase():
    tokens, phrases = caption_tokens("here, <p>a man in a red shirt</p> lifts <p>two blue cups</p>.")
    assert tokens == ["here", ",", "a", "man", "in", "a", "red", "shirt", "lifts", "two", "blue", "cups", "."]
    assert [[tokens[i] for i in p] for p in phrases] == [["a", "man", "in", "a", "red", "shirt"], ["two", "blue", "cups"]]


def test_anet_ground_truth_scores_perfectly_as_its_own_prediction(standins):
    folder = standins / "anet_entities"
    reference = load_reference(folder / ANET_FILE, folder / ANET_SPLIT_IDS, ["validation"])
    results = {}
    for vid, video in reference.items():
        for seg, segment in video["segments"].items():
            classes, boxes = [], []
            for (cls,), box, slot in zip(segment["process_clss"], segment["process_bnd_box"], segment["frame_ind"]):
                if cls not in classes:  # one box list per class: the GT box on its frame, far away elsewhere
                    classes.append(cls)
                    boxes.append([[0, 0, 1, 1]] * 10)
                boxes[classes.index(cls)][slot] = box
            results.setdefault(vid, {})[seg] = {"clss": classes, "idx_in_sent": [0] * len(classes), "bbox_for_all_frames": boxes}
    report = evaluate_anet_entities(reference, results, "gen", identity, "identity")
    assert report.counts["scored"] == CLIPS
    assert report.metrics["F1_all"] == pytest.approx(1.0) and report.metrics["F1_loc_per_sent"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- runs and the CLI


def test_standins_are_deterministic_and_reruns_skip_or_repair(standins, tmp_path):
    copy = tmp_path / "vidstg"
    first = generate_standin(copy, CONFIG, "vidstg", CLIPS, workers=2)
    assert not first.up_to_date and first.encoded == CLIPS
    assert digests(copy) == digests(standins / "vidstg")  # any number of workers, any folder
    assert generate_standin(copy, CONFIG, "vidstg", CLIPS).up_to_date
    (copy / "videos" / "synth-vidstg-000002.mp4").unlink()
    again = generate_standin(copy, CONFIG, "vidstg", CLIPS - 2, workers=1)  # repairs clip 2, drops clips 4 and 5
    assert again.encoded == 1 and sorted(p.name for p in (copy / "videos").iterdir()) == [f"synth-vidstg-{i:06d}.mp4" for i in range(CLIPS - 2)]
    assert digests(copy)["videos/synth-vidstg-000002.mp4"] == digests(standins / "vidstg")["videos/synth-vidstg-000002.mp4"]
    assert json.loads((copy / MANIFEST).read_text())["clips"] == CLIPS - 2


def test_cli_synth_writes_the_standins_beside_an_untouched_dataset(tmp_path):
    section = {"seed": 3, "synthetic": {"pool_clips": 1, "train_clips": 1, "val_clips": 1, "test_clips": 1, "seconds": 2.0}}
    plain, with_standins = tmp_path / "plain.yaml", tmp_path / "standins.yaml"
    plain.write_text(yaml.safe_dump({"profile": "demo", "demo": section}))
    benchmarks = {"vidstg": {"source": "synthetic", "clips": 2}, "anet_entities": {"source": "synthetic", "clips": 1}}
    with_standins.write_text(yaml.safe_dump({"profile": "demo", "demo": {**section, "benchmarks": benchmarks}}))
    assert standin_config_from_params(with_standins).clips == {"vidstg": 2, "anet_entities": 1}
    assert standin_config_from_params(plain).clips == {"vidstg": 0, "anet_entities": 0}
    outputs = {}
    for params in (plain, with_standins):
        out = tmp_path / params.stem / "synthetic"
        result = CliRunner().invoke(app, ["data", "synth", "--out", str(out), "--params", str(params), "--workers", "1"])
        assert result.exit_code == 0, result.output
        outputs[params.stem] = out
    assert digests(outputs["plain"]) == digests(outputs["standins"])  # the dataset is the same, byte for byte
    assert not standins_folder(outputs["plain"]).exists()
    folder = standins_folder(outputs["standins"])
    assert len(json.loads((folder / "vidstg" / VIDSTG_FILE).read_text())["videos"]) == 2
    assert len(json.loads((folder / "anet_entities" / ANET_FILE).read_text())["annotations"]) == 1
    again = CliRunner().invoke(app, ["data", "synth", "--out", str(outputs["standins"]), "--params", str(with_standins), "--anet", "0"])
    assert "vidstg stand-in" in again.output and "already up to date" in again.output and "anet_entities stand-in" not in again.output


def test_standin_streams_differ_from_the_dataset_splits():
    from grove.data.synthetic_benchmarks import STREAMS
    from grove.data.synthetic import SPLITS

    assert not set(STREAMS.values()) & set(range(len(SPLITS)))
    assert np.unique(list(STREAMS.values())).size == len(STREAMS)
