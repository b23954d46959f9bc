"""COCO box AP at one IoU threshold, per video, vectorised over every frame and video at once.

Reproduces what pycocotools' COCOeval computes when one COCOeval runs per video (`params.imgIds` =
that video's frames, one category, iouType "bbox", area "all", maxDets 100) and `stats[1]` is read,
as GROVE's iGround evaluator does (metrics_spec.md 6, grove_spec.md 4.2):

- per image: detections sorted by score with a stable sort (ties keep input order) and cut to
  `max_dets`; GTs outside the area range are "ignored" and sorted last; each detection takes the
  still-unmatched GT of highest IoU >= threshold (ties go to the later GT), non-ignored GTs first;
- per video: detections of all its images, images in COCOeval's order (sorted image ids), sorted
  again by score (stable); cumulative TP/FP, precision made monotone from the right, sampled at 101
  recall thresholds with `searchsorted(..., 'left')`; AP = their mean; a video without a
  non-ignored GT gets -1, as COCOeval reports it.

The numbers are bit-for-bit those of COCOeval's float64 arithmetic; only the loops are gone: frames
are matched in buckets of similar size, one detection rank at a time, and the per-video curves are
segments of one sorted array (recall thresholds become exact integer TP counts).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from evaluation.iou import iou_coco

# pycocotools' Params.setDetParams, spelled the same way so the floats are identical
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_ALL = (0.0, 1e5**2)


def _rank_in_group(group: np.ndarray) -> np.ndarray:
    """For an array sorted by group: each element's position within its group."""
    counts = np.bincount(group)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.arange(group.size) - starts[group]


def frame_buckets(count_a: np.ndarray, count_b: np.ndarray) -> Iterator[tuple[np.ndarray, ...]]:
    """Group frames having items of both kinds into buckets of similar size, padded to powers of two.

    `count_a[f]`, `count_b[f]`: how many items of each kind frame f has; items are stored sorted by
    frame. Yields (frames, index_a, ok_a, index_b, ok_b): index_x [F, width_x] are the items' global
    indices (0 where padding), ok_x marks the real ones. Padding stays within 2x of the real sizes.
    """
    start_a = np.concatenate([[0], np.cumsum(count_a)[:-1]])
    start_b = np.concatenate([[0], np.cumsum(count_b)[:-1]])
    both = np.flatnonzero((count_a > 0) & (count_b > 0))
    size_a = 1 << np.ceil(np.log2(count_a[both])).astype(np.int64)
    size_b = 1 << np.ceil(np.log2(count_b[both])).astype(np.int64)
    for width_a, width_b in sorted(set(zip(size_a.tolist(), size_b.tolist()))):
        frames = both[(size_a == width_a) & (size_b == width_b)]
        ok_a = np.arange(width_a)[None, :] < count_a[frames, None]
        ok_b = np.arange(width_b)[None, :] < count_b[frames, None]
        index_a = np.where(ok_a, start_a[frames, None] + np.arange(width_a), 0)
        index_b = np.where(ok_b, start_b[frames, None] + np.arange(width_b), 0)
        yield frames, index_a, ok_a, index_b, ok_b


def _match_bucket(
    iou: np.ndarray, dt_ok: np.ndarray, gt_ok: np.ndarray, gt_ignore: np.ndarray, threshold: float
) -> np.ndarray:
    """COCOeval's greedy matching for F frames at once. iou [F, D, G]; returns the matched GT slot per detection (-1: none)."""
    frames, num_dt, num_gt = iou.shape
    taken = np.zeros((frames, num_gt), bool)
    match = np.full((frames, num_dt), -1, np.int64)
    rows = np.arange(frames)
    for d in range(num_dt):
        candidate = gt_ok & ~taken & (iou[:, d, :] >= threshold) & dt_ok[:, d, None]
        best = np.full(frames, -1, np.int64)
        # non-ignored GTs come first in COCOeval's order, so an ignored GT is only taken when no other matches
        for pool in (candidate & gt_ignore, candidate & ~gt_ignore):
            scores = np.where(pool, iou[:, d, :], -np.inf)
            last_best = num_gt - 1 - np.argmax(scores[:, ::-1], axis=1)  # ties go to the later GT
            best = np.where(pool.any(axis=1), last_best, best)
        hit = best >= 0
        taken[rows[hit], best[hit]] = True
        match[:, d] = best
    return match


def match_detections(
    gt_boxes: np.ndarray,
    gt_image: np.ndarray,
    gt_ignore: np.ndarray,
    dt_boxes: np.ndarray,
    dt_image: np.ndarray,
    num_images: int,
    iou_threshold: float = 0.5,
) -> np.ndarray:
    """Per detection (already in per-image score order), the index of the GT it matches, or -1.

    GT arrays must be sorted by (image, ignore flag), detections by (image, score order).
    """
    matched = np.full(len(dt_boxes), -1, np.int64)
    if len(dt_boxes) == 0 or len(gt_boxes) == 0:
        return matched
    dt_count = np.bincount(dt_image, minlength=num_images)
    gt_count = np.bincount(gt_image, minlength=num_images)
    for _, dt_index, dt_ok, gt_index, gt_ok in frame_buckets(dt_count, gt_count):
        iou = iou_coco(dt_boxes[dt_index][:, :, None, :], gt_boxes[gt_index][:, None, :, :])
        slot = _match_bucket(iou, dt_ok, gt_ok, gt_ignore[gt_index] & gt_ok, iou_threshold)
        found = (slot >= 0) & dt_ok
        gt_of_slot = np.take_along_axis(gt_index, np.maximum(slot, 0), axis=1)
        matched[dt_index[found]] = gt_of_slot[found]
    return matched


def _segment_suffix_max(values: np.ndarray, segment: np.ndarray, num_segments: int) -> np.ndarray:
    """max(values[i:end of i's segment]) for every i, exactly: ranks of the values offset per segment, one cummax."""
    if values.size == 0:
        return values.copy()
    unique, rank = np.unique(values, return_inverse=True)
    levels = len(unique)
    # walking backwards, later segments are met first; give earlier segments larger offsets so each restarts
    key = (num_segments - 1 - segment).astype(np.int64) * levels + rank
    suffix = np.maximum.accumulate(key[::-1])[::-1]
    return unique[suffix - (num_segments - 1 - segment).astype(np.int64) * levels]


def _min_tp_for_recall(npig: np.ndarray) -> np.ndarray:
    """[V, 101]: the least TP count m with float(m / npig) >= each recall threshold (as COCOeval compares them)."""
    n = npig[:, None].astype(np.float64)
    guess = np.ceil(REC_THRS[None, :] * n).astype(np.int64)
    below = np.maximum(guess - 1, 0)
    m = np.where(below / n >= REC_THRS, below, np.where(guess / n >= REC_THRS, guess, guess + 1))
    return m


def coco_ap_per_video(
    gt_boxes: np.ndarray,
    gt_image: np.ndarray,
    dt_boxes: np.ndarray,
    dt_image: np.ndarray,
    dt_scores: np.ndarray,
    image_video: np.ndarray,
    image_rank: np.ndarray,
    num_videos: int,
    iou_threshold: float = 0.5,
    max_dets: int = 100,
    area_range: tuple[float, float] = AREA_ALL,
) -> np.ndarray:
    """COCOeval AP at `iou_threshold` for every video; -1 where a video has no non-ignored GT.

    Boxes are xywh. `image_video[i]` is image i's video, `image_rank[i]` its place in COCOeval's image
    order (the sorted image ids); GTs and detections of one image keep their input order.
    """
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    dt_boxes = np.asarray(dt_boxes, np.float64).reshape(-1, 4)
    gt_image, dt_image = np.asarray(gt_image, np.int64), np.asarray(dt_image, np.int64)
    dt_scores = np.asarray(dt_scores, np.float64)
    image_video, image_rank = np.asarray(image_video, np.int64), np.asarray(image_rank, np.int64)
    num_images = len(image_video)

    gt_area = gt_boxes[:, 2] * gt_boxes[:, 3]
    gt_ignore = (gt_area < area_range[0]) | (gt_area > area_range[1])
    gt_order = np.lexsort((np.arange(len(gt_boxes)), gt_ignore, gt_image))
    gt_boxes, gt_image, gt_ignore = gt_boxes[gt_order], gt_image[gt_order], gt_ignore[gt_order]

    dt_order = np.lexsort((np.arange(len(dt_boxes)), -dt_scores, dt_image))
    dt_boxes, dt_image, dt_scores = dt_boxes[dt_order], dt_image[dt_order], dt_scores[dt_order]
    rank_in_image = _rank_in_group(dt_image) if len(dt_image) else np.zeros(0, np.int64)
    kept = rank_in_image < max_dets
    dt_boxes, dt_image, dt_scores, rank_in_image = dt_boxes[kept], dt_image[kept], dt_scores[kept], rank_in_image[kept]

    matched = match_detections(gt_boxes, gt_image, gt_ignore, dt_boxes, dt_image, num_images, iou_threshold)
    dt_area = dt_boxes[:, 2] * dt_boxes[:, 3]
    dt_ignore = np.where(matched >= 0, gt_ignore[np.maximum(matched, 0)] if len(gt_ignore) else False,
                         (dt_area < area_range[0]) | (dt_area > area_range[1]))
    npig = np.bincount(image_video[gt_image[~gt_ignore]], minlength=num_videos)
    return _accumulate(matched >= 0, dt_ignore, dt_scores, image_video[dt_image], image_rank[dt_image],
                       rank_in_image, npig, num_videos)


def _accumulate(
    is_match: np.ndarray, ignore: np.ndarray, scores: np.ndarray, video: np.ndarray, image_rank: np.ndarray,
    rank_in_image: np.ndarray, npig: np.ndarray, num_videos: int,
) -> np.ndarray:
    """COCOeval.accumulate + summarize for one IoU threshold, every video at once."""
    ap = np.where(npig > 0, 0.0, -1.0)
    keep = npig[video] > 0
    order = np.lexsort((rank_in_image[keep], image_rank[keep], -scores[keep], video[keep]))
    video = video[keep][order]
    if video.size == 0:
        return ap
    tps = (is_match & ~ignore)[keep][order]
    fps = (~is_match & ~ignore)[keep][order]
    counts = np.bincount(video, minlength=num_videos)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    tp_total, fp_total = np.cumsum(tps), np.cumsum(fps)
    before = starts[video] - 1  # the running totals just before each video's segment
    tp_count = tp_total - np.where(before >= 0, tp_total[np.maximum(before, 0)], 0)
    fp_count = fp_total - np.where(before >= 0, fp_total[np.maximum(before, 0)], 0)
    tp, fp = tp_count.astype(np.float64), fp_count.astype(np.float64)
    precision = tp / (fp + tp + np.spacing(1))
    envelope = _segment_suffix_max(precision, video, num_videos)

    scored = np.flatnonzero((npig > 0) & (counts > 0))
    need = _min_tp_for_recall(npig[scored])  # [V', 101]
    stride = int(tp_count.max()) + 2
    key = video.astype(np.int64) * stride + tp_count  # nondecreasing: videos in order, TP counts grow
    first = np.searchsorted(key, scored[:, None] * stride + np.minimum(need, stride - 1), side="left")
    inside = first < (starts[scored] + counts[scored])[:, None]
    q = np.where(inside, envelope[np.minimum(first, len(envelope) - 1)], 0.0)
    ap[scored] = q.mean(axis=1)
    return ap
