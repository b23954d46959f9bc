"""VidSTG (TubeDETR-style JSON) -> the canonical tables.

Input (grove_spec.md 3.2): `videos[]`, one entry per sentence, with original_video_id, video_id (the
sentence id), video_path, caption, qtype, fps, width, height, target_id, tube_start_frame and
tube_end_frame (the half-open ground-truth tube), and `trajectories[original_video_id][str(target_id)]
[str(frame)] = {"bbox": [x, y, w, h]}`.

Mapping (GROVE's spatial-grounding protocol: the tube is given, every frame of it is grounded):
- one clip per sentence, key `{original_video_id}_{video_id}` (`video_id` column = the source video,
  `clip_id` = the sentence id, which is what GROVE's VidSTG evaluator keys predictions by);
- the clip is the tube: clip_start_frame = tube_start_frame, clip_end_frame = tube_end_frame - 1 (its
  last frame); its annotated frames are GROVE's `range(tube_start, tube_end - 1, int(fps / 5))`
  (the loader and `eval_vidstg.py` both stop one frame early), `num_frames` their count, so
  `grove.data.frames.annotated_frame_ids` gives the same list;
- one box row per annotated frame that has a trajectory box, xywh -> xyxy, not clamped (the
  evaluator scores the unclamped box; the training loader clamps to the frame and drops empty boxes);
  a tube frame without a box has no row and is counted in `extra["frames_without_box"]`;
- the whole sentence is the one phrase: phrases = [caption.strip()], tagged_caption
  `<p>caption</p>` (GROVE teacher-forces `<p> caption </p> [DET]`), every box phrase_index 0;
- `extra` keeps every other field of the entry (qtype, tube_start_frame, tube_end_frame, start_frame,
  end_frame, target_id, video_id, ...).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from grove.data.frames import frame_step
from grove.data.howtoground import BoxColumns, RecordError
from grove.data.schema import CLIP_SCHEMA, clip_key

logger = logging.getLogger(__name__)

REQUIRED = (
    "original_video_id", "video_id", "video_path", "caption", "fps", "width", "height",
    "target_id", "tube_start_frame", "tube_end_frame",
)
COLUMN_FIELDS = ("caption", "video_path", "fps", "width", "height")  # kept as columns, not in `extra`


def read_annotation_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON annotation file; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError(f"{path}: not a JSON file: {exc}") from exc


def tube_frame_ids(fps: float, tube_start_frame: int, tube_end_frame: int) -> list[int]:
    """GROVE's VidSTG frames: the 5 fps grid over the tube, `range(tube_start, tube_end - 1, int(fps / 5))`."""
    return list(range(tube_start_frame, tube_end_frame - 1, frame_step(fps)))


def _xyxy(bbox: Any, where: str) -> list[float]:
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        raise RecordError(f"{where}: bbox must be [x, y, w, h], got {bbox!r}")
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def _sentence(video: Any, trajectories: dict[str, Any], where: str, dataset: str, split: str,
              columns: BoxColumns) -> dict[str, Any]:
    if not isinstance(video, dict):
        raise RecordError(f"{where}: expected an object, got {type(video).__name__}")
    missing = [field for field in REQUIRED if field not in video]
    if missing:
        raise RecordError(f"{where}: missing field(s) {missing}")
    where = f"{where} (sentence {video['original_video_id']}_{video['video_id']})"
    target = trajectories.get(str(video["original_video_id"]), {}).get(str(video["target_id"]))
    if target is None:
        raise RecordError(f"{where}: no trajectory for target {video['target_id']} of video {video['original_video_id']}")
    key = clip_key(str(video["original_video_id"]), video["video_id"])
    start, end, fps = int(video["tube_start_frame"]), int(video["tube_end_frame"]), float(video["fps"])
    frames = tube_frame_ids(fps, start, end)
    without_box = 0
    for t, frame_id in enumerate(frames):
        box = target.get(str(frame_id))
        if box is None:
            without_box += 1
            continue
        bbox = box.get("bbox") if isinstance(box, dict) else box
        columns.add(key, t, frame_id, 0, 0, video["caption"].strip(), _xyxy(bbox, f"{where} frame {frame_id}"))
    extra = {name: value for name, value in video.items() if name not in COLUMN_FIELDS}
    if without_box:
        extra["frames_without_box"] = without_box
    sentence = video["caption"].strip()
    return {
        "key": key, "dataset": dataset, "split": split,
        "video_id": str(video["original_video_id"]), "clip_id": str(video["video_id"]),
        "video_path": video["video_path"], "fps": fps,
        "clip_start_frame": start, "clip_end_frame": end - 1, "num_frames": len(frames),
        "width": int(video["width"]), "height": int(video["height"]),
        "caption": video["caption"], "tagged_caption": f"<p>{sentence}</p>", "phrases": [sentence],
        "extra": json.dumps(extra, sort_keys=True),
    }


def read_vidstg(annotation_json: str | os.PathLike[str], split: str, dataset: str = "vidstg") -> tuple[pa.Table, pa.Table]:
    """A TubeDETR-style VidSTG annotation file (one per split) -> (clip table, box table)."""
    path = Path(annotation_json)
    data = read_annotation_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("videos"), list) or not isinstance(data.get("trajectories"), dict):
        raise RecordError(f"{path}: expected an object with 'videos' (a list) and 'trajectories' (an object)")
    columns, rows = BoxColumns(), []
    for i, video in enumerate(data["videos"]):
        rows.append(_sentence(video, data["trajectories"], f"{path}: videos[{i}]", dataset, split, columns))
    without_box = sum(json.loads(row["extra"]).get("frames_without_box", 0) for row in rows)
    if without_box:
        logger.warning("%s: %d tube frame(s) have no trajectory box; they carry no box row", path, without_box)
    return pa.Table.from_pylist(rows, schema=CLIP_SCHEMA), columns.table()
