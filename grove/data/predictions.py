"""The official GROVE prediction layout: what inference writes and the iGround evaluator reads.

A prediction file is a dict keyed `{video_id}_{clip_id}` (the GT clip key), pickle or JSON. Each
record, as GROVE's `infer_iground.py` writes it (reference/official_interop.md):

    pred_bboxes            list over the clip's 5 fps frames; frame t is a [K_t, 4] array of the xyxy
                           boxes (original pixels) KEPT by the temporal objectness threshold, in query
                           order: the official model filters them by sigmoid(objectness) > threshold
                           inside its inference branch
    pred_labels            list over frames; frame t is `[phrases[i] for i, kept in enumerate(kept_t)
                           if kept and i < len(phrases)]`, so it has K_t labels whenever every [DET]
                           query has a phrase (fewer when the answer has more [DET] than phrases)
    pred_phrases           the phrases parsed from the generated answer (`<p>(.*?)</p>`, stripped)
    pred_text              the caption, tags and [DET] removed (see `clean_answer`)
    pred_text_tagged       the caption with its <p> tags, [DET] removed (optional)
    probs_temp_objectness  list over frames; frame t is a [Q] array of sigmoid objectness, one value
                           per [DET] query (all Q of them, not only the K_t kept) (optional)

The official evaluator zips `pred_bboxes[t]` with `pred_labels[t]`. Since the kept boxes are in query
order and the labels are the kept queries' phrases in query order, that zip pairs each kept box with
its own query's phrase.

Project extensions (ignored by the official evaluator, optional):

    all_bboxes             list over frames; frame t is a [Q, 4] array: EVERY query's box, kept or
                           not (what `grove infer` computes before filtering), aligned with
                           `probs_temp_objectness[t]`
    objectness_threshold   the threshold the record was filtered with at inference

A record with `all_bboxes` and probabilities is "all-query": an evaluator can re-filter it at any
threshold. Without them it is "kept-only" (every record `infer_iground.py` writes): the dropped
queries' boxes are gone. `kept_queries` recovers which queries a kept-only frame kept.
Pickles are read with the restricted unpickler (numpy arrays allowed); writes are atomic.
(Records of grove before this layout held every query's box in `pred_bboxes`; such files must be
written again: they read as kept-only records whose labels do not follow their boxes.)
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from grove.data.safe_pickle import safe_load
from grove.io import atomic_path, atomic_write_text

REQUIRED_FIELDS = ("pred_bboxes", "pred_labels", "pred_text")
OPTIONAL_FIELDS = ("pred_phrases", "pred_text_tagged", "probs_temp_objectness", "all_bboxes", "objectness_threshold")
PICKLE_SUFFIXES = (".pkl", ".pickle")


class PredictionError(ValueError):
    """One clip's prediction record is malformed; `key` names the clip."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"clip {key!r}: {problem}")
        self.key = key
        self.problem = problem


@dataclass
class ClipPrediction:
    """One clip's prediction, validated: finite boxes, one entry per frame in every per-frame list."""

    pred_bboxes: list[np.ndarray]
    pred_labels: list[list[str]]
    pred_text: str
    pred_phrases: list[str]
    pred_text_tagged: str = ""
    probs_temp_objectness: list[np.ndarray] | None = None
    all_bboxes: list[np.ndarray] | None = None
    objectness_threshold: float | None = None

    @property
    def num_frames(self) -> int:
        return len(self.pred_bboxes)

    @property
    def all_query(self) -> bool:
        """Every query's box and probability are known, so any threshold can be applied."""
        return self.all_bboxes is not None and self.probs_temp_objectness is not None

    def to_record(self, as_json: bool = False) -> dict[str, Any]:
        """The official record (plus the extensions that are set); `as_json` turns arrays into nested lists."""
        def frames(arrays: list[np.ndarray]) -> list[Any]:
            return [a.tolist() for a in arrays] if as_json else [np.asarray(a, np.float32) for a in arrays]

        record: dict[str, Any] = {
            "pred_bboxes": frames(self.pred_bboxes),
            "pred_labels": [list(labels) for labels in self.pred_labels],
            "pred_phrases": list(self.pred_phrases),
            "pred_text": self.pred_text,
            "pred_text_tagged": self.pred_text_tagged,
        }
        if self.probs_temp_objectness is not None:
            record["probs_temp_objectness"] = frames(self.probs_temp_objectness)
        if self.all_bboxes is not None:
            record["all_bboxes"] = frames(self.all_bboxes)
        if self.objectness_threshold is not None:
            record["objectness_threshold"] = float(self.objectness_threshold)
        return record


def official_record(
    boxes: Sequence[np.ndarray] | np.ndarray, probs: Sequence[np.ndarray] | np.ndarray, phrases: Sequence[str],
    text: str, tagged: str, threshold: float,
) -> ClipPrediction:
    """A record in the official layout from every query's boxes ([F][Q, 4]) and probabilities ([F][Q]):
    boxes kept where probability > threshold (strict), labels as `infer_iground.py` derives them, every
    query's box kept under `all_bboxes`."""
    all_boxes = [np.asarray(b, np.float32).reshape(-1, 4) for b in boxes]
    all_probs = [np.asarray(p, np.float32).reshape(-1) for p in probs]
    kept = [p > threshold for p in all_probs]
    return ClipPrediction(
        pred_bboxes=[b[k] for b, k in zip(all_boxes, kept)],
        pred_labels=[[phrases[i] for i, keep in enumerate(k) if keep and i < len(phrases)] for k in kept],
        pred_text=text,
        pred_phrases=list(phrases),
        pred_text_tagged=tagged,
        probs_temp_objectness=all_probs,
        all_bboxes=all_boxes,
        objectness_threshold=float(threshold),
    )


_TAG = re.compile(r"<.*?>")
_PHRASE = re.compile(r"<p>(.*?)</p>")


def clean_answer(text_output: str) -> tuple[list[str], str, str]:
    """(pred_phrases, pred_text, pred_text_tagged) from a decoded answer, cleaned the way
    `infer_iground.py` cleans its decoded output: newlines dropped and double spaces made single, the
    part after the last "ASSISTANT: " kept; phrases are the stripped `<p>(.*?)</p>` matches; the text
    loses every `<...>` tag and `[DET]`, then its whitespace is collapsed and surrounding single quotes
    and spaces are stripped; the tagged text keeps the tags and loses `[DET]`, cleaned the same way."""
    text = text_output.replace("\n", "").replace("  ", " ")
    text = text.split("ASSISTANT: ")[-1]
    phrases = [p.strip() for p in _PHRASE.findall(text)]
    plain = " ".join(_TAG.sub("", text).replace("[DET]", "").split()).strip("'").strip()
    tagged = " ".join(text.replace("[DET]", "").split()).strip("'").strip()
    return phrases, plain, tagged


def labels_from_objectness(probs: Sequence[float] | np.ndarray, phrases: Sequence[str], threshold: float) -> list[str]:
    """The phrases whose query passes the objectness threshold (strict >), as GROVE inference keeps them."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    return [phrases[j] for j in range(min(len(probs), len(phrases))) if probs[j] > threshold]


def kept_queries(probs: np.ndarray, num_kept: int) -> np.ndarray | None:
    """Which queries the `num_kept` boxes of a kept-only frame belong to, in query order.

    A strict threshold keeps exactly the queries above it, so the kept ones are the `num_kept` most
    probable. None when the frame cannot come from a threshold: more boxes than queries, or a dropped
    query at least as probable as a kept one (no threshold separates them).
    """
    probs = np.asarray(probs, np.float64).reshape(-1)
    if num_kept > len(probs):
        return None
    if num_kept == 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-probs, kind="stable")
    kept, dropped = order[:num_kept], order[num_kept:]
    if len(dropped) and probs[dropped].max() >= probs[kept].min():
        return None
    return np.sort(kept)


def _frame_boxes(key: str, t: int, frame: Any, name: str = "pred_bboxes") -> np.ndarray:
    try:
        boxes = np.asarray(frame, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PredictionError(key, f"{name}[{t}] is not numeric: {exc}") from None
    if boxes.size == 0:
        return np.zeros((0, 4), np.float64)
    if boxes.ndim == 1 and boxes.shape[0] == 4:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise PredictionError(key, f"{name}[{t}] has shape {boxes.shape}, expected [num_boxes, 4]")
    if not np.isfinite(boxes).all():
        raise PredictionError(key, f"{name}[{t}] holds NaN or infinite coordinates")
    return boxes


def _frame_probs(key: str, t: int, frame: Any, name: str = "probs_temp_objectness") -> np.ndarray:
    try:
        probs = np.asarray(frame, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise PredictionError(key, f"{name}[{t}] is not numeric: {exc}") from None
    if not np.isfinite(probs).all():
        raise PredictionError(key, f"{name}[{t}] holds NaN or infinite values")
    return probs


def _strings(key: str, name: str, value: Any) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise PredictionError(key, f"{name} must be a list of strings")
    return list(value)


def _per_frame(key: str, name: str, value: Any) -> list[Any]:
    if isinstance(value, np.ndarray):
        return list(value)
    if not isinstance(value, (list, tuple)):
        raise PredictionError(key, f"{name} must be a list over frames, got {type(value).__name__}")
    return list(value)


def clip_prediction(key: str, record: Any) -> ClipPrediction:
    """Validate one official record; every problem raises `PredictionError` naming the clip."""
    if not isinstance(record, Mapping):
        raise PredictionError(key, f"record must be a dict, got {type(record).__name__}")
    missing = [name for name in REQUIRED_FIELDS if name not in record]
    if missing:
        raise PredictionError(key, f"missing key(s) {missing}")
    box_frames = _per_frame(key, "pred_bboxes", record["pred_bboxes"])
    label_frames = _per_frame(key, "pred_labels", record["pred_labels"])
    if len(box_frames) != len(label_frames):
        raise PredictionError(key, f"pred_bboxes has {len(box_frames)} frames but pred_labels {len(label_frames)}")
    bboxes = [_frame_boxes(key, t, frame) for t, frame in enumerate(box_frames)]
    labels = [_strings(key, f"pred_labels[{t}]", frame) for t, frame in enumerate(label_frames)]
    if not isinstance(record["pred_text"], str):
        raise PredictionError(key, "pred_text must be a string")
    phrases = _strings(key, "pred_phrases", record.get("pred_phrases", []))
    tagged = record.get("pred_text_tagged", "") or ""
    if not isinstance(tagged, str):
        raise PredictionError(key, "pred_text_tagged must be a string")
    probs = None
    if record.get("probs_temp_objectness") is not None:
        prob_frames = _per_frame(key, "probs_temp_objectness", record["probs_temp_objectness"])
        if len(prob_frames) != len(bboxes):
            raise PredictionError(key, f"probs_temp_objectness has {len(prob_frames)} frames, pred_bboxes {len(bboxes)}")
        probs = [_frame_probs(key, t, frame) for t, frame in enumerate(prob_frames)]
    all_boxes = None
    if record.get("all_bboxes") is not None:
        if probs is None:
            raise PredictionError(key, "all_bboxes needs probs_temp_objectness (one probability per query)")
        all_frames = _per_frame(key, "all_bboxes", record["all_bboxes"])
        if len(all_frames) != len(bboxes):
            raise PredictionError(key, f"all_bboxes has {len(all_frames)} frames, pred_bboxes {len(bboxes)}")
        all_boxes = [_frame_boxes(key, t, frame, "all_bboxes") for t, frame in enumerate(all_frames)]
        for t, (boxes_t, probs_t) in enumerate(zip(all_boxes, probs)):
            if len(boxes_t) != len(probs_t):
                raise PredictionError(key, f"all_bboxes[{t}] has {len(boxes_t)} boxes for {len(probs_t)} query probabilities")
    threshold = record.get("objectness_threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not math.isfinite(threshold):
            raise PredictionError(key, f"objectness_threshold must be a finite number, got {threshold!r}")
        threshold = float(threshold)
    return ClipPrediction(bboxes, labels, record["pred_text"], phrases, tagged, probs, all_boxes, threshold)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def read_predictions(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw records of a prediction file (pickle through the restricted unpickler, or JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        records = safe_load(path)
    else:
        try:
            records = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a JSON prediction file ({exc}); pickles must end in .pkl") from exc
    if not isinstance(records, dict) or not all(isinstance(k, str) for k in records):
        raise ValueError(f"{path}: expected a dict keyed '{{video_id}}_{{clip_id}}', got {type(records).__name__}")
    return records


def load_predictions(path: str | os.PathLike[str]) -> tuple[dict[str, ClipPrediction], list[PredictionError]]:
    """Read and validate a prediction file: the good clips, and one error per bad clip (nothing is dropped silently)."""
    good: dict[str, ClipPrediction] = {}
    bad: list[PredictionError] = []
    for key, record in read_predictions(path).items():
        try:
            good[key] = clip_prediction(key, record)
        except PredictionError as exc:
            bad.append(exc)
    return good, bad


def write_predictions(
    path: str | os.PathLike[str], predictions: Mapping[str, ClipPrediction | Mapping[str, Any]]
) -> Path:
    """Write predictions atomically: a pickle (official, numpy arrays) for .pkl/.pickle, JSON otherwise.

    Dict records are validated first, so a file this writes always reads back.
    """
    path = Path(path)
    as_json = path.suffix.lower() not in PICKLE_SUFFIXES
    records = {}
    for key, prediction in predictions.items():
        if not isinstance(prediction, ClipPrediction):
            prediction = clip_prediction(key, prediction)
        records[key] = prediction.to_record(as_json=as_json)
    if as_json:
        atomic_write_text(path, json.dumps(records, default=_json_default, allow_nan=False))
    else:
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            pickle.dump(records, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path
