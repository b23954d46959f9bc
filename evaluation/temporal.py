"""Temporal grounding metrics for the peer benchmarks, and parsing of timestamps from generated text.

Grounded-VideoLLM released no evaluation code (metrics_spec.md 3); the protocols here are those of
the repos it follows:
- temporal sentence grounding (Charades-STA, ActivityNet-Grounding), VTimeLLM/TimeChat: tIoU of the
  first predicted interval with the GT; R1@m = fraction with tIoU >= m (m in 0.3/0.5/0.7);
  mIoU = mean tIoU; a query without a parsable prediction scores 0 and stays in the denominator;
- NExT-GQA (`eval_ground.py`): per question the max IoU and max IoP (intersection over the
  *prediction's* length) over its GT segments; a point prediction has IoU 0 and IoP 1 inside a
  segment; IoU/IoP@t use >=; Acc@GQA = correct answer AND IoP >= 0.5; questions without a grounding
  prediction are skipped (left out of N), as the reference does.
Grounded-VideoLLM writes times as tokens `<0>`..`<300>`: token k is time duration * k / 300
(encoding floors: `<min(int(300 t / d), 300)>`).
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from evaluation.iou import temporal_iou
from evaluation.report import EvalReport, Problem

NUM_TEMPORAL_TOKENS = 300
GROUNDING_THRESHOLDS = (0.3, 0.5, 0.7)
NEXTGQA_THRESHOLDS = (0.3, 0.5)

_TOKEN = re.compile(r"<(\d+)>")
_CLOCK = re.compile(r"\b(?:(\d+):)?(\d{1,2}):(\d{2}(?:\.\d+)?)\b")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?")

Interval = tuple[float, float]


def encode_time(seconds: float, duration: float, num_tokens: int = NUM_TEMPORAL_TOKENS) -> str:
    """Grounded-VideoLLM's training encoding of a time: `<min(int(num_tokens * t / d), num_tokens)>`."""
    return f"<{min(int(num_tokens * seconds / duration), num_tokens)}>"


def parse_timestamps(text: str, duration: float | None = None, num_tokens: int = NUM_TEMPORAL_TOKENS) -> list[float]:
    """Times (seconds) mentioned in generated text, in order of appearance.

    Temporal tokens `<k>` (0 <= k <= num_tokens; needs `duration`) take precedence; otherwise clock
    times ("1:05", "0:01:05.5"), otherwise plain numbers ("from 14.20 seconds to 25.09 seconds").
    """
    tokens = [int(k) for k in _TOKEN.findall(text) if int(k) <= num_tokens]
    if tokens:
        if duration is None:
            raise ValueError("temporal tokens <k> need the video duration to be decoded")
        return [duration * k / num_tokens for k in tokens]
    clocks = _CLOCK.findall(text)
    if clocks:
        return [int(h or 0) * 3600 + int(m) * 60 + float(s) for h, m, s in clocks]
    return [float(n) for n in _NUMBER.findall(_TOKEN.sub(" ", text))]


def parse_interval(text: str, duration: float | None = None, num_tokens: int = NUM_TEMPORAL_TOKENS) -> Interval | None:
    """The first two times in `text`, sorted (start <= end); None when fewer than two parse."""
    try:
        times = parse_timestamps(text, duration, num_tokens)
    except ValueError:
        return None
    if len(times) < 2:
        return None
    start, end = times[0], times[1]
    return (min(start, end), max(start, end))


def _as_interval(value: Any, duration: float | None) -> Interval | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_interval(value, duration)
    values = list(value)
    if len(values) != 2 or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in values):
        return None
    return (float(min(values)), float(max(values)))


def grounding_metrics(
    gt: Mapping[str, Mapping[str, Any]], predictions: Mapping[str, Any],
    thresholds: Sequence[float] = GROUNDING_THRESHOLDS, split: str = "test", benchmark: str = "grounding",
) -> EvalReport:
    """R1@m and mIoU. `gt[q] = {"timestamp": [s, e], "duration": d}`; `predictions[q]` is [s, e] or the
    generated text (parsed with `parse_interval`, temporal tokens decoded with the GT duration)."""
    problems: list[Problem] = [Problem(q, "unknown_query", "prediction for a query not in the ground truth", "warning")
                               for q in predictions if q not in gt]
    ious: dict[str, float] = {}
    for query, target in gt.items():
        interval = _as_interval(predictions.get(query), target.get("duration"))
        if interval is None:
            why = "no prediction" if query not in predictions else f"no interval in {predictions[query]!r}"
            problems.append(Problem(query, "unparsed_prediction", f"{why}; scored as IoU 0", "warning"))
            ious[query] = 0.0
            continue
        ious[query] = temporal_iou(tuple(target["timestamp"]), interval)
    values = np.array(list(ious.values()))
    metrics = {f"R1@{m}": float(np.mean(values >= m)) if len(values) else 0.0 for m in thresholds}
    metrics["mIoU"] = float(np.mean(values)) if len(values) else 0.0
    protocol = {"iou": "inter / hull (seconds)", "threshold_test": ">=", "unparsed": "IoU 0, kept in N",
                "timestamps": f"<k> tokens -> duration * k / {NUM_TEMPORAL_TOKENS}; else clock times; else numbers"}
    return EvalReport(benchmark, split, metrics, protocol, num_items=len(gt), num_scored=len(gt), problems=problems,
                      per_item={q: {"tIoU": v} for q, v in ious.items()})


def nextgqa_iou_iop(segment: Sequence[float], span: Sequence[float]) -> tuple[float, float]:
    """NExT-GQA `get_tIoU(loc, span)`: IoU over the hull and IoP over the predicted span (may be negative)."""
    if span[0] == span[-1]:
        return (0.0, 1.0) if segment[0] <= span[0] <= segment[1] else (0.0, 0.0)
    hull = (min(segment[0], span[0]), max(segment[-1], span[-1]))
    inter = min(segment[-1], span[-1]) - max(segment[0], span[0])
    iou = inter / (hull[1] - hull[0]) if hull[1] > hull[0] else 0.0
    iop = inter / (span[-1] - span[0]) if span[-1] > span[0] else 0.0
    return iou, iop


def nextgqa_metrics(
    gt: Mapping[str, Mapping[str, Any]], grounding: Mapping[str, Any], answers: Mapping[str, Mapping[str, Any]] | None,
    split: str = "test",
) -> EvalReport:
    """Acc@GQA, mIoP, IoP@0.3/0.5, mIoU, IoU@0.3/0.5. `gt` is gsub_{split}.json ({vid: {duration,
    location: {qid: [[s, e], ...]}}}); `grounding["{vid}_{qid}"]` = [s, e] in seconds; `answers["{vid}_{qid}"]`
    = {"answer", "prediction"} (None: Acc@GQA is not computed)."""
    problems: list[Problem] = []
    per_item: dict[str, dict[str, float]] = {}
    total = 0
    for vid, anno in gt.items():
        for qid, segments in anno["location"].items():
            total += 1
            key = f"{vid}_{qid}"
            if key not in grounding:
                continue  # the reference skips questions without a grounding prediction
            span = _as_interval(grounding[key], anno.get("duration"))
            if span is None:
                problems.append(Problem(key, "invalid_prediction", f"grounding {grounding[key]!r} is not [start, end]"))
                continue
            best_iou = best_iop = 0.0
            for segment in segments:
                iou, iop = nextgqa_iou_iop(segment, span)
                best_iou, best_iop = max(best_iou, iou), max(best_iop, iop)
            item = {"IoU": best_iou, "IoP": best_iop}
            if answers is not None:
                answer = answers.get(key)
                if answer is None or "answer" not in answer or "prediction" not in answer:
                    problems.append(Problem(key, "missing_answer", "no QA prediction; counted as wrong", "warning"))
                    item["correct"] = 0.0
                else:
                    item["correct"] = float(answer["answer"] == answer["prediction"])
            per_item[key] = item
    n = len(per_item)
    iou = np.array([v["IoU"] for v in per_item.values()])
    iop = np.array([v["IoP"] for v in per_item.values()])
    metrics: dict[str, float] = {}
    unavailable = {}
    if answers is not None:
        correct = np.array([v["correct"] for v in per_item.values()])
        metrics["Acc@GQA"] = float(np.mean((correct == 1) & (iop >= 0.5))) if n else 0.0
    else:
        unavailable["Acc@GQA"] = "no QA predictions given"
    metrics["mIoP"] = float(np.mean(iop)) if n else 0.0
    metrics.update({f"IoP@{t}": float(np.mean(iop >= t)) if n else 0.0 for t in NEXTGQA_THRESHOLDS})
    metrics["mIoU"] = float(np.mean(iou)) if n else 0.0
    metrics.update({f"IoU@{t}": float(np.mean(iou >= t)) if n else 0.0 for t in NEXTGQA_THRESHOLDS})
    protocol = {"iop": "inter / predicted length; point prediction: IoP 1 inside a segment, IoU 0",
                "threshold_test": ">=", "unpredicted_questions": "skipped (not in N), as eval_ground.py"}
    return EvalReport("nextgqa", split, metrics, protocol, num_items=total, num_scored=n, problems=problems,
                      unavailable=unavailable, per_item=per_item)
