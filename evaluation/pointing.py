"""Pointing accuracy (YouCook-Interactions, GroundingYouTube), as GROVE's `eval_youcookinteractions.py`.

Per clip, predicted and GT boxes are paired frame by frame (zip: the shorter list wins). A frame
whose GT box is empty is skipped; every other GT box counts; it is a hit when the predicted box's
centre lies inside it, borders included. A missing or NaN prediction is a miss. A clip with no
prediction at all is reported and left out (the reference script crashes on it).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from evaluation.report import EvalReport, Problem


def _first_box(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    box = np.asarray(value, np.float64).reshape(-1)
    if box.size < 4 or np.isnan(box).any():
        return None
    return box[:4]


def pointing_accuracy(
    gt: Mapping[str, Sequence[Any]], predictions: Mapping[str, Sequence[Any]], benchmark: str = "pointing",
    split: str = "test",
) -> EvalReport:
    """`gt[clip]` and `predictions[clip]`: one [x1, y1, x2, y2] (or None / []) per annotated frame."""
    problems: list[Problem] = []
    correct = valid = scored = 0
    for clip, gt_boxes in gt.items():
        if clip not in predictions:
            problems.append(Problem(clip, "missing_prediction", "no prediction for this clip"))
            continue
        pred_boxes = list(predictions[clip])
        if len(pred_boxes) != len(gt_boxes):
            problems.append(Problem(clip, "length_mismatch", f"{len(pred_boxes)} predicted frames for {len(gt_boxes)} GT "
                                    "frames; paired up to the shorter, as the reference does", "warning"))
        scored += 1
        for pred_box, gt_box in zip(pred_boxes, gt_boxes):
            if gt_box is None or len(gt_box) == 0:
                continue
            x1, y1, x2, y2 = gt_box
            valid += 1
            box = _first_box(pred_box)
            if box is None:
                continue
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            correct += int(x1 <= cx <= x2 and y1 <= cy <= y2)
    problems += [Problem(c, "unknown_clip", "prediction for a clip not in the ground truth", "warning")
                 for c in predictions if c not in gt]
    metrics = {"pointing_accuracy": correct / valid if valid else 0.0}
    protocol = {"hit": "predicted box centre inside the GT box, borders included", "missing_box": "miss",
                "correct": correct, "valid_gt_boxes": valid}
    return EvalReport(benchmark, split, metrics, protocol, num_items=len(gt), num_scored=scored, problems=problems)
