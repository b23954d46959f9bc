"""The official HowToGround1M / iGround pickles (raw and processed) <-> the canonical tables, losslessly.

Official layout (grove_spec.md 3.1): a dict keyed `{video_id}_{clip_id}`; each record holds
video_fname, video_id, clip_id, fps, clip_start_frame, clip_end_frame, width, height, caption,
tagged_caption, phrases, `bboxes[t]` = list of [x1, y1, x2, y2] and `labels[t]` = the phrase of each
box, on the 5 fps grid (frame t is native frame clip_start_frame + t * int(fps / 5)). The official
preprocessing script also splits that dict into one pickle per clip, `<dir>/<key>.pkl`.

Mapping onto the canonical tables:
- one clip row per record; `video_fname` -> `video_path`; `num_frames` = len(bboxes), so trailing
  frames without boxes survive; caption and tagged caption are kept verbatim (quotes included);
- one box row per box: `frame_index` = t, `box_index` = position in `bboxes[t]`, `phrase` = the
  label verbatim, `phrase_index` = index of the label in `phrases` (exact match first, then
  case-insensitive as the official loader lowercases both; -1 if absent);
- `extra["pickle_fields"]` holds unknown record fields (tagged JSON, see `to_json_value`);
  `extra["pickle_layout"]` records, only where it departs from the default, how the record was
  spelled: key order, the Python type of each scalar, tuple vs list vs numpy array containers,
  int vs float vs numpy coordinates. `tables_to_records` replays it, so a pickle -> tables -> pickle
  round trip gives an equal object with the same types.

Outside pickles are read only through `grove.data.safe_pickle`.
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import logging
import math
import os
import pickle
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pyarrow as pa

from grove.data.boxes import boxes_by_key
from grove.data.frames import frame_step
from grove.data.safe_pickle import safe_load
from grove.data.schema import BOX_SCHEMA, CLIP_SCHEMA, SchemaError
from grove.io import atomic_path, contained_path

logger = logging.getLogger(__name__)

FIELDS = (
    "video_fname", "video_id", "clip_id", "fps", "clip_start_frame", "clip_end_frame", "width", "height",
    "caption", "tagged_caption", "phrases", "bboxes", "labels",
)
# scalar record field -> (canonical column, Python type the official pickles use)
SCALARS: dict[str, tuple[str, type]] = {
    "video_fname": ("video_path", str),
    "video_id": ("video_id", str),
    "clip_id": ("clip_id", str),
    "fps": ("fps", float),
    "clip_start_frame": ("clip_start_frame", int),
    "clip_end_frame": ("clip_end_frame", int),
    "width": ("width", int),
    "height": ("height", int),
    "caption": ("caption", str),
    "tagged_caption": ("tagged_caption", str),
}
LAYOUT_KEY = "pickle_layout"
FIELDS_KEY = "pickle_fields"
DEFAULT_BOX_FRAME = "L/L/f"  # a list of [x1, y1, x2, y2] lists of floats
DEFAULT_LABEL_FRAME = "L/s"  # a list of str
ProgressFn = Callable[[int, int], None]
_FACTORIES: dict[str, type] = {t.__name__: t for t in (list, dict, set, frozenset, tuple, int, float, str, bytes)}


class RecordError(SchemaError):
    """A clip record does not have the official layout; the message names the file, the clip and the problem."""


# --- tagged JSON: any value a safe pickle can hold, as JSON, exactly -------------------------------------


def to_json_value(value: Any) -> Any:
    """Encode a value a safe pickle may hold as JSON, so that `from_json_value` gives back an equal value
    of the same types. Plain JSON (str, int, finite float, bool, None, lists, dicts with sorted str keys)
    stays as it is; anything else becomes a one-key object tagged `$name`."""
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {"$float": repr(value)}
    if kind is list:
        return [to_json_value(item) for item in value]
    if kind is dict:
        if all(type(k) is str and not k.startswith("$") for k in value) and list(value) == sorted(value):
            return {k: to_json_value(v) for k, v in value.items()}
        return {"$dict": [[to_json_value(k), to_json_value(v)] for k, v in value.items()]}
    if kind in (tuple, set, frozenset):
        return {f"${kind.__name__}": [to_json_value(item) for item in value]}
    if kind in (bytes, bytearray):
        return {f"${kind.__name__}": base64.b64encode(bytes(value)).decode("ascii")}
    if kind is complex:
        return {"$complex": [to_json_value(value.real), to_json_value(value.imag)]}
    if kind in (range, slice):
        return {f"${kind.__name__}": [to_json_value(value.start), to_json_value(value.stop), to_json_value(value.step)]}
    if kind is collections.OrderedDict:
        return {"$OrderedDict": [[to_json_value(k), to_json_value(v)] for k, v in value.items()]}
    if kind is collections.defaultdict and value.default_factory in (None, *_FACTORIES.values()):
        factory = value.default_factory
        items = [[to_json_value(k), to_json_value(v)] for k, v in value.items()]
        return {"$defaultdict": [None if factory is None else factory.__name__, items]}
    if isinstance(value, np.ndarray):
        _check_numpy_kind(value.dtype)
        return {"$ndarray": [value.dtype.str, list(value.shape), to_json_value(value.tolist())]}
    if isinstance(value, np.generic):
        _check_numpy_kind(value.dtype)
        return {"$npscalar": [value.dtype.str, to_json_value(value.item())]}
    if isinstance(value, np.dtype):
        _check_numpy_kind(value)
        return {"$dtype": value.str}
    raise TypeError(f"cannot store a value of type {kind.__module__}.{kind.__qualname__} losslessly")


def _check_numpy_kind(dtype: np.dtype) -> None:
    if dtype.kind not in "biufcUSO" or dtype.fields is not None:
        raise TypeError(f"cannot store numpy dtype {dtype} losslessly")


def from_json_value(value: Any) -> Any:
    """Inverse of `to_json_value`."""
    if isinstance(value, list):
        return [from_json_value(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1 or not next(iter(value)).startswith("$"):
        return {k: from_json_value(v) for k, v in value.items()}
    (tag, payload), = value.items()
    decode = _DECODERS.get(tag)
    if decode is None:
        raise ValueError(f"unknown tag {tag!r} in stored value")
    return decode(payload)


def _decode_items(payload: list) -> list[tuple[Any, Any]]:
    return [(from_json_value(k), from_json_value(v)) for k, v in payload]


def _decode_ndarray(payload: list) -> np.ndarray:
    dtype, shape, data = payload
    data = from_json_value(data)
    if np.dtype(dtype).kind != "O":
        return np.array(data, dtype=np.dtype(dtype)).reshape(shape)
    # np.array would turn list elements of an object array into more dimensions: fill it cell by cell
    array = np.empty(shape, dtype=object)
    for index in np.ndindex(*shape):
        cell = data
        for i in index:
            cell = cell[i]
        array[index] = cell
    return array


def _decode_defaultdict(payload: list) -> Any:
    factory_name, items = payload
    return collections.defaultdict(None if factory_name is None else _FACTORIES[factory_name], _decode_items(items))


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "$float": float,
    "$dict": lambda p: dict(_decode_items(p)),
    "$tuple": lambda p: tuple(from_json_value(p)),
    "$set": lambda p: set(from_json_value(p)),
    "$frozenset": lambda p: frozenset(from_json_value(p)),
    "$bytes": lambda p: base64.b64decode(p),
    "$bytearray": lambda p: bytearray(base64.b64decode(p)),
    "$complex": lambda p: complex(from_json_value(p[0]), from_json_value(p[1])),
    "$range": lambda p: range(*p),
    "$slice": lambda p: slice(*(from_json_value(x) for x in p)),
    "$OrderedDict": lambda p: collections.OrderedDict(_decode_items(p)),
    "$defaultdict": _decode_defaultdict,
    "$ndarray": _decode_ndarray,
    "$npscalar": lambda p: np.dtype(p[0]).type(from_json_value(p[1])),
    "$dtype": np.dtype,
}


# --- layout tokens: how a frame of boxes or labels was spelled -------------------------------------------
#
# A frame of boxes is spelled "<frame>/<box>/<coordinate>": frame is L (list), T (tuple) or A<dtype>
# (one numpy array); box is L, T or A<dtype> (for an empty array frame: its shape, e.g. 0x4);
# coordinate is f (float), i (int), m (ints and floats mixed; see "int_mask") or N<dtype> (numpy
# scalars). A frame of labels is "<frame>/<element>" with element s (str) or n (numpy str), or A<dtype>
# for an array; "Aauto" when np.array(list_of_labels) gives that dtype back. "*" marks a part that the
# frame does not show (an empty list frame), compatible with anything.


def _scalar_kind(value: Any) -> str | None:
    if isinstance(value, np.generic):
        return "N" + value.dtype.str
    if type(value) is float:
        return "f"
    if type(value) is int:
        return "i"
    return None


# coordinate types of a box of Python numbers -> its int mask (bit i: coordinate i is an int)
_INT_BITS = {types: sum(1 << i for i, t in enumerate(types) if t is int)
             for types in itertools.product((int, float), repeat=4)}


def _python_number_boxes(frame: list | tuple) -> tuple[str, str] | None:
    """(coordinate kind, int mask) when every box is a list of 4 Python ints/floats (the common case), else None."""
    masks = []
    for box in frame:
        if type(box) is not list:
            return None
        bits = _INT_BITS.get(tuple(map(type, box)))
        if bits is None:
            return None
        masks.append(bits)
    low, high = min(masks), max(masks)
    kind = "f" if high == 0 else "i" if low == 15 else "m"
    return kind, "".join(format(m, "x") for m in masks)


def _box_frame_token(frame: Any, where: str) -> tuple[tuple[str, str, str], list[list[float]], str | None]:
    """(token parts, boxes as float lists, int mask of this frame or None) for one entry of `bboxes`."""
    if isinstance(frame, np.ndarray):
        if frame.size == 0:
            return ("A" + frame.dtype.str, "x".join(str(n) for n in frame.shape), "*"), [], None
        if frame.ndim != 2 or frame.shape[1] != 4 or frame.dtype.kind not in "iuf":
            raise RecordError(f"{where}: an array of boxes must be numeric with shape (n, 4), got {frame.dtype} {frame.shape}")
        return ("A" + frame.dtype.str, "*", "*"), frame.astype(np.float64).tolist(), None
    if type(frame) not in (list, tuple):
        raise RecordError(f"{where}: expected a list of boxes, got {type(frame).__name__}")
    frame_kind = "L" if type(frame) is list else "T"
    if not frame:
        return (frame_kind, "*", "*"), [], None
    simple = _python_number_boxes(frame)
    if simple is not None:
        coord_kind, mask = simple
        return (frame_kind, "L", coord_kind), frame, mask
    box_kinds, coord_kinds, boxes, masks = set(), set(), [], []
    for box in frame:
        if isinstance(box, np.ndarray):
            if box.shape != (4,) or box.dtype.kind not in "iuf":
                raise RecordError(f"{where}: a box must hold 4 numbers, got array {box.dtype} {box.shape}")
            box_kinds.add("A" + box.dtype.str)
            boxes.append(box.astype(np.float64).tolist())
            continue
        if type(box) not in (list, tuple) or len(box) != 4:
            raise RecordError(f"{where}: a box must be [x1, y1, x2, y2], got {box!r}")
        box_kinds.add("L" if type(box) is list else "T")
        kinds = [_scalar_kind(c) for c in box]
        if None in kinds:
            raise RecordError(f"{where}: box coordinates must be numbers, got {box!r}")
        coord_kinds.update(kinds)
        masks.append(sum(1 << i for i, k in enumerate(kinds) if k == "i"))
        boxes.append([float(c) for c in box])
    if len(box_kinds) > 1:
        raise RecordError(f"{where}: boxes of one frame mix containers {sorted(box_kinds)}")
    box_kind = box_kinds.pop()
    if box_kind[0] == "A":
        return (frame_kind, box_kind, "*"), boxes, None
    mask = "".join(format(m, "x") for m in masks)
    if coord_kinds == {"f", "i"}:
        return (frame_kind, box_kind, "m"), boxes, mask
    if len(coord_kinds) > 1:
        raise RecordError(f"{where}: box coordinates mix types {sorted(coord_kinds)}")
    return (frame_kind, box_kind, coord_kinds.pop()), boxes, mask


def _label_frame_token(frame: Any, where: str) -> tuple[tuple[str, str], list[str]]:
    if isinstance(frame, np.ndarray):
        labels = frame.tolist()
        if frame.ndim != 1 or not all(type(label) is str for label in labels):
            raise RecordError(f"{where}: an array of labels must be 1-D strings, got {frame.dtype} {frame.shape}")
        auto = np.array(labels)
        dtype = "auto" if auto.dtype == frame.dtype else frame.dtype.str
        return ("A" + dtype, "*"), labels
    if type(frame) not in (list, tuple):
        raise RecordError(f"{where}: expected a list of labels, got {type(frame).__name__}")
    frame_kind = "L" if type(frame) is list else "T"
    if all(type(label) is str for label in frame):
        return (frame_kind, "s" if frame else "*"), list(frame)
    kinds = {"s" if type(label) is str else "n" if isinstance(label, np.str_) else "?" for label in frame}
    if "?" in kinds or len(kinds) > 1:
        raise RecordError(f"{where}: labels must all be str (or all numpy str), got {list(frame)!r}")
    return (frame_kind, kinds.pop() if kinds else "*"), [str(label) for label in frame]


def _merge_tokens(tokens: list[tuple[str, ...]], default: str) -> str | list[str]:
    """One token for the whole clip when the frames agree (wildcards match anything), else one per frame."""
    defaults = default.split("/")
    merged = []
    for position, fallback in enumerate(defaults):
        values = {token[position] for token in tokens} - {"*"}
        if len(values) > 1 and values <= {"f", "i", "m"}:
            values = {"m"}  # int and float frames: one token, with the int mask of each frame
        if len(values) > 1:
            return ["/".join(t if t != "*" else d for t, d in zip(token, defaults)) for token in tokens]
        merged.append(values.pop() if values else fallback)
    return "/".join(merged)


def _frame_tokens(layout: Mapping[str, Any], key: str, default: str, num_frames: int) -> list[list[str]]:
    spec = layout.get(key, default)
    tokens = spec if isinstance(spec, list) else [spec] * num_frames
    tokens = tokens[:num_frames] + [default] * (num_frames - len(tokens))
    return [token.split("/") for token in tokens]


def _int_masks(spelled: str | list[str], masks: list[str | None]) -> dict[str, str]:
    """Per frame whose coordinates mix ints and floats: one hex digit per box, bit i set when coordinate i
    is an int. Frames without an entry hold floats only."""
    tokens = spelled if isinstance(spelled, list) else [spelled] * len(masks)
    return {
        str(t): mask for t, (token, mask) in enumerate(zip(tokens, masks))
        if token.endswith("/m") and mask is not None and mask.strip("0")
    }


def _build_box_frame(token: list[str], boxes: list[list[float]], mask: str | None) -> Any:
    frame_kind, box_kind, coord_kind = token
    if frame_kind.startswith("A"):
        if boxes:
            return np.array(boxes, dtype=frame_kind[1:])
        shape = tuple(int(n) for n in box_kind.split("x")) if box_kind[0].isdigit() else (0, 4)
        return np.zeros(shape, dtype=frame_kind[1:])
    if mask is not None and len(mask) != len(boxes):
        # the boxes changed since the layout was taken (e.g. processed from raw): ints where integral
        mask = "".join(format(sum(1 << i for i, c in enumerate(box) if c.is_integer()), "x") for box in boxes)
    built = []
    for b, box in enumerate(boxes):
        if box_kind.startswith("A"):
            built.append(np.array(box, dtype=box_kind[1:]))
            continue
        if coord_kind == "i":
            coords = [int(c) if c.is_integer() else c for c in box]
        elif coord_kind == "m":
            bits = int(mask[b], 16) if mask is not None else 0
            coords = [int(c) if bits >> i & 1 else c for i, c in enumerate(box)]
        elif coord_kind.startswith("N"):
            scalar = np.dtype(coord_kind[1:]).type
            coords = [scalar(c) for c in box]
        else:
            coords = list(box)
        built.append(coords if box_kind in ("L", "*") else tuple(coords))
    return built if frame_kind in ("L", "*") else tuple(built)


def _build_label_frame(token: list[str], labels: list[str]) -> Any:
    frame_kind, element_kind = token
    if frame_kind.startswith("A"):
        dtype = frame_kind[1:]
        return np.array(labels) if dtype == "auto" else np.array(labels, dtype=dtype)
    items = [np.str_(label) for label in labels] if element_kind == "n" else list(labels)
    return items if frame_kind in ("L", "*") else tuple(items)


# --- records -> tables ---------------------------------------------------------------------------------


def _type_tag(value: Any) -> str:
    if isinstance(value, np.generic):
        return "np:" + value.dtype.str
    return type(value).__name__


def _restore_type(value: Any, tag: str) -> Any:
    if tag.startswith("np:"):
        return np.dtype(tag[3:]).type(value)
    return {"str": str, "int": int, "float": float, "bool": bool}[tag](value)


def _scalar_value(record: Mapping[str, Any], field: str, kind: type, where: str) -> tuple[Any, str | None]:
    """(canonical value, type tag when the record's type is not the official default)."""
    value = record[field]
    tag = _type_tag(value)
    if kind is str:
        if tag not in ("str", "int") and not (isinstance(value, np.generic) and value.dtype.kind in "iuU"):
            raise RecordError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
        canonical: Any = str(value)
    else:
        if isinstance(value, (str, bytes)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise RecordError(f"{where}: field {field!r} must be a number, got {type(value).__name__}")
        canonical = kind(value)
        if kind is int and canonical != value:
            raise RecordError(f"{where}: field {field!r} must be a whole number, got {value!r}")
    return canonical, (None if tag == kind.__name__ else tag)


def _phrase_lookup(phrases: list[str]) -> Callable[[str], int]:
    """label -> index of its phrase: exact match first, then case-insensitive (as the official loader), else -1."""
    exact, lowered = {}, {}
    for i, phrase in enumerate(phrases):
        exact.setdefault(phrase, i)
        lowered.setdefault(phrase.lower(), i)
    return lambda label: exact.get(label, lowered.get(label.lower(), -1))


class BoxColumns:
    """The box table as column lists, filled frame by frame (much faster than one dict per row)."""

    def __init__(self) -> None:
        self.data: dict[str, list[Any]] = {name: [] for name in ("key", "frame_index", "frame_id", "box_index",
                                                                  "phrase_index", "phrase")}
        self.boxes: list[Any] = []  # [x1, y1, x2, y2] each, numbers of any kind; made float64 in one go

    def add_frame(self, key: str, frame_index: int, frame_id: int, boxes: list[Any], phrase_indices: list[int],
                  phrases: list[str]) -> None:
        n = len(boxes)
        data = self.data
        data["key"].extend([key] * n)
        data["frame_index"].extend([frame_index] * n)
        data["frame_id"].extend([frame_id] * n)
        data["box_index"].extend(range(n))
        data["phrase_index"].extend(phrase_indices)
        data["phrase"].extend(phrases)
        self.boxes.extend(boxes)

    def add(self, key: str, frame_index: int, frame_id: int, box_index: int, phrase_index: int, phrase: str,
            box: list[float]) -> None:
        for name, value in zip(self.data, (key, frame_index, frame_id, box_index, phrase_index, phrase)):
            self.data[name].append(value)
        self.boxes.append(box)

    def table(self) -> pa.Table:
        columns = {name: pa.array(values, BOX_SCHEMA.field(name).type) for name, values in self.data.items()}
        coords = np.array(self.boxes, dtype=np.float64).reshape(-1, 4)
        for i, name in enumerate(("x1", "y1", "x2", "y2")):
            columns[name] = pa.array(coords[:, i])
        columns["score"] = pa.nulls(len(coords), pa.float64())
        return pa.table(columns, schema=BOX_SCHEMA)


def _check_record(record: Any, where: str) -> None:
    if not isinstance(record, dict):
        raise RecordError(f"{where}: a clip record must be a dict, got {type(record).__name__}")
    missing = [field for field in FIELDS if field not in record]
    if missing:
        raise RecordError(f"{where}: missing field(s) {missing}")
    if not all(type(name) is str for name in record):
        raise RecordError(f"{where}: field names must be strings, got {list(record)!r}")
    for name in ("bboxes", "labels"):
        if type(record[name]) not in (list, tuple):
            raise RecordError(f"{where}: field {name!r} must be a list over frames, got {type(record[name]).__name__}")
    if len(record["bboxes"]) != len(record["labels"]):
        raise RecordError(f"{where}: {len(record['bboxes'])} frames of bboxes but {len(record['labels'])} frames of labels")


def _add_boxes(key: str, record: dict[str, Any], row: dict[str, Any], where: str, columns: BoxColumns,
               layout: dict[str, Any]) -> None:
    """Append the record's boxes to `columns`; note in `layout` how its frames were spelled."""
    step = frame_step(row["fps"])
    phrase_index = _phrase_lookup(row["phrases"])
    box_tokens, label_tokens, masks = [], [], []
    for t, (frame_boxes, frame_labels) in enumerate(zip(record["bboxes"], record["labels"])):
        box_token, boxes, mask = _box_frame_token(frame_boxes, f"{where}: bboxes[{t}]")
        label_token, names = _label_frame_token(frame_labels, f"{where}: labels[{t}]")
        if len(boxes) != len(names):
            raise RecordError(f"{where}: frame {t} has {len(boxes)} boxes but {len(names)} labels")
        box_tokens.append(box_token)
        label_tokens.append(label_token)
        masks.append(mask)
        columns.add_frame(key, t, row["clip_start_frame"] + t * step, boxes, [phrase_index(n) for n in names], names)
    for name, tokens, default in (("bboxes", box_tokens, DEFAULT_BOX_FRAME), ("labels", label_tokens, DEFAULT_LABEL_FRAME)):
        spelled = _merge_tokens(tokens, default)
        if spelled != default:
            layout[name] = spelled
        if type(record[name]) is tuple:
            layout[f"{name}_outer"] = "T"
    int_mask = _int_masks(layout.get("bboxes", DEFAULT_BOX_FRAME), masks)
    if int_mask:
        layout["int_mask"] = int_mask


def _convert_record(key: str, record: Any, dataset: str, split: str, source: str, columns: BoxColumns) -> dict[str, Any]:
    """One official record -> its clip row (returned) and its box rows (appended to `columns`)."""
    where = f"{source}: clip {key!r}"
    _check_record(record, where)
    row: dict[str, Any] = {"key": key, "dataset": dataset, "split": split, "num_frames": len(record["bboxes"])}
    layout: dict[str, Any] = {}
    if list(record) != list(FIELDS):
        layout["order"] = list(record)
    types = {}
    for field, (column, kind) in SCALARS.items():
        row[column], tag = _scalar_value(record, field, kind, where)
        if tag is not None:
            types[field] = tag
    if types:
        layout["types"] = types
    phrases_token, row["phrases"] = _label_frame_token(record["phrases"], f"{where}: field 'phrases'")
    phrases_spelled = _merge_tokens([phrases_token], DEFAULT_LABEL_FRAME)
    if phrases_spelled != DEFAULT_LABEL_FRAME:
        layout["phrases"] = phrases_spelled
    _add_boxes(key, record, row, where, columns, layout)
    extra: dict[str, Any] = {}
    unknown = {name: value for name, value in record.items() if name not in FIELDS}
    if unknown:
        try:
            extra[FIELDS_KEY] = {name: to_json_value(value) for name, value in unknown.items()}
        except TypeError as exc:
            raise RecordError(f"{where}: extra field cannot be stored: {exc}") from exc
    if layout:
        extra[LAYOUT_KEY] = layout
    row["extra"] = json.dumps(extra, sort_keys=True)
    return row


def _tables(items: Iterable[tuple[str, Any, str]], total: int, dataset: str, split: str,
            on_progress: ProgressFn | None) -> tuple[pa.Table, pa.Table]:
    """(key, record, source file) items -> (clip table, box table)."""
    clip_rows, columns = [], BoxColumns()
    for done, (key, record, source) in enumerate(items, 1):
        if type(key) is not str:
            raise RecordError(f"{source}: clip keys must be strings, got {key!r}")
        clip_rows.append(_convert_record(key, record, dataset, split, source, columns))
        if on_progress is not None and (done % 1000 == 0 or done == total):
            on_progress(done, total)
    return pa.Table.from_pylist(clip_rows, schema=CLIP_SCHEMA), columns.table()


def records_to_tables(
    records: Mapping[str, Any], dataset: str, split: str, source: str = "<records>",
    on_progress: ProgressFn | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Official records (dict key -> record) -> (clip table, box table), in the dict's order.

    `source` names the file in errors. The box table holds the boxes exactly as the records do, so a
    processed pickle gives processed boxes; `grove.data.boxes.merge_same_phrase_boxes` turns raw ones
    into processed ones.
    """
    if not isinstance(records, Mapping):
        raise RecordError(f"{source}: expected a dict of clip records keyed '{{video_id}}_{{clip_id}}', "
                          f"got {type(records).__name__}")
    items = ((key, record, source) for key, record in records.items())
    return _tables(items, len(records), dataset, split, on_progress)


# --- tables -> records ---------------------------------------------------------------------------------


def _clip_boxes(boxes: pa.Table | None, num_frames: int) -> list[list[tuple[list[float], str]]]:
    frames: list[list[tuple[list[float], str]]] = [[] for _ in range(num_frames)]
    if boxes is None:
        return frames
    columns = boxes.select(["frame_index", "phrase", "x1", "y1", "x2", "y2"]).to_pydict()
    for t, phrase, x1, y1, x2, y2 in zip(*columns.values()):
        if not 0 <= t < num_frames:
            raise SchemaError(f"box on frame_index {t} outside the clip's {num_frames} frames")
        frames[t].append(([x1, y1, x2, y2], phrase))
    return frames


def _record(clip: Mapping[str, Any], boxes: pa.Table | None) -> dict[str, Any]:
    extra = json.loads(clip["extra"]) if clip["extra"] else {}
    layout = extra.get(LAYOUT_KEY, {})
    types = layout.get("types", {})
    values: dict[str, Any] = {}
    for field, (column, kind) in SCALARS.items():
        values[field] = _restore_type(clip[column], types.get(field, kind.__name__))
    phrases_token = layout.get("phrases", DEFAULT_LABEL_FRAME).split("/")
    values["phrases"] = _build_label_frame(phrases_token, clip["phrases"])
    num_frames = clip["num_frames"]
    frames = _clip_boxes(boxes, num_frames)
    box_tokens = _frame_tokens(layout, "bboxes", DEFAULT_BOX_FRAME, num_frames)
    label_tokens = _frame_tokens(layout, "labels", DEFAULT_LABEL_FRAME, num_frames)
    masks = layout.get("int_mask", {})
    bboxes, labels = [], []
    for t, frame in enumerate(frames):
        bboxes.append(_build_box_frame(box_tokens[t], [box for box, _ in frame], masks.get(str(t))))
        labels.append(_build_label_frame(label_tokens[t], [phrase for _, phrase in frame]))
    values["bboxes"] = tuple(bboxes) if layout.get("bboxes_outer") == "T" else bboxes
    values["labels"] = tuple(labels) if layout.get("labels_outer") == "T" else labels
    for name, value in extra.get(FIELDS_KEY, {}).items():
        values[name] = from_json_value(value)
    order = layout.get("order", list(FIELDS) + [name for name in values if name not in FIELDS])
    return {name: values[name] for name in order}


def tables_to_records(clips: pa.Table, boxes: pa.Table) -> dict[str, dict[str, Any]]:
    """Canonical (clip table, box table) -> official records, in the clip table's row order.

    Boxes go to `bboxes[frame_index]` in `box_index` order. The layout a record was read with (types,
    containers, key order, unknown fields) is replayed from `extra`; clips made here get the official
    default (lists of float lists, str labels).
    """
    by_key = boxes_by_key(boxes)
    orphans = set(by_key) - set(clips["key"].to_pylist())
    if orphans:
        logger.warning("%d box key(s) have no clip row and are left out, e.g. %s", len(orphans), sorted(orphans)[:3])
    records: dict[str, dict[str, Any]] = {}
    for clip in clips.to_pylist():
        try:
            records[clip["key"]] = _record(clip, by_key.get(clip["key"]))
        except (SchemaError, ValueError, KeyError, TypeError) as exc:
            raise SchemaError(f"clip {clip['key']!r}: cannot write the official record: {exc}") from exc
    return records


# --- files ---------------------------------------------------------------------------------------------


def _per_clip_paths(directory: Path, keys: Iterable[str] | None) -> list[tuple[str, Path]]:
    if keys is None:
        return [(path.stem, path) for path in sorted(directory.glob("*.pkl"))]
    # the keys come from a key list (input data): one naming a file outside the folder is refused
    paths = [(key, contained_path(directory, f"{key}.pkl")) for key in keys]
    missing = [str(path) for _, path in paths if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: {len(missing)} clip pickle(s) of the key list are missing, e.g. {missing[:3]}")
    return paths


def _select(records: dict[str, Any], keys: Iterable[str] | None, source: Path) -> dict[str, Any]:
    if keys is None:
        return records
    wanted = list(keys)
    absent = [key for key in wanted if key not in records]
    if absent:
        raise RecordError(f"{source}: {len(absent)} key(s) of the key list are not in the file, e.g. {absent[:3]}")
    return {key: records[key] for key in wanted}


def _read_dict_pickle(path: Path) -> dict[str, Any]:
    records = safe_load(path)
    if not isinstance(records, dict):
        raise RecordError(f"{path}: expected a dict of clip records keyed '{{video_id}}_{{clip_id}}', "
                          f"got {type(records).__name__}")
    return records


def read_records(path: str | os.PathLike[str], keys: Iterable[str] | None = None) -> dict[str, Any]:
    """The official records of a dict pickle, or of a one-pickle-per-clip directory (`<dir>/<key>.pkl`:
    every `.pkl` in name order, or only `keys`, in that order). Read with the restricted unpickler."""
    path = Path(path)
    if path.is_dir():
        return {key: safe_load(clip_path) for key, clip_path in _per_clip_paths(path, keys)}
    return _select(_read_dict_pickle(path), keys, path)


def read_official(
    path: str | os.PathLike[str], dataset: str, split: str, keys: Iterable[str] | None = None,
    on_progress: ProgressFn | None = None,
) -> tuple[pa.Table, pa.Table]:
    """An official dict pickle, or a one-pickle-per-clip directory, -> (clip table, box table).

    The boxes are those of the file (raw or processed). `keys` picks clips (and their order), as the
    official training scripts do with `--train_keys`. Errors name the file and the clip.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if path.is_dir():
        paths = _per_clip_paths(path, keys)
        items = ((key, safe_load(clip_path), str(clip_path)) for key, clip_path in paths)
        return _tables(items, len(paths), dataset, split, on_progress)
    records = _select(_read_dict_pickle(path), keys, path)
    return records_to_tables(records, dataset, split, source=str(path), on_progress=on_progress)


def _dump(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        pickle.dump(obj, handle, protocol=pickle.HIGHEST_PROTOCOL)
        handle.flush()
        os.fsync(handle.fileno())


def write_official(records: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write records as one dict pickle, atomically."""
    path = Path(path)
    _dump(dict(records), path)
    return path


def write_per_clip(records: Mapping[str, Any], directory: str | os.PathLike[str]) -> Path:
    """Write one pickle per clip, `<directory>/<key>.pkl`, as the official preprocessing script does (atomic each)."""
    directory = Path(directory)
    bad = [key for key in records if "/" in key or key in ("", ".", "..")]
    if bad:
        raise ValueError(f"clip key(s) {bad[:3]} cannot be file names in {directory}")
    directory.mkdir(parents=True, exist_ok=True)
    for key, record in records.items():
        _dump(record, directory / f"{key}.pkl")
    return directory
