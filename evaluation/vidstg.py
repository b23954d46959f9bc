"""VidSTG spatio-temporal grounding: GROVE's msIoU and TubeDETR's m_tIoU / m_vIoU / vIoU@R (metrics_spec.md 1).

Two protocols, each exactly as its reference script computes it, averaged per sentence type (qtype):
- "grove" (`eval_vidstg.py`, the msIoU of GROVE's tables): frames range(tube_start, tube_end - 1,
  int(fps / 5)); per sentence the mean IoU of the predicted box with the GT box over those frames
  (an all-zero predicted box counts as IoU 0); msIoU@R = 1[that mean > R].
- "tubedetr" (`datasets/vidstg_eval.py`): frames sampled at 5 fps from [start_frame, end_frame) of
  the clip (keep f when int(f * 5 / fps) grows), then capped at 200 by `ids[j * L // 200]`; the
  predicted interval `sted` = [ps, pe) and the GT tube [gs, ge) are half-open;
  tIoU = inter / (len_gt + len_pred - inter) in frames; vIoU = sum of IoU over sampled frames in the
  intersection / number of sampled frames in the hull (at least 1); gt_vIoU = mean IoU over sampled
  tube frames; vIoU@R = 1[vIoU > R] (strict).
Box IoU is torchvision's (xyxy, no +1). GT comes from the TubeDETR-style JSON (`videos` and
`trajectories`, boxes xywh); sentences are keyed by `video_id` as a string.

Predictions (JSON or pickle), per sentence: {"frame_ids": [...], "boxes": [box per frame], "sted": [s, e]}
where a box is [x1, y1, x2, y2] (or a list holding one). `sted` is needed only for tubedetr's
temporal metrics. A sentence missing from the predictions, or missing a needed frame, is reported
by name and left out; the others are still scored.

`evaluate_vidstg_grounding` adds temporal grounding of the query to GROVE's msIoU: the predicted
interval in seconds (`temporal: {start_s, end_s}` of a prediction) against the GT tube
[tube_start, tube_end) / fps, scored as temporal sentence grounding is (evaluation.temporal:
R1@0.3/0.5/0.7 = share with tIoU >= m, and mIoU; a sentence without an interval scores 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from evaluation.iou import iou_xyxy
from evaluation.report import EvalReport, Problem
from grove.data.vidstg import read_annotation_json, tube_frame_ids

THRESHOLDS = (0.3, 0.5)
Protocol = Literal["grove", "tubedetr"]


@dataclass
class VidSTGSentence:
    key: str
    qtype: str
    fps: float
    start_frame: int
    end_frame: int
    tube_start: int
    tube_end: int
    boxes: dict[int, np.ndarray]  # GT box (xyxy) per native frame of the tube


def load_vidstg_gt(path: str | Path) -> dict[str, VidSTGSentence]:
    """A TubeDETR-style VidSTG annotation file -> sentences keyed by str(video_id)."""
    data = read_annotation_json(path)
    try:
        videos, trajectories = data["videos"], data["trajectories"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a VidSTG annotation file with 'videos' and 'trajectories' ({exc})") from exc
    sentences: dict[str, VidSTGSentence] = {}
    for video in videos:
        try:
            key = str(video["video_id"])
            track = trajectories[str(video["original_video_id"])][str(video["target_id"])]
            boxes = {int(frame): np.array([b[0], b[1], b[0] + b[2], b[1] + b[3]], np.float64)
                     for frame, entry in track.items() for b in [entry["bbox"]]}
            sentences[key] = VidSTGSentence(
                key, str(video["qtype"]), float(video["fps"]), int(video.get("start_frame", video["tube_start_frame"])),
                int(video.get("end_frame", video["tube_end_frame"])), int(video["tube_start_frame"]),
                int(video["tube_end_frame"]), boxes)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ValueError(f"{path}: video entry {video.get('video_id', '?')!r} is malformed ({exc!r})") from exc
    return sentences


def grove_frame_ids(sentence: VidSTGSentence) -> list[int]:
    """GROVE's frames: range(tube_start, tube_end - 1, int(fps / 5)) (step at least 1)."""
    return tube_frame_ids(sentence.fps, sentence.tube_start, sentence.tube_end)


def tubedetr_frame_ids(sentence: VidSTGSentence, fps: int = 5, max_frames: int = 200) -> list[int]:
    """TubeDETR's frames: 5 fps over [start_frame, end_frame), capped at `max_frames`."""
    rate = fps / sentence.fps
    if rate > 1:
        raise ValueError(f"sentence {sentence.key}: video fps {sentence.fps} is below the {fps} fps sampling rate")
    ids = [sentence.start_frame]
    for frame in range(sentence.start_frame, sentence.end_frame):
        if int(ids[-1] * rate) < int(frame * rate):
            ids.append(frame)
    if len(ids) > max_frames:
        ids = [ids[(j * len(ids)) // max_frames] for j in range(max_frames)]
    return ids


def temporal_iou_frames(gt: tuple[int, int], pred: tuple[float, float]) -> float:
    """TubeDETR's tIoU of half-open frame intervals."""
    max_start, min_end = max(gt[0], pred[0]), min(gt[1], pred[1])
    if min_end <= max_start:
        return 0.0
    inter = min_end - max_start
    return inter / ((gt[1] - gt[0]) + (pred[1] - pred[0]) - inter)


class GroundTruthGap(ValueError):
    """The GT trajectory has no box on a frame the protocol evaluates (the reference scripts crash there)."""


def _iou_on(sentence: VidSTGSentence, frame: int, predicted: Mapping[int, np.ndarray]) -> float:
    if frame not in sentence.boxes:
        raise GroundTruthGap(f"the ground-truth trajectory has no box on frame {frame}")
    return float(iou_xyxy(predicted[frame], sentence.boxes[frame]))


def _prediction_boxes(record: Any) -> tuple[dict[int, np.ndarray], tuple[float, float] | None]:
    if not isinstance(record, Mapping) or "frame_ids" not in record or "boxes" not in record:
        raise ValueError("prediction must hold 'frame_ids' and 'boxes'")
    frame_ids, boxes = list(record["frame_ids"]), list(record["boxes"])
    if len(frame_ids) != len(boxes):
        raise ValueError(f"{len(frame_ids)} frame_ids but {len(boxes)} boxes")
    out: dict[int, np.ndarray] = {}
    for frame, box in zip(frame_ids, boxes):
        array = np.asarray(box, np.float64).reshape(-1)
        if array.size == 0:
            array = np.zeros(4)  # an empty prediction scores IoU 0
        if array.size < 4 or not np.isfinite(array).all():
            raise ValueError(f"frame {frame}: box {box!r} is not 4 finite numbers")
        out[int(frame)] = array[:4]  # the first box, as both reference scripts take it
    sted = record.get("sted")
    if sted is not None:
        if len(sted) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in sted):
            raise ValueError(f"sted {sted!r} is not [start, end]")
        sted = (float(sted[0]), float(sted[1]))
    return out, sted


def _needed(frames: Sequence[int], predicted: Mapping[int, np.ndarray]) -> None:
    missing = [f for f in frames if f not in predicted]
    if missing:
        raise ValueError(f"no predicted box for frame(s) {missing[:5]}" + (" ..." if len(missing) > 5 else ""))


def _grove_scores(sentence: VidSTGSentence, predicted: Mapping[int, np.ndarray]) -> dict[str, float]:
    frames = grove_frame_ids(sentence)
    _needed(frames, predicted)
    total = sum(_iou_on(sentence, f, predicted) if predicted[f].any() else 0.0 for f in frames)
    value = total / max(len(frames), 1)
    return {"msIoU": value, **{f"msIoU@{r}": float(value > r) for r in THRESHOLDS}}


def _tubedetr_scores(sentence: VidSTGSentence, predicted: Mapping[int, np.ndarray],
                     sted: tuple[float, float] | None) -> dict[str, float]:
    frames = tubedetr_frame_ids(sentence)
    tube = [f for f in frames if sentence.tube_start <= f < sentence.tube_end]
    _needed(tube, predicted)
    ious = {f: _iou_on(sentence, f, predicted) for f in tube}
    gt_viou = sum(ious.values()) / max(len(tube), 1)
    scores = {"gt_vIoU": gt_viou, **{f"gt_vIoU@{r}": float(gt_viou > r) for r in THRESHOLDS}}
    if sted is not None:
        gt_interval = (sentence.tube_start, sentence.tube_end)
        union = [f for f in frames if min(gt_interval[0], sted[0]) <= f < max(gt_interval[1], sted[1])]
        inter = {f for f in frames if max(gt_interval[0], sted[0]) <= f < min(gt_interval[1], sted[1])}
        viou = sum(v for f, v in ious.items() if f in inter) / max(len(union), 1)
        scores.update({"tIoU": temporal_iou_frames(gt_interval, sted), "vIoU": viou,
                       **{f"vIoU@{r}": float(viou > r) for r in THRESHOLDS}})
    return scores


# output names: TubeDETR's per-sentence keys averaged into the papers' m_tIoU / m_vIoU
_OUTPUT_NAMES = {"tIoU": "m_tIoU", "vIoU": "m_vIoU"}


def evaluate_vidstg(
    gt: Mapping[str, VidSTGSentence], predictions: Mapping[str, Any], protocol: Protocol = "grove",
    split: str = "test",
) -> EvalReport:
    """Per-qtype means of the chosen protocol's per-sentence metrics; bad sentences are reported and left out."""
    if protocol not in ("grove", "tubedetr"):
        raise ValueError(f"unknown VidSTG protocol {protocol!r}: 'grove' or 'tubedetr'")
    problems: list[Problem] = [Problem(str(k), "unknown_sentence", "prediction for a sentence not in the ground truth")
                               for k in predictions if str(k) not in gt]
    by_key = {str(k): v for k, v in predictions.items()}
    per_item: dict[str, dict[str, float]] = {}
    qtypes: dict[str, str] = {}
    for key, sentence in gt.items():
        if key not in by_key:
            problems.append(Problem(key, "missing_prediction", "no prediction for this sentence"))
            continue
        try:
            predicted, sted = _prediction_boxes(by_key[key])
            if protocol == "grove":
                per_item[key] = _grove_scores(sentence, predicted)
            else:
                if sted is None:
                    problems.append(Problem(key, "missing_sted", "no 'sted' interval: only gt_vIoU is scored", "warning"))
                per_item[key] = _tubedetr_scores(sentence, predicted, sted)
            qtypes[key] = sentence.qtype
        except GroundTruthGap as exc:
            problems.append(Problem(key, "ground_truth_gap", str(exc)))
        except ValueError as exc:
            problems.append(Problem(key, "invalid_prediction", str(exc)))
    metrics: dict[str, float] = {}
    for qtype in sorted(set(qtypes.values())):
        members = [per_item[k] for k, q in qtypes.items() if q == qtype]
        for name in members[0]:
            values = [m[name] for m in members if name in m]
            metrics[f"{qtype}_{_OUTPUT_NAMES.get(name, name)}"] = float(np.mean(values))
    record = {"protocol": protocol, "box_iou": "xyxy, no +1 (torchvision)", "thresholds": list(THRESHOLDS),
              "threshold_test": "> (strict)", "qtype_from": "ground truth",
              **({"frames": "range(tube_start, tube_end - 1, int(fps / 5))"} if protocol == "grove" else
                 {"frames": "5 fps from [start_frame, end_frame), at most 200", "intervals": "half-open [start, end)"})}
    return EvalReport("vidstg", split, metrics, record, num_items=len(gt), num_scored=len(per_item),
                      problems=problems, per_item=per_item)


def temporal_ground_truth(gt: Mapping[str, VidSTGSentence]) -> dict[str, dict[str, Any]]:
    """Each sentence's tube in seconds, [tube_start, tube_end) / fps, and its video segment's duration."""
    return {key: {"timestamp": [s.tube_start / s.fps, s.tube_end / s.fps], "duration": (s.end_frame - s.start_frame) / s.fps}
            for key, s in gt.items()}


def predicted_intervals(predictions: Mapping[str, Any]) -> dict[str, list[float]]:
    """[start_s, end_s] of each prediction that carries a temporal grounding."""
    out = {}
    for key, record in predictions.items():
        temporal = record.get("temporal") if isinstance(record, Mapping) else None
        if isinstance(temporal, Mapping) and "start_s" in temporal and "end_s" in temporal:
            out[str(key)] = [temporal["start_s"], temporal["end_s"]]
    return out


def evaluate_vidstg_grounding(
    gt: Mapping[str, VidSTGSentence], predictions: Mapping[str, Any], split: str = "test", temporal: bool = True,
) -> EvalReport:
    """GROVE's msIoU per qtype (protocol "grove"; `msIoU`: over all sentences) and, with `temporal`, R1@m /
    mIoU of the predicted intervals."""
    from evaluation.temporal import grounding_metrics

    spatial = evaluate_vidstg(gt, predictions, "grove", split)
    metrics = dict(spatial.metrics)
    if spatial.per_item:  # one number for the stand-in's tables (the paper reports each qtype)
        metrics["msIoU"] = float(np.mean([values["msIoU"] for values in spatial.per_item.values()]))
    per_item = {key: dict(values) for key, values in spatial.per_item.items()}
    problems = list(spatial.problems)
    protocol: dict[str, Any] = {"preset": "official", "spatial": spatial.protocol}
    if temporal:
        found = grounding_metrics(temporal_ground_truth(gt), predicted_intervals(predictions), split=split, benchmark="vidstg")
        metrics.update(found.metrics)
        for key, values in found.per_item.items():
            per_item.setdefault(key, {}).update(values)
        problems += found.problems
        protocol["temporal"] = {**found.protocol, "ground_truth": "[tube_start_frame, tube_end_frame) / fps",
                                "prediction": "longest run of frames with objectness above the threshold"}
    report = EvalReport("vidstg", split, metrics, protocol, num_items=len(gt), num_scored=spatial.num_scored,
                        problems=problems, per_item=per_item)
    report.clip_statistics = sentence_statistics(report, {key: gt[key].qtype for key in per_item})
    return report


def sentence_statistics(report: EvalReport, qtypes: Mapping[str, str]) -> Any:
    """Every metric of `evaluate_vidstg_grounding` as a mean of per-sentence values (evaluation.bootstrap):
    msIoU and msIoU@R over all sentences or those of one qtype, R1@m = mean of 1[tIoU >= m], mIoU = mean tIoU."""
    from evaluation.bootstrap import ClipStatistics

    keys = sorted(report.per_item)
    items = [report.per_item[key] for key in keys]
    spatial = np.array(["msIoU" in item for item in items])
    means: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for name in report.metrics:
        qtype, _, base = name.partition("_")
        if base.startswith("msIoU") and qtype in set(qtypes.values()):
            values = np.array([item.get(base, 0.0) for item in items])
            means[name] = (values, spatial & np.array([qtypes.get(k) == qtype for k in keys]))
        elif name == "msIoU":
            means[name] = (np.array([item.get("msIoU", 0.0) for item in items]), spatial)
        elif name.startswith("R1@") or name == "mIoU":
            tiou = np.array([item.get("tIoU", 0.0) for item in items])
            timed = np.array(["tIoU" in item for item in items])
            means[name] = ((tiou >= float(name[3:])).astype(np.float64) if name != "mIoU" else tiou, timed)
    return ClipStatistics(keys, means)
