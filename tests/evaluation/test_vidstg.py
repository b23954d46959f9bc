"""VidSTG: GROVE's msIoU and TubeDETR's tIoU / vIoU on hand-checked sentences."""

import json

import pytest

from evaluation.vidstg import evaluate_vidstg, load_vidstg_gt, temporal_iou_frames, tubedetr_frame_ids

BOX = [10, 10, 20, 20]  # xywh -> xyxy [10, 10, 30, 30]


def _video(video_id, original, qtype, fps, start, end, tube_start, tube_end):
    return {"video_id": video_id, "original_video_id": original, "target_id": 1, "qtype": qtype, "fps": fps,
            "start_frame": start, "end_frame": end, "tube_start_frame": tube_start, "tube_end_frame": tube_end,
            "video_path": f"{original}.mp4", "caption": "the dog runs", "width": 100, "height": 100}


@pytest.fixture()
def annotation(tmp_path):
    videos = [_video(1, "A", "declarative", 30.0, 0, 60, 12, 42), _video(2, "B", "interrogative", 25.0, 0, 50, 10, 30),
              _video(3, "C", "declarative", 25.0, 0, 10, 0, 10), _video(4, "D", "declarative", 25.0, 0, 10, 0, 10),
              _video(5, "E", "declarative", 25.0, 0, 10, 0, 10)]
    trajectories = {v["original_video_id"]: {"1": {str(f): {"bbox": BOX} for f in range(v["tube_start_frame"], v["tube_end_frame"])}}
                    for v in videos}
    path = tmp_path / "test.json"
    path.write_text(json.dumps({"videos": videos, "trajectories": trajectories}))
    return load_vidstg_gt(path)


GT = [10, 10, 30, 30]
PREDICTIONS = {
    # frames 12..36 step 6: IoU 1, 1, 1/3, 0 (all-zero box), 0 (disjoint)
    "1": {"frame_ids": [12, 18, 24, 30, 36], "boxes": [GT, [GT], [20, 10, 40, 30], [0, 0, 0, 0], [50, 50, 60, 60]],
          "sted": [18, 48]},
    "2": {"frame_ids": [10, 15, 20, 25], "boxes": [GT] * 4, "sted": [60, 70]},  # perfect boxes, disjoint tube
    "3": {"frame_ids": [0, 5], "boxes": [GT, [50, 50, 60, 60]], "sted": [0, 10]},  # mean IoU exactly 0.5
    "5": {"frame_ids": [0], "boxes": [GT], "sted": [0, 10]},  # frame 5 missing
    "99": {"frame_ids": [], "boxes": []},
}


def test_grove_msiou_per_sentence_type(annotation):
    report = evaluate_vidstg(annotation, PREDICTIONS, "grove")
    a, c = 7 / 15, 0.5
    assert report.metrics == pytest.approx({
        "declarative_msIoU": (a + c) / 2, "declarative_msIoU@0.3": 1.0, "declarative_msIoU@0.5": 0.0,  # 0.5 is not > 0.5
        "interrogative_msIoU": 1.0, "interrogative_msIoU@0.3": 1.0, "interrogative_msIoU@0.5": 1.0})
    kinds = {(p.item, p.kind) for p in report.problems}
    assert kinds == {("4", "missing_prediction"), ("5", "invalid_prediction"), ("99", "unknown_sentence")}
    assert "frame(s) [5]" in next(p.message for p in report.problems if p.item == "5")
    assert report.num_scored == 3


def test_tubedetr_temporal_and_spatio_temporal_metrics(annotation):
    report = evaluate_vidstg(annotation, PREDICTIONS, "tubedetr")
    # sentence 1: tIoU of [12, 42) and [18, 48) = 24 / 36; vIoU = (1 + 1/3 + 0 + 0) / |{12..42} sampled| = (4/3) / 6
    assert report.per_item["1"]["tIoU"] == pytest.approx(2 / 3)
    assert report.per_item["1"]["vIoU"] == pytest.approx(2 / 9)
    assert report.per_item["1"]["gt_vIoU"] == pytest.approx(7 / 15)
    # sentence 2: disjoint tubes give vIoU 0 while gt_vIoU (GT tube given) is unaffected
    assert report.per_item["2"]["tIoU"] == 0.0 and report.per_item["2"]["vIoU"] == 0.0
    assert report.per_item["2"]["gt_vIoU"] == 1.0
    assert report.per_item["3"]["vIoU"] == 0.5 and report.per_item["3"]["vIoU@0.5"] == 0.0  # strict >
    assert report.metrics["declarative_m_tIoU"] == pytest.approx((2 / 3 + 1) / 2)
    assert report.metrics["declarative_m_vIoU"] == pytest.approx((2 / 9 + 0.5) / 2)
    assert report.metrics["interrogative_vIoU@0.3"] == 0.0
    assert report.protocol["intervals"] == "half-open [start, end)"


def test_frame_sampling_and_interval_rules(annotation):
    assert tubedetr_frame_ids(annotation["1"]) == list(range(0, 60, 6))
    long = annotation["1"].__class__("x", "declarative", 30.0, 0, 3000, 0, 3000, {})
    frames = tubedetr_frame_ids(long)
    assert len(frames) == 200 and frames[:3] == [0, 12, 30]  # 500 sampled frames, ids[j * 500 // 200]
    assert temporal_iou_frames((0, 10), (10, 20)) == 0.0  # half-open: touching intervals do not overlap
    assert temporal_iou_frames((0, 10), (5, 15)) == pytest.approx(5 / 15)


def test_missing_sted_and_ground_truth_gaps(annotation):
    annotation["3"].boxes.pop(5)  # the GT trajectory lacks a frame the protocol evaluates
    predictions = {"2": {"frame_ids": [10, 15, 20, 25], "boxes": [GT] * 4}, "3": PREDICTIONS["3"]}
    report = evaluate_vidstg(annotation, predictions, "tubedetr")
    kinds = {(p.item, p.kind, p.severity) for p in report.problems}
    assert ("2", "missing_sted", "warning") in kinds and ("3", "ground_truth_gap", "error") in kinds
    assert report.per_item["2"] == {"gt_vIoU": 1.0, "gt_vIoU@0.3": 1.0, "gt_vIoU@0.5": 1.0}
    assert "interrogative_gt_vIoU" in report.metrics and "declarative_m_vIoU" not in report.metrics
    assert report.summary_lines()[0] == "vidstg (test): 1 of 5 items scored"
