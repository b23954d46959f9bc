"""iGround grounded video caption generation: METEOR/CIDEr, AP50 and Recall as GROVE's `eval_iground.py` computes them.

The official evaluator (grove_spec.md 4.2, metrics_spec.md 7), run `--evaluation_mode per_video`:
- a clip is scored only if it has a non-empty prediction; if it has one more predicted frame than GT
  frames, the last is dropped;
- GT boxes (raw pickle) are int-truncated; predicted boxes are clamped to the frame, int-truncated,
  and written with score 1.0; only boxes zipped with a label are written;
- AP50: COCOeval per video, one category, every frame an image; AP at IoU 0.5 averaged over videos;
- Recall: per frame, greedy over the GT x prediction IoU matrix (global argmax; stop at the first
  pair with IoU < 0.5 or phrase similarity < 0.5), TP summed over the video's frames / its GT boxes,
  averaged over videos;
- captions: pycocoevalcap over the scored clips, one GT caption each.

Its quirks are named protocol options (`IGroundProtocol`), recorded in the output; `OFFICIAL` (the
default) reproduces the official numbers, `CORRECTED` fixes every one of them:
- `pairing`: GROVE writes `pred_bboxes[t]` for every query but `pred_labels[t]` only for the queries
  kept by objectness, and the evaluator zips the two, so the k kept labels go with the first k boxes
  ("official"); "by_query" keeps box j with phrase j.
- `ap_scores`: every box scores 1.0, so AP depends on COCOeval's image order ("constant"); or each
  box's temporal objectness ("objectness").
- `recall_boxes`: recall IoU is computed on COCO xywh boxes read as corners ("xywh_as_xyxy"), or
  on the xyxy boxes ("xyxy"); both with the +1-pixel areas of `compute_iou`.
- `empty_gt_videos`: a clip without GT boxes enters the means with COCOeval's AP of -1 and recall 0
  ("include"), or is left out of both ("exclude").
- `missing_predictions`: a GT clip without a usable prediction is left out ("skip", official), or
  scored as an empty prediction ("zero").
The temporal objectness threshold (0.5; 0 keeps every box) re-derives each frame's labels from
`probs_temp_objectness` when the prediction has them.
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
from evaluation.captions import MeteorScorer, score_captions
from evaluation.embeddings import EmbedFn, unit_rows
from evaluation.iou import iou_plus1
from evaluation.report import EvalReport, Problem, mean
from grove.data.boxes import boxes_by_key
from grove.data.predictions import ClipPrediction, PredictionError, load_predictions
from grove.data.schema import SchemaError

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class IGroundProtocol:
    objectness_threshold: float = 0.5
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


OFFICIAL = IGroundProtocol()
CORRECTED = IGroundProtocol(pairing="by_query", ap_scores="objectness", recall_boxes="xyxy", empty_gt_videos="exclude")
PRESETS = {"official": OFFICIAL, "corrected": CORRECTED}


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


def _frame_detections(
    key: str, t: int, pred: ClipPrediction, protocol: IGroundProtocol
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(boxes, labels, scores) one frame contributes, per the pairing option and the objectness threshold."""
    boxes = pred.pred_bboxes[t]
    if pred.probs_temp_objectness is None:
        labels = pred.pred_labels[t]
        if len(labels) > len(boxes):
            raise PredictionError(key, f"pred_labels[{t}] has {len(labels)} labels for {len(boxes)} boxes")
        return boxes[:len(labels)], list(labels), np.ones(len(labels))
    probs, phrases = pred.probs_temp_objectness[t], pred.pred_phrases
    kept = np.flatnonzero(probs[:len(phrases)] > protocol.objectness_threshold)
    rows = np.arange(len(kept)) if protocol.pairing == "official" else kept
    return boxes[rows], [phrases[j] for j in kept], probs[rows]


def _clip_detections(
    pred: ClipPrediction, num_frames: int, protocol: IGroundProtocol
) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """`_frame_detections` for every frame at once, when each frame has the same number of queries."""
    boxes = np.stack(pred.pred_bboxes[:num_frames])  # [T, Q, 4]
    probs = np.stack(pred.probs_temp_objectness[:num_frames])  # [T, Q]
    kept = np.zeros(probs.shape, bool)
    width = min(probs.shape[1], len(pred.pred_phrases))
    kept[:, :width] = probs[:, :width] > protocol.objectness_threshold
    frame_of_label, query = np.nonzero(kept)
    labels = [pred.pred_phrases[j] for j in query]
    if protocol.pairing == "official":  # the k kept labels of a frame go with its first k boxes
        kept = np.arange(probs.shape[1])[None, :] < kept.sum(axis=1, keepdims=True)
    return boxes[kept].reshape(-1, 4), labels, probs[kept], np.nonzero(kept)[0]


def _outside(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes that miss the frame entirely or are inverted (clamping turns them into empty boxes)."""
    return ((boxes[:, 2] <= 0) | (boxes[:, 3] <= 0) | (boxes[:, 0] >= width) | (boxes[:, 1] >= height)
            | (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))


def _prepare(gt: IGroundClip, pred: ClipPrediction | None, protocol: IGroundProtocol,
             problems: list[Problem]) -> _Scored:
    """Align a prediction with its GT clip the way the official evaluator does; problems name the clip."""
    num_frames = gt.num_frames
    boxes, frames, labels, scores = [np.zeros((0, 4))], [np.zeros(0, np.int64)], [], [np.zeros(0)]
    if pred is not None:
        frame_count = pred.num_frames - 1 if pred.num_frames == num_frames + 1 else pred.num_frames
        if frame_count != num_frames:
            raise PredictionError(gt.key, f"{pred.num_frames} predicted frames for {num_frames} GT frames")
        uniform = pred.probs_temp_objectness is not None and len({len(b) for b in pred.pred_bboxes}) == 1
        if uniform:
            frame_boxes, frame_labels, frame_scores, frame_of_box = _clip_detections(pred, num_frames, protocol)
            boxes.append(frame_boxes)
            frames.append(frame_of_box)
            labels += frame_labels
            scores.append(frame_scores)
        for t in range(0 if uniform else num_frames):
            frame_boxes, frame_labels, frame_scores = _frame_detections(gt.key, t, pred, protocol)
            boxes.append(frame_boxes)
            frames.append(np.full(len(frame_boxes), t, np.int64))
            labels += frame_labels
            scores.append(frame_scores)
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


def recall_per_clip(clips: Sequence[_Scored], embed: EmbedFn, protocol: IGroundProtocol,
                    progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(recall per clip, GT box count per clip). Each distinct phrase is embedded once."""
    phrases = sorted({p for c in clips for p in c.gt_labels} | {p for c in clips for p in c.dt_labels})
    unit = unit_rows(_embed_in_chunks(embed, phrases, progress)) if phrases else np.zeros((0, 1))
    index = {p: i for i, p in enumerate(phrases)}

    def boxes(xywh: np.ndarray) -> np.ndarray:
        if protocol.recall_boxes == "xywh_as_xyxy":
            return xywh
        return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)

    tp = greedy_recall_tp(
        gt_boxes=_cat([boxes(c.gt_xywh) for c in clips], (0, 4)), gt_frame=_global_frames(clips, "gt_frame"),
        gt_phrase=np.array([index[p] for c in clips for p in c.gt_labels], np.int64),
        dt_boxes=_cat([boxes(c.dt_xywh) for c in clips], (0, 4)), dt_frame=_global_frames(clips, "dt_frame"),
        dt_phrase=np.array([index[p] for c in clips for p in c.dt_labels], np.int64),
        num_frames=sum(c.num_frames for c in clips), unit_embeddings=unit,
        iou_threshold=protocol.iou_threshold, sim_threshold=protocol.text_similarity_threshold)
    clip_of_frame = np.repeat(np.arange(len(clips)), [c.num_frames for c in clips])
    tp_clip = np.bincount(clip_of_frame, weights=tp, minlength=len(clips))
    positives = np.array([len(c.gt_labels) for c in clips], np.float64)
    recall = np.divide(tp_clip, positives, out=np.zeros(len(clips)), where=positives > 0)
    return recall, positives


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
        if pred is None:
            found.append(Problem(key, "missing_prediction", "no prediction for this clip; " + (
                "scored as empty" if zero else "left out, as the official evaluator does"), "warning" if zero else "error"))
            if not zero:
                continue
        try:
            scored.append(_prepare(clip, pred, protocol, found))
        except PredictionError as exc:
            found.append(Problem(key, "invalid_prediction", exc.problem))
        if progress and done % 500 == 0:
            progress("prepare", done, len(gt))
    return scored


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
) -> EvalReport:
    """Score predictions against GT clips. `embed` maps phrases to vectors (None skips Recall);
    `problems` carries what was found while reading the predictions (they count as bad clips)."""
    found = list(problems)
    found += [Problem(key, "unknown_clip", "prediction for a clip that is not in the ground truth")
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
    if embed is not None:
        recall, _ = recall_per_clip(scored, embed, protocol, progress)
        metrics["Recall"] = mean(recall[keep])
        for c, value in zip(scored, recall):
            per_item[c.key]["Recall"] = float(value)
    unavailable: dict[str, str] = {} if embed is not None else {"Recall": "not computed (no phrase embedder)"}
    caption_info: dict[str, Any] = {}
    if captions and scored:
        caption_scores = score_captions({c.key: [c.caption] for c in scored}, {c.key: c.pred_text for c in scored},
                                        meteor=meteor)
        metrics.update(caption_scores.corpus)
        for key, values in caption_scores.per_item.items():
            per_item[key].update(values)
        unavailable.update(caption_scores.unavailable)
        caption_info = {"tokenizer": caption_scores.tokenizer}
    elif not captions:
        unavailable["captions"] = "not computed (captions=False)"
    with_probs = sum(1 for c in scored if c.key in predictions and predictions[c.key].probs_temp_objectness is not None)
    record = {**protocol.to_dict(), "ap": "COCOeval per video, class-agnostic, IoU 0.5, 101 recall points, maxDets 100",
              "clips_thresholded": with_probs,  # the others have no probs_temp_objectness: pred_labels used as given
              "embedding_model": embedding_model if embed is not None else "none (Recall not computed)",
              **caption_info}
    return EvalReport("iground", split, metrics, record, num_items=len(gt), num_scored=len(scored),
                      problems=found, unavailable=unavailable, per_item=per_item)


def evaluate_iground_files(
    gt_path: str | Path, pred_path: str | Path, split: str | None = "test",
    protocol: IGroundProtocol = OFFICIAL, embedding_model: str = "auto", captions: bool = True,
    recall: bool = True, progress: Progress | None = None,
) -> EvalReport:
    """Read GT (official raw pickle or dataset folder) and a prediction file, then `evaluate_iground`."""
    from evaluation.embeddings import load_phrase_embedder

    gt = load_iground_gt(gt_path, split)
    predictions, errors = load_predictions(pred_path)
    problems = [Problem(e.key, "invalid_prediction", e.problem) for e in errors]
    embedder = load_phrase_embedder(embedding_model) if recall else None
    return evaluate_iground(gt, predictions, embedder, protocol, embedder.name if embedder else "", captions,
                            problems=problems, split=split or "test", progress=progress)

