"""Temporal grounding, NExT-GQA and timestamp parsing: hand-checked vectors from metrics_spec.md."""

import pytest

from evaluation.iou import temporal_iou, temporal_iou_densevid
from evaluation.temporal import (
    encode_time,
    grounding_metrics,
    nextgqa_iou_iop,
    nextgqa_metrics,
    parse_interval,
    parse_timestamps,
)


def test_grounded_videollm_tokens_round_trip_with_floor():
    duration = 30.0
    assert encode_time(14.2, duration) == "<142>" and encode_time(31.0, duration) == "<300>"
    assert encode_time(0.09, duration) == "<0>"  # int() floors
    assert parse_timestamps("From <142> to <251>.", duration) == pytest.approx([14.2, 25.1])
    assert parse_interval("<251> ... <142>", duration) == pytest.approx((14.2, 25.1))  # sorted
    assert parse_interval("<timestamp_grounding> <0> <300>", 12.0) == (0.0, 12.0)
    assert parse_interval("<142> <251>") is None  # tokens need the duration


def test_text_timestamps():
    assert parse_interval(" From 14.20 seconds to 25.09 seconds.") == (14.2, 25.09)
    assert parse_interval("the event spans 1:05 - 0:50") == (50.0, 65.0)
    assert parse_interval("around 3 seconds") is None


def test_temporal_iou_vectors():
    assert temporal_iou((0, 5), (5, 10)) == 0.0  # disjoint / touching
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((3, 3), (3, 3)) == 0.0  # zero-length: no ZeroDivision
    assert temporal_iou_densevid((0, 10), (5, 15)) == pytest.approx(5 / 15, rel=1e-6)
    assert temporal_iou_densevid((0, 2), (8, 10)) == 0.0


def test_grounding_r1_and_miou():
    gt = {q: {"timestamp": [0.0, 10.0], "duration": 30.0} for q in "abcde"}
    predictions = {"a": [0.0, 10.0], "b": [0.0, 7.0], "c": [0.0, 5.0], "d": "no time here", "x": [1, 2]}
    report = grounding_metrics(gt, predictions)
    # IoUs 1, 0.7 (>= 0.7 counts), 0.5, 0 (unparsed), 0 (missing), N = 5
    assert report.metrics == pytest.approx({"R1@0.3": 3 / 5, "R1@0.5": 3 / 5, "R1@0.7": 2 / 5, "mIoU": 2.2 / 5})
    assert {(p.item, p.kind) for p in report.problems} == {("d", "unparsed_prediction"), ("e", "unparsed_prediction"),
                                                           ("x", "unknown_query")}
    tokens = grounding_metrics({"q": {"timestamp": [3.0, 6.0], "duration": 30.0}}, {"q": "from <30> to <60>"})
    assert tokens.metrics["mIoU"] == pytest.approx(1.0)


def test_nextgqa_point_predictions_and_accuracy():
    assert nextgqa_iou_iop([2, 6], [4, 4]) == (0.0, 1.0)  # a point inside: IoP 1, IoU 0
    assert nextgqa_iou_iop([2, 6], [7, 7]) == (0.0, 0.0)
    assert nextgqa_iou_iop([2, 6], [4, 8]) == (pytest.approx(2 / 6), pytest.approx(0.5))
    gt = {"v1": {"duration": 20, "location": {"0": [[2, 6], [10, 12]], "1": [[0, 4]], "2": [[5, 9]]}}}
    grounding = {"v1_0": [10, 12], "v1_1": [2, 6]}  # v1_2 has no grounding: skipped, as eval_ground.py
    answers = {"v1_0": {"answer": 1, "prediction": 1}, "v1_1": {"answer": 2, "prediction": 2}}
    report = nextgqa_metrics(gt, grounding, answers)
    # v1_0: IoU 1, IoP 1; v1_1: inter 2, hull 6 -> IoU 1/3, IoP 2/4
    assert report.metrics["mIoU"] == pytest.approx((1 + 1 / 3) / 2)
    assert report.metrics["mIoP"] == pytest.approx((1 + 0.5) / 2)
    assert report.metrics["Acc@GQA"] == 1.0 and report.metrics["IoU@0.5"] == 0.5
    assert report.num_scored == 2 and report.num_items == 3
    assert "Acc@GQA" in nextgqa_metrics(gt, grounding, None).unavailable
