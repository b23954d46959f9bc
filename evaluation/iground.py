"""iGround grounded video caption generation: captions, AP50, mIoU and Recall as GROVE's `eval_iground.py` computes them.

The official evaluator (grove_spec.md 4.2, metrics_spec.md 7), run `--evaluation_mode per_video`:
- GT clips are visited in the GT file's order; a clip without a prediction, or whose prediction has
  no frame, is left out (it prints a warning for a missing one, nothing for an empty one); a
  prediction with more frames than GT loses its LAST frame (once), then the frame counts must agree
  (else its assertion stops the run);
- GT boxes are int-truncated; predicted boxes are clamped to the frame, int-truncated and written with
  score 1.0, frame t's boxes zipped with frame t's labels (`pred_bboxes[t]` with `pred_labels[t]`);
- AP50: COCOeval per video, one category, every frame an image; `stats[1]` averaged over videos
  (a video without GT boxes contributes COCOeval's -1);
- captions: pycocoevalcap (BLEU-1..4, METEOR, ROUGE-L, CIDEr, SPICE) over the scored clips;
- mIoU: per frame with both predicted and GT boxes, the mean of the WHOLE IoU matrix (`compute_iou`,
  +1-pixel areas, on COCO xywh boxes read as corners); averaged over the video's frames (0 without
  any), then over videos;
- Recall: per frame, greedy over the GT x prediction IoU matrix (global argmax; stop at the first
  pair with IoU < 0.5 or phrase similarity < 0.5), TP summed over the video's frames / its GT boxes
  (0 without GT), averaged over videos.

Prediction layouts (`grove.data.predictions`): "kept-only" records (what `infer_iground.py` writes:
`pred_bboxes[t]` = the K_t kept boxes, `probs_temp_objectness[t]` = Q values) and "all-query" records
(`grove infer` adds every query's box as `all_bboxes`). Both are scored as written by default.

Protocol options (`IGroundProtocol`), recorded in the output; `OFFICIAL` (the default) reproduces the
official numbers, `CORRECTED` changes every quirk:
- `objectness_threshold`: None (default): the records as written, filtered at inference. A number
  re-filters each frame at that threshold (strict >) before pairing: an all-query record is
  re-filtered from `all_bboxes` (any threshold); a kept-only record only loses boxes: its kept boxes
  are matched to their queries by probability (`kept_queries`) and those at or below the threshold
  drop; a threshold under which a DROPPED query would pass cannot be applied (its box is gone), nor
  can any threshold on a record without probabilities: such clips are invalid (named, counted).
- `pairing`: "official" zips `pred_bboxes[t]` with `pred_labels[t]`; "by_query" pairs the box of query j
  with phrase j, the query of each box coming from `all_bboxes` or, for kept-only records, from
  `kept_queries`. In both layouts the boxes are kept in query order and the labels are their
  queries' phrases, so the two agree on every record they describe correctly; they differ on
  records whose labels do not follow their boxes (e.g. the all-box records of earlier grove
  versions, reported as `layout_mismatch`). "by_query" on a record without probabilities is an error.
- `ap_scores`: every box scores 1.0, so AP depends on COCOeval's image order ("constant"); or each
  box's query objectness ("objectness"; 1.0 for records without probabilities).
- `recall_boxes`: Recall and mIoU IoUs on COCO xywh boxes read as corners ("xywh_as_xyxy"), or on
  the xyxy boxes ("xyxy"); both with the +1-pixel areas of `compute_iou`.
- `empty_gt_videos`: a clip without GT boxes enters the means with AP -1, mIoU 0 and Recall 0
  ("include"), or is left out of them ("exclude").
- `missing_predictions`: a GT clip without a prediction (or with an empty one) is left out
  ("skip", official; reported with severity "skipped"), or scored as an empty prediction ("zero").
Records that cannot be read or aligned are "error" problems: named with their reason, counted, left
out; `grove eval iground` then exits non-zero unless given `--skip-bad-clips`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pyarrow as pa

from evaluation.ap import coco_ap_per_video, frame_buckets
from evaluation.bootstrap import ClipStatistics
from evaluation.captions import CaptionScores, MeteorScorer, score_captions
from evaluation.embeddings import EmbedFn, unit_rows
from evaluation.iou import iou_plus1
from evaluation.report import EvalReport, Problem, mean
from grove.data.boxes import boxes_by_key
from grove.data.predictions import ClipPrediction, PredictionError, kept_queries, load_predictions
from grove.data.schema import SchemaError

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class IGroundProtocol:
    objectness_threshold: float | None = None
    pairing: Literal["official", "by_query"] = "official"
    ap_scores: Literal["constant", "objectness"] = "constant"
    recall_boxes: Literal["xywh_as_xyxy", "xyxy"] = "xywh_as_xyxy"
    empty_gt_videos: Literal["include", "exclude"] = "include"
    missing_predictions: Literal["skip", "zero"] = "skip"
    iou_threshold: float = 0.5
    text_similarity_threshold: float = 0.5

    def __post_init__(self) -> None:
        choices = {"pairing": ("official", "by_query"), "ap_scores": ("constant", "objectness"),
                   "recall_boxes": ("xywh_as_xyxy", "xyxy"), "empty_gt_videos": ("include", "exclude"),
                   "missing_predictions": ("skip", "zero")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"protocol option {name}={getattr(self, name)!r}: choose one of {allowed}")
        if self.objectness_threshold is not None and not 0.0 <= self.objectness_threshold < 1.0:
            raise ValueError(f"objectness_threshold must be in [0, 1) or None, got {self.objectness_threshold}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


OFFICIAL = IGroundProtocol()
CORRECTED = IGroundProtocol(pairing="by_query", ap_scores="objectness", recall_boxes="xyxy", empty_gt_videos="exclude")
PRESETS = {"official": OFFICIAL, "corrected": CORRECTED}


def protocols_side_by_side(
    preset: str = "official", other: str = "auto", objectness_threshold: float | None = None, **overrides: Any
) -> dict[str, IGroundProtocol]:
    """The named protocols one evaluation reports: `preset` (with `overrides`) first, then `other` ("auto":
    every other preset; "none": none; or a preset's name). The objectness threshold is the input's
    filtering, not a quirk: every protocol gets it; `overrides` change the first protocol only."""
    if preset not in PRESETS:
        raise ValueError(f"protocol must be one of {sorted(PRESETS)}, got {preset!r}")
    if other not in ("auto", "none", *PRESETS):
        raise ValueError(f"other protocol must be auto, none or one of {sorted(PRESETS)}, got {other!r}")
    others = [] if other == "none" else [n for n in PRESETS if n != preset] if other == "auto" else [other]
    protocols = {preset: dataclasses.replace(PRESETS[preset], objectness_threshold=objectness_threshold, **overrides)}
    return protocols | {n: dataclasses.replace(PRESETS[n], objectness_threshold=objectness_threshold)
                        for n in others if n != preset}


@dataclass
class IGroundClip:
    """One GT clip: raw boxes (xyxy pixels) in (frame, box) order with their phrase labels."""

    key: str
    width: int
    height: int
    caption: str
    num_frames: int
    boxes: np.ndarray
    box_frame: np.ndarray
    labels: list[str]


def gt_from_tables(clips: pa.Table, boxes: pa.Table, source: str = "<tables>") -> dict[str, IGroundClip]:
    """Canonical clip and (raw) box tables -> GT clips, in the clip table's order."""
    by_key = boxes_by_key(boxes)
    out: dict[str, IGroundClip] = {}
    columns = clips.select(["key", "width", "height", "caption", "num_frames"]).to_pydict()
    for key, width, height, caption, num_frames in zip(*columns.values()):
        table = by_key.get(key)
        if table is None:
            coords, frames, labels = np.zeros((0, 4)), np.zeros(0, np.int64), []
        else:
            coords = np.stack([table[c].to_numpy() for c in ("x1", "y1", "x2", "y2")], axis=1).astype(np.float64)
            frames = table["frame_index"].to_numpy().astype(np.int64)
            labels = table["phrase"].to_pylist()
            if frames.size and (frames.min() < 0 or frames.max() >= num_frames):
                raise SchemaError(f"{source}: clip {key!r} has a box on frame {frames.max()} of {num_frames}")
        out[key] = IGroundClip(key, int(width), int(height), caption, int(num_frames), coords, frames, labels)
    return out


def load_iground_gt(path: str | Path, split: str | None = None) -> dict[str, IGroundClip]:
    """GT from an official raw pickle (or per-clip pickle folder) or from a dataset folder's raw boxes."""
    from grove.data.dataset import DatasetPaths, load_dataset

    path = Path(path)
    if path.is_dir() and DatasetPaths(path).clips.exists():
        if not DatasetPaths(path).boxes_raw.exists():
            raise FileNotFoundError(f"{path}: iGround is evaluated against raw boxes; there is no "
                                    f"{DatasetPaths(path).boxes_raw.name}")
        dataset = load_dataset(path, processed=False)
        if split is not None:
            if split not in dataset.splits:
                raise ValueError(f"{path}: no clips of split {split!r} (splits: {dataset.splits})")
            dataset = dataset.split(split)
        return gt_from_tables(dataset.clips, dataset.boxes, str(path))
    from grove.data.howtoground import read_official

    clips, boxes = read_official(path, dataset="iground", split=split or "test")
    return gt_from_tables(clips, boxes, str(path))


@dataclass
class _Scored:
    """One clip ready to score: per-box arrays of COCO xywh ints and labels, and the frame of each box."""

    key: str
    num_frames: int
    gt_xywh: np.ndarray
    gt_frame: np.ndarray
    gt_labels: list[str]
    dt_xywh: np.ndarray
    dt_frame: np.ndarray
    dt_labels: list[str]
    dt_scores: np.ndarray
    caption: str
    pred_text: str


def _truncate_xywh(xyxy: np.ndarray) -> np.ndarray:
    """`map(int, bbox)` then [x, y, x2 - x, y2 - y], as the official script writes COCO boxes."""
    ints = np.trunc(xyxy)
    return np.concatenate([ints[:, :2], ints[:, 2:] - ints[:, :2]], axis=1)


def _box_queries(key: str, t: int, pred: ClipPrediction) -> np.ndarray:
    """The query of each box in `pred_bboxes[t]` (sorted: boxes are kept in query order)."""
    if pred.probs_temp_objectness is None:
        raise PredictionError(key, "no probs_temp_objectness: the query of each kept box is unknown")
    probs = pred.probs_temp_objectness[t]
    count = len(pred.pred_bboxes[t])
    if pred.all_query and pred.objectness_threshold is not None:
        queries = np.flatnonzero(probs > pred.objectness_threshold)
        if len(queries) == count:
            return queries
    queries = kept_queries(probs, count)
    if queries is None:
        raise PredictionError(key, f"pred_bboxes[{t}] has {count} boxes for {len(probs)} query probabilities "
                                   "that no objectness threshold separates")
    return queries


def _frame_detections(
    key: str, t: int, pred: ClipPrediction, protocol: IGroundProtocol
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(boxes, labels, scores) frame t contributes, per the threshold, pairing and AP-score options."""
    probs = pred.probs_temp_objectness[t] if pred.probs_temp_objectness is not None else None
    phrases = pred.pred_phrases
    threshold = protocol.objectness_threshold
    if threshold is None:
        boxes = pred.pred_bboxes[t]
        wants_queries = protocol.pairing == "by_query" or (protocol.ap_scores == "objectness" and probs is not None)
        queries = _box_queries(key, t, pred) if wants_queries else None
        if protocol.pairing == "official":
            labels = pred.pred_labels[t]
            rows = np.arange(min(len(boxes), len(labels)))
            labels = list(labels[:len(rows)])
        else:
            rows = np.flatnonzero(queries < len(phrases))
            labels = [phrases[j] for j in queries[rows]]
    else:
        if probs is None:
            raise PredictionError(key, f"objectness threshold {threshold} needs probs_temp_objectness")
        if pred.all_query:
            queries = np.flatnonzero(probs > threshold)
            boxes = pred.all_bboxes[t][queries]
        else:
            kept = _box_queries(key, t, pred)
            dropped = np.setdiff1d(np.arange(len(probs)), kept)
            if (probs[dropped] > threshold).any():
                raise PredictionError(key, f"objectness threshold {threshold} is below the one this kept-only record was "
                                           f"filtered with (frame {t} dropped a query of probability "
                                           f"{probs[dropped].max():.4f}; its box is not in the record)")
            passing = probs[kept] > threshold
            queries, boxes = kept[passing], pred.pred_bboxes[t][passing]
        # boxes are in query order and the phrased queries come first: zip and by-query pairing agree
        labels = [phrases[j] for j in queries if j < len(phrases)]
        rows = np.arange(len(labels))
    if protocol.ap_scores == "objectness" and queries is not None:
        scores = probs[queries[rows]]
    else:
        scores = np.ones(len(rows))
    return boxes[rows], labels, scores


def _layout_mismatch(pred: ClipPrediction, frames: int) -> int | None:
    """The first frame whose labels cannot be its kept boxes' phrases although every query has a phrase."""
    if pred.probs_temp_objectness is None:
        return None
    for t in range(frames):
        boxes, labels, probs = pred.pred_bboxes[t], pred.pred_labels[t], pred.probs_temp_objectness[t]
        if len(pred.pred_phrases) >= len(probs) and len(labels) != len(boxes):
            return t
    return None


def _outside(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes that miss the frame entirely or are inverted (clamping turns them into empty boxes)."""
    return ((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | (boxes[:, 0] >= width) | (boxes[:, 1] >= height)
            | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))


def _prepare(gt: IGroundClip, pred: ClipPrediction | None, protocol: IGroundProtocol,
             problems: list[Problem]) -> _Scored:
    """Align a prediction with its GT clip the way the official evaluator does; problems name the clip."""
    num_frames = gt.num_frames
    boxes, frames, labels, scores = [np.zeros((0, 4))], [np.zeros(0, np.int64)], [], [np.zeros(0)]
    if pred is not None and pred.num_frames:
        frame_count = pred.num_frames - 1 if pred.num_frames > num_frames else pred.num_frames
        if frame_count != num_frames:
            raise PredictionError(gt.key, f"{pred.num_frames} predicted frames for {num_frames} GT frames")
        if frame_count < pred.num_frames:
            problems.append(Problem(gt.key, "extra_frame_dropped", (
                f"{pred.num_frames} predicted frames for {num_frames} GT frames: the last one is dropped, as the "
                "official evaluator does"), "warning"))
        for t in range(num_frames):
            frame_boxes, frame_labels, frame_scores = _frame_detections(gt.key, t, pred, protocol)
            boxes.append(frame_boxes)
            frames.append(np.full(len(frame_boxes), t, np.int64))
            labels += frame_labels
            scores.append(frame_scores)
        if protocol.pairing == "official" and protocol.objectness_threshold is None:
            mismatch = _layout_mismatch(pred, num_frames)
            if mismatch is not None:
                problems.append(Problem(gt.key, "layout_mismatch", (
                    f"frame {mismatch} has {len(pred.pred_labels[mismatch])} labels for {len(pred.pred_bboxes[mismatch])} "
                    "boxes although every query has a phrase: not the layout infer_iground.py writes (records of "
                    "earlier grove versions held every query's box and must be written again); scored by the "
                    "official zip"), "warning"))
    boxes_xyxy, box_frame = np.concatenate(boxes), np.concatenate(frames)
    outside = np.flatnonzero(_outside(boxes_xyxy, gt.width, gt.height))
    if len(outside):
        first = outside[0]
        problems.append(Problem(gt.key, "box_outside_frame", (
            f"{len(outside)} predicted box(es) lie outside the {gt.width}x{gt.height} frame or are inverted (first: "
            f"frame {box_frame[first]}, {[round(float(v), 2) for v in boxes_xyxy[first]]}); clamped as the official "
            "evaluator does"), "warning"))
    limits = np.array([gt.width, gt.height, gt.width, gt.height], np.float64)
    dt_scores = np.concatenate(scores) if protocol.ap_scores == "objectness" else np.ones(len(boxes_xyxy))
    return _Scored(gt.key, num_frames, _truncate_xywh(gt.boxes), gt.box_frame, list(gt.labels),
                   _truncate_xywh(np.clip(boxes_xyxy, 0, limits)), box_frame, labels, dt_scores,
                   gt.caption, pred.pred_text if pred is not None else "")


def _image_rank(num_frames: int) -> np.ndarray:
    """COCOeval visits a video's images in sorted image-id order: '{key}_10' sorts before '{key}_2'."""
    rank = np.empty(num_frames, np.int64)
    rank[sorted(range(num_frames), key=str)] = np.arange(num_frames)
    return rank


def _cat(parts: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty_shape)


def _global_frames(clips: Sequence[_Scored], field_name: str) -> np.ndarray:
    """Each box's frame as an index into all clips' frames laid end to end."""
    offsets = np.cumsum([0] + [c.num_frames for c in clips])
    return _cat([getattr(c, field_name) + offsets[i] for i, c in enumerate(clips)], (0,)).astype(np.int64)


def ap50_per_clip(clips: Sequence[_Scored], iou_threshold: float = 0.5) -> np.ndarray:
    """COCOeval AP at `iou_threshold` for each clip (-1 when a clip has no GT box)."""
    return coco_ap_per_video(
        gt_boxes=_cat([c.gt_xywh for c in clips], (0, 4)), gt_image=_global_frames(clips, "gt_frame"),
        dt_boxes=_cat([c.dt_xywh for c in clips], (0, 4)), dt_image=_global_frames(clips, "dt_frame"),
        dt_scores=_cat([c.dt_scores for c in clips], (0,)),
        image_video=np.repeat(np.arange(len(clips)), [c.num_frames for c in clips]),
        image_rank=_cat([_image_rank(c.num_frames) for c in clips], (0,)).astype(np.int64),
        num_videos=len(clips), iou_threshold=iou_threshold)


def _pair_similarity(unit: np.ndarray, left: np.ndarray, right: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    out = np.empty(len(left))
    for start in range(0, len(left), chunk):
        a, b = unit[left[start:start + chunk]], unit[right[start:start + chunk]]
        out[start:start + chunk] = np.einsum("ij,ij->i", a, b)
    return out


def greedy_recall_tp(
    gt_boxes: np.ndarray, gt_frame: np.ndarray, gt_phrase: np.ndarray,
    dt_boxes: np.ndarray, dt_frame: np.ndarray, dt_phrase: np.ndarray,
    num_frames: int, unit_embeddings: np.ndarray, iou_threshold: float = 0.5, sim_threshold: float = 0.5,
) -> np.ndarray:
    """True positives per frame of GROVE's recall matching, all frames at once.

    Boxes are 4-vectors given to `iou_plus1` (GROVE's `compute_iou`); arrays are sorted by frame, in
    each frame's order. Per frame: take the global argmax (row-major, first on ties) of the GT x
    prediction IoU matrix; stop if its IoU < `iou_threshold` or its phrase cosine < `sim_threshold`;
    else count it, zero its row and column, and repeat.
    """
    tp = np.zeros(num_frames, np.int64)
    gt_count = np.bincount(gt_frame, minlength=num_frames)
    dt_count = np.bincount(dt_frame, minlength=num_frames)
    for frames, g_idx, g_ok, p_idx, p_ok in frame_buckets(gt_count, dt_count):
        width_g, width_p = g_idx.shape[1], p_idx.shape[1]
        valid = g_ok[:, :, None] & p_ok[:, None, :]
        iou = np.where(valid, iou_plus1(gt_boxes[g_idx][:, :, None, :], dt_boxes[p_idx][:, None, :, :]), 0.0)
        left = np.broadcast_to(gt_phrase[g_idx][:, :, None], valid.shape)[valid]
        right = np.broadcast_to(dt_phrase[p_idx][:, None, :], valid.shape)[valid]
        sim = np.zeros(valid.shape)
        sim[valid] = _pair_similarity(unit_embeddings, left, right)
        rows = np.arange(len(frames))
        active = np.ones(len(frames), bool)
        for _ in range(min(width_g, width_p)):
            flat = iou.reshape(len(frames), -1).argmax(axis=1)
            g, p = np.divmod(flat, width_p)
            ok = active & (iou[rows, g, p] >= iou_threshold) & (sim[rows, g, p] >= sim_threshold)
            if not ok.any():
                break
            active &= ok
            tp[frames[ok]] += 1
            hit, hg, hp = rows[ok], g[ok], p[ok]
            for matrix in (iou, sim):
                matrix[hit, hg, :] = 0.0
                matrix[hit, :, hp] = 0.0
    return tp


def _embed_in_chunks(embed: EmbedFn, phrases: list[str], progress: Progress | None, chunk: int = 2048) -> np.ndarray:
    """Embed in chunks so that a long embedding pass reports progress."""
    parts = []
    for start in range(0, len(phrases), chunk):
        parts.append(np.asarray(embed(phrases[start:start + chunk])))
        if progress:
            progress("embed phrases", min(start + chunk, len(phrases)), len(phrases))
    return np.concatenate(parts)


def _iou_boxes(xywh: np.ndarray, protocol: IGroundProtocol) -> np.ndarray:
    """The 4-vectors `compute_iou` is given: COCO xywh read as corners (official) or the xyxy boxes."""
    if protocol.recall_boxes == "xywh_as_xyxy":
        return xywh
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)


def recall_per_clip(clips: Sequence[_Scored], embed: EmbedFn, protocol: IGroundProtocol,
                    progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(recall per clip, GT box count per clip). Each distinct phrase is embedded once."""
    phrases = sorted({p for c in clips for p in c.gt_labels} | {p for c in clips for p in c.dt_labels})
    unit = unit_rows(_embed_in_chunks(embed, phrases, progress)) if phrases else np.zeros((0, 1))
    index = {p: i for i, p in enumerate(phrases)}
    tp = greedy_recall_tp(
        gt_boxes=_cat([_iou_boxes(c.gt_xywh, protocol) for c in clips], (0, 4)), gt_frame=_global_frames(clips, "gt_frame"),
        gt_phrase=np.array([index[p] for c in clips for p in c.gt_labels], np.int64),
        dt_boxes=_cat([_iou_boxes(c.dt_xywh, protocol) for c in clips], (0, 4)), dt_frame=_global_frames(clips, "dt_frame"),
        dt_phrase=np.array([index[p] for c in clips for p in c.dt_labels], np.int64),
        num_frames=sum(c.num_frames for c in clips), unit_embeddings=unit,
        iou_threshold=protocol.iou_threshold, sim_threshold=protocol.text_similarity_threshold)
    clip_of_frame = np.repeat(np.arange(len(clips)), [c.num_frames for c in clips])
    tp_clip = np.bincount(clip_of_frame, weights=tp, minlength=len(clips))
    positives = np.array([len(c.gt_labels) for c in clips], np.float64)
    recall = np.divide(tp_clip, positives, out=np.zeros(len(clips)), where=positives > 0)
    return recall, positives


def miou_per_clip(clips: Sequence[_Scored], protocol: IGroundProtocol) -> np.ndarray:
    """GROVE's mIoU per clip: per frame holding both predicted and GT boxes, the mean of the whole
    prediction x GT `compute_iou` matrix; the mean over those frames (0 when there is none)."""
    num_frames = sum(c.num_frames for c in clips)
    frame_mean = np.full(num_frames, np.nan)
    gt_frame, dt_frame = _global_frames(clips, "gt_frame"), _global_frames(clips, "dt_frame")
    gt_boxes = _cat([_iou_boxes(c.gt_xywh, protocol) for c in clips], (0, 4))
    dt_boxes = _cat([_iou_boxes(c.dt_xywh, protocol) for c in clips], (0, 4))
    dt_count = np.bincount(dt_frame, minlength=num_frames)
    gt_count = np.bincount(gt_frame, minlength=num_frames)
    for frames, p_idx, p_ok, g_idx, g_ok in frame_buckets(dt_count, gt_count):
        valid = p_ok[:, :, None] & g_ok[:, None, :]
        iou = np.where(valid, iou_plus1(dt_boxes[p_idx][:, :, None, :], gt_boxes[g_idx][:, None, :, :]), 0.0)
        frame_mean[frames] = iou.sum(axis=(1, 2)) / (dt_count[frames] * gt_count[frames])
    clip_of_frame = np.repeat(np.arange(len(clips)), [c.num_frames for c in clips])
    has = ~np.isnan(frame_mean)
    totals = np.bincount(clip_of_frame[has], weights=frame_mean[has], minlength=len(clips))
    counts = np.bincount(clip_of_frame[has], minlength=len(clips))
    return np.divide(totals, counts, out=np.zeros(len(clips)), where=counts > 0)


def _align(gt: Mapping[str, IGroundClip], predictions: Mapping[str, ClipPrediction], protocol: IGroundProtocol,
           found: list[Problem], progress: Progress | None) -> list[_Scored]:
    """The clips to score, prepared; appends a problem for every clip left out or scored with a warning."""
    invalid = {p.item for p in found if p.severity == "error"}
    zero = protocol.missing_predictions == "zero"
    scored: list[_Scored] = []
    for done, (key, clip) in enumerate(gt.items(), 1):
        pred = predictions.get(key)
        if pred is None and key in invalid:
            continue  # already reported when the prediction file was read
        absent = "missing_prediction" if pred is None else "empty_prediction" if pred.num_frames == 0 else None
        if absent is not None:
            what = "no prediction for this clip" if pred is None else "the prediction has no frame"
            found.append(Problem(key, absent, what + "; " + (
                "scored as an empty prediction (missing_predictions='zero')" if zero
                else "left out, as the official evaluator does"), "warning" if zero else "skipped"))
            if not zero:
                continue
        try:
            scored.append(_prepare(clip, pred, protocol, found))
        except PredictionError as exc:
            found.append(Problem(key, "invalid_prediction", exc.problem))
        if progress and done % 500 == 0:
            progress("prepare", done, len(gt))
    return scored


def _layouts(predictions: Mapping[str, ClipPrediction], scored: Sequence[_Scored]) -> dict[str, int]:
    kinds = [predictions[c.key] for c in scored if c.key in predictions]
    return {"all_query": sum(1 for p in kinds if p.all_query),
            "kept_only_with_probs": sum(1 for p in kinds if not p.all_query and p.probs_temp_objectness is not None),
            "kept_only_without_probs": sum(1 for p in kinds if p.probs_temp_objectness is None)}


def evaluate_iground(
    gt: Mapping[str, IGroundClip],
    predictions: Mapping[str, ClipPrediction],
    embed: EmbedFn | None,
    protocol: IGroundProtocol = OFFICIAL,
    embedding_model: str = "",
    captions: bool = True,
    meteor: MeteorScorer | None = None,
    problems: Sequence[Problem] = (),
    split: str = "test",
    progress: Progress | None = None,
    caption_cache: dict[tuple[str, ...], CaptionScores] | None = None,
) -> EvalReport:
    """Score predictions against GT clips. `embed` maps phrases to vectors (None skips Recall);
    `problems` carries what was found while reading the predictions: errors of GT clips leave them
    out (and count as bad clips); records of clips that are not in the GT only warn.
    `caption_cache`: caption scores by scored clip keys, shared by evaluations of the same predictions
    under other protocols (captions do not depend on the box protocol): read, and filled.
    The report's `clip_statistics` hold every metric's per-clip values (and BLEU/METEOR statistics)."""
    found = [p if p.item in gt else Problem(p.item, "unknown_clip", f"not in the ground truth (and unreadable: {p.message})",
                                            "warning") for p in problems]
    found += [Problem(key, "unknown_clip", "prediction for a clip that is not in the ground truth (ignored, as the "
                                           "official evaluator does)", "warning")
              for key in predictions if key not in gt]
    scored = _align(gt, predictions, protocol, found, progress)

    metrics: dict[str, float] = {}
    per_item: dict[str, dict[str, float]] = {c.key: {} for c in scored}
    keep = np.array([protocol.empty_gt_videos == "include" or len(c.gt_labels) > 0 for c in scored], bool)
    ap = ap50_per_clip(scored, protocol.iou_threshold)
    metrics["AP50"] = mean(ap[keep])
    for c, value in zip(scored, ap):
        per_item[c.key]["AP50"] = float(value)
    if progress:
        progress("AP50", len(scored), len(scored))
    unavailable: dict[str, str] = {}
    caption_info: dict[str, Any] = {}
    keys = [c.key for c in scored]
    statistics = ClipStatistics(keys, {"AP50": (ap, keep)})
    if captions and scored:
        caption_scores = (caption_cache or {}).get(tuple(keys))
        if caption_scores is None:
            caption_scores = score_captions({c.key: [c.caption] for c in scored}, {c.key: c.pred_text for c in scored},
                                            meteor=meteor)
            if caption_cache is not None:
                caption_cache[tuple(keys)] = caption_scores
        metrics.update(caption_scores.corpus)
        statistics.pooled.update(caption_scores.statistics)
        for name in ("ROUGE_L", "CIDEr"):  # means of per-caption scores (CIDEr-D with the split's IDF)
            if name in caption_scores.corpus:
                statistics.means[name] = (np.array([caption_scores.per_item[k][name] for k in keys]), None)
        for key, values in caption_scores.per_item.items():
            per_item[key].update(values)
        unavailable.update(caption_scores.unavailable)
        caption_info = {"tokenizer": caption_scores.tokenizer}
    elif not captions:
        unavailable["captions"] = "not computed (captions=False)"
    miou = miou_per_clip(scored, protocol)
    metrics["mIoU"] = mean(miou[keep])
    statistics.means["mIoU"] = (miou, keep)
    for c, value in zip(scored, miou):
        per_item[c.key]["mIoU"] = float(value)
    if embed is not None:
        recall, _ = recall_per_clip(scored, embed, protocol, progress)
        metrics["Recall"] = mean(recall[keep])
        statistics.means["Recall"] = (recall, keep)
        for c, value in zip(scored, recall):
            per_item[c.key]["Recall"] = float(value)
    else:
        unavailable["Recall"] = "not computed (no phrase embedder)"
    record = {**protocol.to_dict(), "ap": "COCOeval per video, class-agnostic, IoU 0.5, 101 recall points, maxDets 100",
              "objectness_threshold_meaning": (
                  "records as written (filtered at inference)" if protocol.objectness_threshold is None else
                  "all-query records re-filtered from all_bboxes; kept-only records lose the kept boxes at or below it"),
              "record_layouts": _layouts(predictions, scored),
              "embedding_model": embedding_model if embed is not None else "none (Recall not computed)",
              **caption_info}
    return EvalReport("iground", split, metrics, record, num_items=len(gt), num_scored=len(scored),
                      problems=found, unavailable=unavailable, per_item=per_item, clip_statistics=statistics)


def evaluate_iground_protocols(
    gt: Mapping[str, IGroundClip],
    predictions: Mapping[str, ClipPrediction],
    embed: EmbedFn | None,
    protocols: Mapping[str, IGroundProtocol],
    **options: Any,
) -> EvalReport:
    """The same predictions under several protocols side by side: the first protocol's report, the
    others in its `alternatives` (by name), each protocol record labelled with its `preset` name.
    Captions do not depend on the box protocol: they are scored once and reused wherever the scored
    clips are the same. `options` are `evaluate_iground`'s."""
    if not protocols:
        raise ValueError("no protocol to evaluate")
    reports: dict[str, EvalReport] = {}
    caption_cache: dict[tuple[str, ...], CaptionScores] = {}
    for name, protocol in protocols.items():
        report = evaluate_iground(gt, predictions, embed, protocol, caption_cache=caption_cache, **options)
        report.protocol["preset"] = name
        reports[name] = report
    primary, *others = reports.values()
    primary.alternatives = dict(zip(list(reports)[1:], others))
    return primary


def evaluate_iground_files(
    gt_path: str | Path, pred_path: str | Path, split: str | None = "test",
    protocol: IGroundProtocol | Mapping[str, IGroundProtocol] = OFFICIAL, embedding_model: str = "auto",
    captions: bool = True, recall: bool = True, progress: Progress | None = None,
) -> EvalReport:
    """Read GT (official raw pickle or dataset folder) and a prediction file, then `evaluate_iground`
    (one protocol) or `evaluate_iground_protocols` (a mapping of named protocols, the first reported first)."""
    from evaluation.embeddings import load_phrase_embedder

    gt = load_iground_gt(gt_path, split)
    predictions, errors = load_predictions(pred_path)
    problems = [Problem(e.key, "invalid_prediction", e.problem) for e in errors]
    embedder = load_phrase_embedder(embedding_model) if recall else None
    options = dict(embedding_model=embedder.describe() if embedder else "", captions=captions, problems=problems,
                   split=split or "test", progress=progress)
    if isinstance(protocol, IGroundProtocol):
        return evaluate_iground(gt, predictions, embedder, protocol, **options)
    return evaluate_iground_protocols(gt, predictions, embedder, protocol, **options)

