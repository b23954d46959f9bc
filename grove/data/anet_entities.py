"""ActivityNet-Entities (`anet_entities_cleaned_class_thresh50_trainval.json`) -> the canonical tables.

Input (grove_spec.md 3.3, metrics_spec.md 2): `annotations[video][segments][segment_id]` with tokens,
timestamps [start, end] in seconds, and one entry per box: process_clss (object classes),
process_idx (their word indices in tokens), process_bnd_box (xyxy in 720px-wide frames), frame_ind
(which of the segment's 10 sampled frames holds the box: the midpoint of each tenth of the
segment) and crowds. `split_ids_anet_entities.json` lists the videos of training / validation /
testing.

Mapping:
- one clip per segment, key `{video_id}_{segment_id}`; caption = " ".join(tokens) (as GROVE);
  `num_frames` = 10: `frame_index` is the slot 0..9 (`frame_ind`), not a 5 fps grid position;
- frame ids: the annotation has no native frame grid. With a frame rate (the video entry's `fps`, as
  in GROVE's augmented file, or the `fps` argument) `frame_id` = the native frame nearest the slot's
  time (t * fps rounded, a tie to the earlier frame as GROVE's argmin picks it), and
  clip_start/end_frame likewise for start and end; without one, fps is 0 and every frame id is -1
  (unknown). The slot times themselves are always in `extra["slot_times"]`;
- width = 720 (the coordinate frame of the boxes), height = the entry's `rheight` or 0 (unknown);
- one box row per box, ordered by slot (file order within a slot = `box_index`): `phrase` = process_clss[k][0] lower-cased (the class the evaluator scores, and
  GROVE's label); `phrase_index` points at the caption word the box grounds. That word is
  tokens[process_idx[k][0]], the word the annotator boxed. (GROVE's loader instead tags the first
  word that *contains* the label, so "he" can tag "the"; we use the index and fall back to that rule
  only when process_idx is missing.) phrases = those words in caption order, each tagged `<p>word</p>`;
- `extra`: timestamps, slot_times, the segment exactly as in the file (for the official evaluator),
  the video-level fields, and `grove_skip`: why GROVE's loader would skip the segment (duplicate
  labels, no labels, no label in the caption, start >= end, shorter than 0.5 s) or null. GROVE also
  clamps the end to the second-last decodable frame time (its own timestamps file); not applied here.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from grove.data.howtoground import BoxColumns, RecordError
from grove.data.schema import CLIP_SCHEMA, clip_key
from grove.data.vidstg import read_annotation_json

logger = logging.getLogger(__name__)

NUM_SLOTS = 10
FRAME_WIDTH = 720
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "testing"}
REQUIRED = ("tokens", "timestamps", "process_clss", "process_bnd_box", "frame_ind")


def slot_times(start: float, end: float, num_slots: int = NUM_SLOTS) -> list[float]:
    """Midpoints of `num_slots` equal sub-intervals of [start, end] (computed as GROVE's loader does)."""
    bounds = np.linspace(start, end, num_slots + 1)
    return [float((bounds[i] + bounds[i + 1]) / 2) for i in range(num_slots)]


def nearest_frame(seconds: float, fps: float) -> int:
    """The native frame nearest a time; a tie goes to the earlier frame, as GROVE's argmin does."""
    return int(math.ceil(seconds * fps - 0.5))


def grove_skip_reason(labels: Sequence[str], caption: str, start: float, end: float) -> str | None:
    """Why GROVE's ActivityNetEntities loader drops a segment (before its frame-timestamp clamp), or None."""
    caption = caption.lower()
    if len(labels) != len(set(labels)):
        return "duplicate labels"
    if not labels:
        return "no labels"
    if not any(label in caption for label in labels):
        return "no label in the caption"
    if start >= end:
        return "start >= end"
    if end - start < 0.5:
        return "shorter than 0.5 s"
    return None


def _word_index(tokens: list[str], label: str, indices: Any) -> int | None:
    if isinstance(indices, list) and indices:
        return indices[0]
    lowered = [token.lower() for token in tokens]
    return next((i for i, word in enumerate(lowered) if label in word), None)


def _check_segment(segment: Any, where: str) -> None:
    if not isinstance(segment, dict):
        raise RecordError(f"{where}: expected an object, got {type(segment).__name__}")
    missing = [field for field in REQUIRED if field not in segment]
    if missing:
        raise RecordError(f"{where}: missing field(s) {missing}")
    counts = {name: len(segment[name]) for name in ("process_clss", "process_bnd_box", "frame_ind")}
    if "process_idx" in segment:
        counts["process_idx"] = len(segment["process_idx"])
    if len(set(counts.values())) > 1:
        raise RecordError(f"{where}: per-box lists differ in length {counts}")
    timestamps = segment["timestamps"]
    if not isinstance(timestamps, list) or len(timestamps) != 2:
        raise RecordError(f"{where}: timestamps must be [start, end], got {timestamps!r}")


def _segment(video_id: str, segment_id: str, segment: dict[str, Any], video: dict[str, Any], fps: float | None,
             where: str, columns: BoxColumns) -> dict[str, Any]:
    _check_segment(segment, where)
    tokens = segment["tokens"]
    start, end = (float(t) for t in segment["timestamps"])
    times = slot_times(start, end)
    key = clip_key(video_id, segment_id)
    labels = []
    for k, classes in enumerate(segment["process_clss"]):
        if not isinstance(classes, list) or not classes:
            raise RecordError(f"{where}: box {k} has no class")
        labels.append(classes[0].lower())
    indices = segment.get("process_idx", [None] * len(labels))
    words = [_word_index(tokens, label, idx) for label, idx in zip(labels, indices)]
    if any(w is not None and not 0 <= w < len(tokens) for w in words):
        raise RecordError(f"{where}: a word index of process_idx is outside the {len(tokens)} tokens")
    phrase_words = sorted({w for w in words if w is not None})
    boxes = list(zip(segment["frame_ind"], labels, words, segment["process_bnd_box"]))
    for k, (slot, _, _, box) in enumerate(boxes):
        if not isinstance(slot, int) or not 0 <= slot < NUM_SLOTS:
            raise RecordError(f"{where}: box {k} has frame_ind {slot!r}, expected 0..{NUM_SLOTS - 1}")
        if not isinstance(box, list) or len(box) != 4:
            raise RecordError(f"{where}: box {k} must be [x1, y1, x2, y2], got {box!r}")
    boxes_in_slot = [0] * NUM_SLOTS
    for slot, label, word, box in sorted(boxes, key=lambda b: b[0]):  # stable: file order within a slot
        frame_id = nearest_frame(times[slot], fps) if fps else -1
        phrase_index = phrase_words.index(word) if word is not None else -1
        columns.add(key, slot, frame_id, boxes_in_slot[slot], phrase_index, label, [float(v) for v in box])
        boxes_in_slot[slot] += 1
    caption = " ".join(tokens)
    tagged = " ".join(f"<p>{token}</p>" if i in phrase_words else token for i, token in enumerate(tokens))
    extra = {
        "timestamps": [start, end],
        "slot_times": times,
        "segment": segment,
        "video": {name: value for name, value in video.items() if name != "segments"},
        "grove_skip": grove_skip_reason(labels, caption, start, end),
    }
    return {
        "key": key, "video_id": video_id, "clip_id": segment_id,
        "fps": float(fps or 0.0),
        "clip_start_frame": nearest_frame(start, fps) if fps else -1,
        "clip_end_frame": nearest_frame(end, fps) if fps else -1,
        "num_frames": NUM_SLOTS,
        "width": FRAME_WIDTH, "height": int(video.get("rheight", 0)),
        "caption": caption, "tagged_caption": tagged, "phrases": [tokens[w] for w in phrase_words],
        "extra": json.dumps(extra, sort_keys=True),
    }


def _split_videos(split_ids_json: str | os.PathLike[str] | None, split: str, annotations: dict[str, Any],
                  source: Path) -> list[str]:
    if split_ids_json is None:
        return list(annotations)
    path = Path(split_ids_json)
    split_ids = read_annotation_json(path)
    name = SPLIT_NAMES.get(split, split)
    if not isinstance(split_ids, dict) or name not in split_ids:
        available = sorted(split_ids) if isinstance(split_ids, dict) else []
        raise RecordError(f"{path}: no split {name!r} (has {available}; short names {sorted(SPLIT_NAMES)})")
    videos = [video for video in split_ids[name] if video in annotations]
    absent = len(split_ids[name]) - len(videos)
    if absent:
        logger.info("%s: %d video(s) of split %r are not annotated in %s; skipped", path, absent, name, source)
    return videos


def _segment_order(segments: dict[str, Any]) -> list[str]:
    ids = list(segments)
    return sorted(ids, key=int) if all(i.isdigit() for i in ids) else ids


def read_anet_entities(
    annotation_json: str | os.PathLike[str], split_ids_json: str | os.PathLike[str] | None = None, split: str = "val",
    fps: float | None = None, dataset: str = "anet_entities", video_ext: str = ".mp4",
) -> tuple[pa.Table, pa.Table]:
    """ActivityNet-Entities annotations -> (clip table, box table) for one split.

    `split` names the split in `split_ids_json` ("train"/"val"/"test" or the file's own
    "training"/"validation"/"testing"); without a split file every annotated video is read. `fps` is
    used for videos whose entry has none (frame ids stay -1 when neither is known). Video files are
    assumed at `{video_id}{video_ext}`, as the official scripts name them.
    """
    path = Path(annotation_json)
    data = read_annotation_json(path)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, dict):
        raise RecordError(f"{path}: expected an object with 'annotations' (the cleaned ActivityNet-Entities file)")
    columns, rows = BoxColumns(), []
    for video_id in _split_videos(split_ids_json, split, annotations, path):
        video = annotations[video_id]
        segments = video.get("segments") if isinstance(video, dict) else None
        if not isinstance(segments, dict):
            raise RecordError(f"{path}: video {video_id}: expected an object with 'segments'")
        video_fps = video.get("fps", fps)
        for segment_id in _segment_order(segments):
            where = f"{path}: video {video_id} segment {segment_id}"
            row = _segment(video_id, segment_id, segments[segment_id], video, video_fps, where, columns)
            rows.append({**row, "dataset": dataset, "split": split, "video_path": f"{video_id}{video_ext}"})
    return pa.Table.from_pylist(rows, schema=CLIP_SCHEMA), columns.table()
