"""The tables that pass between the annotation stages, and the record of a clip that failed.

Stage 1 writes one row per annotated frame (`FRAME_SCHEMA`): the frame's caption and its grounded
phrases, one entry per box (a phrase may repeat, one entry per instance). Stage 2 writes one row
per clip (`CAPTION_SCHEMA`): the video-level caption, its `<p>…</p>`-tagged form and phrases, and
which engine produced it. Stage 3 writes the canonical clip and box tables (grove.data.schema).
Any stage may fail a clip; the failure is a row of `FAILURE_SCHEMA` and the clip leaves the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import pyarrow as pa

Box = tuple[float, float, float, float]

FRAME_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),
        pa.field("frame_id", pa.int64(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("phrases", pa.list_(pa.string()), nullable=False),
        pa.field("boxes", pa.list_(pa.list_(pa.float64(), 4)), nullable=False),
    ]
)

CAPTION_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("tagged_caption", pa.string(), nullable=False),
        pa.field("phrases", pa.list_(pa.string()), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("note", pa.string(), nullable=False),
    ]
)

FAILURE_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
    ]
)


@dataclass(frozen=True)
class ClipRequest:
    """One clip to caption frame by frame: where its video is and which grid frames to look at."""

    key: str
    video_file: str
    fps: float
    width: int
    height: int
    frame_indices: tuple[int, ...]  # positions on the 5 fps grid
    frame_ids: tuple[int, ...]  # native frame numbers, aligned with frame_indices
    source_key: str = ""  # the catalog clip this one was cut from (long videos); "" when it is that clip

    @property
    def record_key(self) -> str:
        return self.source_key or self.key


@dataclass
class FrameAnnotation:
    frame_index: int
    frame_id: int
    caption: str
    phrases: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)


@dataclass
class ClipFrames:
    key: str
    frames: list[FrameAnnotation]


@dataclass(frozen=True)
class ClipFailure:
    """A clip that a stage could not annotate; its shard completes without it."""

    key: str
    reason: str


@dataclass
class VideoCaption:
    key: str
    caption: str
    tagged_caption: str
    phrases: list[str]
    source: str
    note: str = ""


def frames_table(clips: Sequence[ClipFrames]) -> pa.Table:
    rows = [
        {
            "key": clip.key,
            "frame_index": frame.frame_index,
            "frame_id": frame.frame_id,
            "caption": frame.caption,
            "phrases": list(frame.phrases),
            "boxes": [list(map(float, box)) for box in frame.boxes],
        }
        for clip in clips
        for frame in clip.frames
    ]
    return pa.Table.from_pylist(rows, schema=FRAME_SCHEMA)


def clip_frames_from_table(table: pa.Table) -> list[ClipFrames]:
    """Inverse of frames_table; clips keep the order of their first row, frames their row order."""
    clips: dict[str, ClipFrames] = {}
    for row in table.to_pylist():
        frame = FrameAnnotation(
            frame_index=row["frame_index"],
            frame_id=row["frame_id"],
            caption=row["caption"],
            phrases=list(row["phrases"]),
            boxes=[tuple(box) for box in row["boxes"]],
        )
        clips.setdefault(row["key"], ClipFrames(row["key"], [])).frames.append(frame)
    return list(clips.values())


def captions_table(captions: Sequence[VideoCaption]) -> pa.Table:
    rows = [
        {
            "key": c.key,
            "caption": c.caption,
            "tagged_caption": c.tagged_caption,
            "phrases": list(c.phrases),
            "source": c.source,
            "note": c.note,
        }
        for c in captions
    ]
    return pa.Table.from_pylist(rows, schema=CAPTION_SCHEMA)


def captions_from_table(table: pa.Table) -> list[VideoCaption]:
    return [VideoCaption(**row) for row in table.to_pylist()]


def failures_table(failures: Sequence[ClipFailure], stage: str) -> pa.Table:
    rows = [{"key": f.key, "stage": stage, "reason": f.reason} for f in failures]
    return pa.Table.from_pylist(rows, schema=FAILURE_SCHEMA)
