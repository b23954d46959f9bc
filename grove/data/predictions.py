"""The official GROVE prediction layout: what inference writes and the iGround evaluator reads.

A prediction file is a dict keyed `{video_id}_{clip_id}` (the GT clip key), pickle or JSON. Each
record, as GROVE's `infer_iground.py` writes it (grove_spec.md 4.1):

    pred_bboxes            list over the clip's 5 fps frames; frame t is a [Q_t, 4] array of xyxy
                           boxes in original pixels, one per [DET] query (phrase), NOT filtered by
                           objectness
    pred_labels            list over frames; frame t lists the phrases kept by the temporal
                           objectness threshold, in query order
    pred_phrases           the phrases parsed from the generated caption (`<p>(.*?)</p>`)
    pred_text              the generated caption, tags stripped
    pred_text_tagged       the generated caption with its <p> tags (optional)
    probs_temp_objectness  list over frames; frame t is a [Q_t] array of sigmoid objectness (optional)

`pred_labels[t]` is `labels_from_objectness(probs[t], pred_phrases, threshold)`, so an evaluator that
has the probabilities can re-threshold. Pickles are read with the restricted unpickler (numpy arrays
allowed); writes are atomic.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from grove.data.safe_pickle import safe_load
from grove.io import atomic_path, atomic_write_text

REQUIRED_FIELDS = ("pred_bboxes", "pred_labels", "pred_text")
OPTIONAL_FIELDS = ("pred_phrases", "pred_text_tagged", "probs_temp_objectness")
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

    @property
    def num_frames(self) -> int:
        return len(self.pred_bboxes)

    def to_record(self, as_json: bool = False) -> dict[str, Any]:
        """The official record; `as_json` turns arrays into nested lists."""
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
        return record


def labels_from_objectness(probs: Sequence[float] | np.ndarray, phrases: Sequence[str], threshold: float) -> list[str]:
    """The phrases whose query passes the objectness threshold (strict >), as GROVE inference keeps them."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    return [phrases[j] for j in range(min(len(probs), len(phrases))) if probs[j] > threshold]


def _frame_boxes(key: str, t: int, frame: Any) -> np.ndarray:
    try:
        boxes = np.asarray(frame, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PredictionError(key, f"pred_bboxes[{t}] is not numeric: {exc}") from None
    if boxes.size == 0:
        return np.zeros((0, 4), np.float64)
    if boxes.ndim == 1 and boxes.shape[0] == 4:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise PredictionError(key, f"pred_bboxes[{t}] has shape {boxes.shape}, expected [num_boxes, 4]")
    if not np.isfinite(boxes).all():
        raise PredictionError(key, f"pred_bboxes[{t}] holds NaN or infinite coordinates")
    return boxes


def _frame_probs(key: str, t: int, frame: Any, num_boxes: int) -> np.ndarray:
    try:
        probs = np.asarray(frame, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise PredictionError(key, f"probs_temp_objectness[{t}] is not numeric: {exc}") from None
    if probs.shape[0] != num_boxes:
        raise PredictionError(key, f"probs_temp_objectness[{t}] has {probs.shape[0]} values for {num_boxes} boxes")
    if not np.isfinite(probs).all():
        raise PredictionError(key, f"probs_temp_objectness[{t}] holds NaN or infinite values")
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
    if not box_frames and not label_frames:
        raise PredictionError(key, "empty predictions (no frames)")
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
        probs = [_frame_probs(key, t, frame, len(bboxes[t])) for t, frame in enumerate(prob_frames)]
    return ClipPrediction(bboxes, labels, record["pred_text"], phrases, tagged, probs)


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
