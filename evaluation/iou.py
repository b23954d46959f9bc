"""Box and interval IoU in each benchmark's own convention (metrics_spec.md 0). They differ; match the benchmark.

Every box function takes arrays of shape [..., 4] and broadcasts, so callers build pairwise
matrices with `a[:, None]` and `b[None, :]`.
"""

from __future__ import annotations

import numpy as np


def iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Continuous IoU of xyxy boxes, no +1 (torchvision / TubeDETR `np_box_iou`, VidSTG).

    Where the union is not positive (two empty boxes) the IoU is 0; the reference divides by zero there.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def iou_plus1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """GROVE `compute_iou` (iGround recall, mIoU): corners inclusive, w = x2 - x1 + 1; 0 when the union is 0."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    inter_w = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = inter_w * inter_h
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union == 0, 0.0, inter / union)


def iou_anet(pred: np.ndarray, gt: np.ndarray, same_frame: np.ndarray | None = None) -> np.ndarray:
    """ActivityNet-Entities `bbox_overlaps_batch`: +1 areas in float32, as the official torch code computes them.

    Pairs not on the same frame (`same_frame` False) have overlap 0. A GT box with x2 == x1 and
    y2 == y1 has overlap 0; such a prediction has overlap -1 (applied last, as in the reference).
    """
    pred, gt = np.asarray(pred, np.float32), np.asarray(gt, np.float32)
    one = np.float32(1)
    gw, gh = gt[..., 2] - gt[..., 0] + one, gt[..., 3] - gt[..., 1] + one
    pw, ph = pred[..., 2] - pred[..., 0] + one, pred[..., 3] - pred[..., 1] + one
    iw = np.maximum(np.minimum(pred[..., 2], gt[..., 2]) - np.maximum(pred[..., 0], gt[..., 0]) + one, 0)
    ih = np.maximum(np.minimum(pred[..., 3], gt[..., 3]) - np.maximum(pred[..., 1], gt[..., 1]) + one, 0)
    union = pw * ph + gw * gh - iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        overlap = (iw * ih / union).astype(np.float32)
    if same_frame is not None:
        overlap = overlap * np.asarray(same_frame, np.float32)
    overlap = np.where((gw == 1) & (gh == 1), np.float32(0), overlap)
    return np.where((pw == 1) & (ph == 1), np.float32(-1), overlap)


def iou_coco(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """pycocotools `bbIou` for non-crowd xywh boxes: 0 unless the overlap has positive width and height."""
    dt, gt = np.asarray(dt, np.float64), np.asarray(gt, np.float64)
    w = np.minimum(dt[..., 2] + dt[..., 0], gt[..., 2] + gt[..., 0]) - np.maximum(dt[..., 0], gt[..., 0])
    h = np.minimum(dt[..., 3] + dt[..., 1], gt[..., 3] + gt[..., 1]) - np.maximum(dt[..., 1], gt[..., 1])
    inter = w * h
    union = dt[..., 2] * dt[..., 3] + gt[..., 2] * gt[..., 3] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((w > 0) & (h > 0), inter / union, 0.0)


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """tIoU of two [start, end] intervals in seconds; 0 when disjoint or when both are empty."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def temporal_iou_densevid(a: tuple[float, float], b: tuple[float, float]) -> float:
    """densevid_eval / SODA `iou`: union = min(hull, len_a + len_b), divided with a 1e-8 guard."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = min(max(a[1], b[1]) - min(a[0], b[0]), (a[1] - a[0]) + (b[1] - b[0]))
    return float(inter) / (union + 1e-8)
