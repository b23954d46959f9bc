"""Canonical tables (Arrow / Parquet): one row per clip, and a long table of boxes.

Clip table: one row per clip, keyed `{video_id}_{clip_id}`. `video_path` is relative to a video
root (the dataset folder for datasets this project writes, `--videos DIR` otherwise) or absolute.
`num_frames` is the length of the official per-frame annotation lists, so a clip whose trailing
frames carry no box still round-trips. `extra` is a JSON object for dataset-specific fields
(VidSTG qtype and tube, ActivityNet segment times, unknown keys of outside pickles).

Box table: one row per box. `frame_index` is the position on the 5 fps grid (the index into the
official `bboxes[t]` list), `frame_id` the native frame number, `box_index` the order of the box
within its frame (kept so conversions are lossless). `phrase_index` points into the clip's
`phrases` (-1 when the label is not one of them). Coordinates are xyxy in original pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from grove.io import atomic_path

CLIP_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_path", pa.string(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("clip_start_frame", pa.int64(), nullable=False),
        pa.field("clip_end_frame", pa.int64(), nullable=False),
        pa.field("num_frames", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("tagged_caption", pa.string(), nullable=False),
        pa.field("phrases", pa.list_(pa.string()), nullable=False),
        pa.field("extra", pa.string(), nullable=False),
    ]
)

BOX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),
        pa.field("frame_id", pa.int64(), nullable=False),
        pa.field("box_index", pa.int32(), nullable=False),
        pa.field("phrase_index", pa.int32(), nullable=False),
        pa.field("phrase", pa.string(), nullable=False),
        pa.field("x1", pa.float64(), nullable=False),
        pa.field("y1", pa.float64(), nullable=False),
        pa.field("x2", pa.float64(), nullable=False),
        pa.field("y2", pa.float64(), nullable=False),
        pa.field("score", pa.float64(), nullable=True),
    ]
)


class SchemaError(ValueError):
    """A table or file does not have the canonical layout; the message names the file and the problem."""


def clip_key(video_id: str, clip_id: str | int) -> str:
    return f"{video_id}_{clip_id}"


def empty_table(schema: pa.Schema) -> pa.Table:
    return schema.empty_table()


def clip_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Build a clip table from dicts; `extra` may be a dict (serialised to sorted JSON) or a JSON string."""
    prepared = []
    for row in rows:
        row = dict(row)
        extra = row.get("extra", {})
        row["extra"] = extra if isinstance(extra, str) else json.dumps(extra, sort_keys=True)
        prepared.append(row)
    return pa.Table.from_pylist(prepared, schema=CLIP_SCHEMA)


def box_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    prepared = [{"score": None, **row} for row in rows]
    return pa.Table.from_pylist(prepared, schema=BOX_SCHEMA)


def conform(table: pa.Table, schema: pa.Schema, source: str = "<table>") -> pa.Table:
    """Check that `table` has every canonical column with a castable type; return it in canonical order."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise SchemaError(f"{source}: missing canonical column(s) {missing}")
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise SchemaError(f"{source}: columns do not match the canonical schema: {exc}") from exc


def write_table(table: pa.Table, path: str | Path, schema: pa.Schema | None = None) -> Path:
    """Write a Parquet file atomically (zstd); with `schema`, conform the table first."""
    path = Path(path)
    if schema is not None:
        table = conform(table, schema, str(path))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_table(path: str | Path, schema: pa.Schema | None = None) -> pa.Table:
    """Read a Parquet file; with `schema`, check it is canonical. Errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(f"{path}: not a readable Parquet file: {exc}") from exc
    return conform(table, schema, str(path)) if schema is not None else table


def write_clips(table: pa.Table, path: str | Path) -> Path:
    return write_table(table, path, CLIP_SCHEMA)


def write_boxes(table: pa.Table, path: str | Path) -> Path:
    return write_table(table, path, BOX_SCHEMA)


def read_clips(path: str | Path) -> pa.Table:
    return read_table(path, CLIP_SCHEMA)


def read_boxes(path: str | Path) -> pa.Table:
    return read_table(path, BOX_SCHEMA)


def sort_boxes(table: pa.Table) -> pa.Table:
    return table.sort_by([("key", "ascending"), ("frame_index", "ascending"), ("box_index", "ascending")])
