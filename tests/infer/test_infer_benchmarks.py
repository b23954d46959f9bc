"""VidSTG and ActivityNet-Entities inference by GROVE's protocols, on converted stand-ins, with a random tiny model:
the official layouts, the frames each protocol reads, and files the official scorers accept."""

import json

import numpy as np
import pytest
import torch

from evaluation.anet_entities import evaluate_anet_entities, load_reference
from evaluation.vidstg import evaluate_vidstg_grounding, load_vidstg_gt
from grove.data.frames import frame_step
from grove.data.synthetic import SynthConfig
from grove.data.synthetic_benchmarks import ANET_FILE, ANET_SPLIT_IDS, VIDSTG_FILE, StandinConfig, generate_standins
from grove.data.vidstg import tube_frame_ids
from grove.infer import single_phrase_boxes
from grove.infer_benchmarks import ANET_MASKS, ANET_WINDOWS, anet_segment, predict_anet_entities, predict_vidstg, segment_frames
from grove.model import GroveConfig, GroveModel
from grove.model.processor import VIDEO_STG_QUESTIONS
from orchestration.defs.benchmarks.assets import convert_splits

CONFIG = SynthConfig(seed=9, seconds=2.4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GroveModel.from_config(GroveConfig.tiny()).eval()


@pytest.fixture(scope="module")
def benchmarks(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    raw = root / "raw"
    generate_standins(raw, StandinConfig(CONFIG, vidstg_clips=3, anet_entities_clips=2), workers=1)
    convert_splits("vidstg", {"test": raw / "vidstg" / VIDSTG_FILE}, root / "vidstg", "vidstg", raw / "vidstg")
    anet = raw / "anet_entities"
    convert_splits("anet", {"val": anet / ANET_FILE}, root / "anet", "anet_entities", anet, split_ids=anet / ANET_SPLIT_IDS)
    return raw, root


def test_vidstg_grounds_the_query_on_its_tube_and_in_time(model, benchmarks):
    raw, root = benchmarks
    predictions = predict_vidstg(None, root / "vidstg", "test", threshold=0.5, model=model)
    annotation = json.loads((raw / "vidstg" / VIDSTG_FILE).read_text())
    assert sorted(predictions) == sorted(str(v["video_id"]) for v in annotation["videos"])  # keyed by sentence id
    for video in annotation["videos"]:
        record = predictions[str(video["video_id"])]
        frames = tube_frame_ids(video["fps"], video["tube_start_frame"], video["tube_end_frame"])
        assert record["frame_ids"] == frames and len(record["boxes"]) == len(frames) and record["qtype"] == video["qtype"]
        grid = list(range(video["start_frame"], video["end_frame"], frame_step(video["fps"])))
        temporal = record["temporal"]
        assert temporal["frame_ids"] == grid and len(temporal["objectness"]) == len(grid)
        assert 0 <= temporal["start_s"] < temporal["end_s"] <= video["end_frame"] / video["fps"] + 1e-9
        assert video["start_frame"] <= record["sted"][0] < record["sted"][1] <= video["end_frame"]
    report = evaluate_vidstg_grounding(load_vidstg_gt(raw / "vidstg" / VIDSTG_FILE), json.loads(json.dumps(predictions)))
    assert report.counts["scored"] == 3 and not [p for p in report.problems if p.severity == "error"]
    assert {"msIoU", "R1@0.3", "R1@0.5", "R1@0.7", "mIoU"} <= set(report.metrics)


def test_vidstg_boxes_are_the_single_phrase_mode_with_the_stg_question(model, benchmarks):
    from grove.data.dataset import load_dataset
    from grove.data.loader import decode_frames

    _, root = benchmarks
    dataset = load_dataset(root / "vidstg", split="test")
    row = dataset.clips.to_pylist()[0]
    record = predict_vidstg(None, root / "vidstg", "test", temporal=False, model=model, max_clips=1)
    (key,) = record
    frames = decode_frames(dataset.video_file(row["video_path"]), record[key]["frame_ids"])
    boxes, _ = single_phrase_boxes(model, frames, row["caption"], (row["width"], row["height"]), question=VIDEO_STG_QUESTIONS[0])
    np.testing.assert_allclose(np.array(record[key]["boxes"]), boxes, atol=1e-4)
    assert "temporal" not in record[key]


def test_anet_frames_are_the_midpoints_of_the_tenths_with_the_end_clamped():
    frames, midpoints = segment_frames(0.0, 10.0, fps=2.0, num_frames=12)  # last frames at 5.0 and 5.5 s
    assert midpoints[0] == pytest.approx(0.25) and midpoints[-1] == pytest.approx(4.75)  # end clamped to 5.0
    assert frames == list(range(10))  # each midpoint halfway between two frames: the earlier, as argmin picks
    assert ANET_WINDOWS == [list(range(0, 8)), list(range(1, 9)), list(range(2, 10))]
    assert [sum(m) for m in ANET_MASKS] == [8, 1, 1]


def test_anet_submission_is_the_official_layout_and_scores(model, benchmarks):
    raw, root = benchmarks
    submission = predict_anet_entities(None, root / "anet", "val", model=model, max_new_tokens=12)
    anet = raw / "anet_entities"
    reference = load_reference(anet / ANET_FILE, anet / ANET_SPLIT_IDS, ["validation"])
    assert submission["eval_mode"] == "gen" and set(submission["results"]) == set(reference)
    for segments in submission["results"].values():
        entry = segments["0"]
        assert len(entry["clss"]) == len(entry["bbox_for_all_frames"]) == len(entry["idx_in_sent"])
        assert all(len(boxes) == 10 and all(len(b) == 4 for b in boxes) for boxes in entry["bbox_for_all_frames"])
        assert len(entry["frame_ids"]) == 10 and entry["frame_ids"] == sorted(entry["frame_ids"])
    report = evaluate_anet_entities(reference, json.loads(json.dumps(submission))["results"], "gen", lambda t: list(t), "identity")
    assert report.counts["scored"] == 2 and "F1_all" in report.metrics


def test_anet_boxes_are_in_the_720_pixel_frame(model):
    frames = np.zeros((10, 48, 80, 3), np.uint8)
    entry = anet_segment(model, frames, (720, 432), max_new_tokens=8)
    for boxes in entry["bbox_for_all_frames"]:
        array = np.array(boxes)
        assert array.shape == (10, 4) and array[:, [0, 2]].max() <= 720 + 1e-3 and array[:, [1, 3]].max() <= 432 + 1e-3
