"""Pointing accuracy as GROVE's eval_youcookinteractions.py."""

import pytest

from evaluation.pointing import pointing_accuracy


def test_pointing_accuracy_vectors():
    gt = {"a": [[0, 0, 10, 10], [0, 0, 10, 10], [], [0, 0, 10, 10]], "b": [[5, 5, 6, 6]], "c": [[0, 0, 1, 1]]}
    pred = {"a": [[[0, 0, 20, 20]], [20, 20, 30, 30], [0, 0, 1, 1], [float("nan")] * 4],  # border hit, miss, skipped, NaN miss
            "b": [None], "z": [[0, 0, 1, 1]]}
    report = pointing_accuracy(gt, pred)
    assert report.metrics["pointing_accuracy"] == pytest.approx(1 / 4)
    assert report.protocol["valid_gt_boxes"] == 4 and report.protocol["correct"] == 1
    assert {(p.item, p.kind) for p in report.problems} == {("c", "missing_prediction"), ("z", "unknown_clip")}
