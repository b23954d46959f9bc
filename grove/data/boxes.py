"""Operations on the canonical box table."""

from __future__ import annotations

import pyarrow as pa

from grove.data.schema import BOX_SCHEMA, sort_boxes


def merge_same_phrase_boxes(boxes: pa.Table) -> pa.Table:
    """Raw → processed: the instances of one phrase in one frame become their union box.

    The official training loader needs at most one box per (phrase, frame). Merged boxes keep the
    first instance's `box_index` order and the highest score; `box_index` is renumbered per frame.
    """
    if boxes.num_rows == 0:
        return BOX_SCHEMA.empty_table()
    boxes = sort_boxes(boxes).append_column("_order", pa.array(range(boxes.num_rows), pa.int64()))
    grouped = boxes.group_by(["key", "frame_index", "frame_id", "phrase_index", "phrase"], use_threads=False).aggregate(
        [
            ("x1", "min"),
            ("y1", "min"),
            ("x2", "max"),
            ("y2", "max"),
            ("score", "max"),
            ("_order", "min"),
        ]
    )
    grouped = grouped.sort_by([("_order_min", "ascending")])
    keys = grouped["key"].to_pylist()
    frames = grouped["frame_index"].to_pylist()
    box_index, previous, counter = [], None, 0
    for key, frame in zip(keys, frames):
        counter = counter + 1 if (key, frame) == previous else 0
        previous = (key, frame)
        box_index.append(counter)
    merged = pa.table(
        {
            "key": grouped["key"],
            "frame_index": grouped["frame_index"],
            "frame_id": grouped["frame_id"],
            "box_index": pa.array(box_index, pa.int32()),
            "phrase_index": grouped["phrase_index"],
            "phrase": grouped["phrase"],
            "x1": grouped["x1_min"],
            "y1": grouped["y1_min"],
            "x2": grouped["x2_max"],
            "y2": grouped["y2_max"],
            "score": grouped["score_max"],
        }
    )
    return merged.cast(BOX_SCHEMA)


def boxes_by_key(boxes: pa.Table) -> dict[str, pa.Table]:
    """Split a box table into one table per clip key (sorted once, then sliced: linear time)."""
    if boxes.num_rows == 0:
        return {}
    boxes = sort_boxes(boxes)
    keys = boxes["key"].to_pylist()
    result: dict[str, pa.Table] = {}
    start = 0
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            result[keys[start]] = boxes.slice(start, i - start)
            start = i
    return result
