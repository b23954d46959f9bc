"""Official annotation formats -> a dataset folder, and a dataset folder's split -> the official pickle.

`convert_to_dataset` reads one split of a HowToGround1M/iGround pickle (or per-clip directory),
a VidSTG JSON or ActivityNet-Entities JSON, and writes it into a dataset folder
(`grove.data.dataset`): clips.parquet, boxes_raw.parquet, boxes_processed.parquet (union-merged
same-phrase instances) and dataset.json. Splits accumulate: converting val then test into one folder
keeps both; converting a split again replaces it. `export_official` writes a split back as the
official pickle (raw or processed boxes).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from grove.data.anet_entities import read_anet_entities
from grove.data.boxes import merge_same_phrase_boxes
from grove.data.dataset import DatasetPaths, load_dataset, read_manifest, write_manifest
from grove.data.howtoground import ProgressFn, read_official, tables_to_records, write_official, write_per_clip
from grove.data.safe_pickle import safe_load
from grove.data.schema import SchemaError, read_boxes, read_clips, write_boxes, write_clips
from grove.data.vidstg import read_vidstg
from grove.io import portable_path

logger = logging.getLogger(__name__)

FORMATS = ("howtoground", "vidstg", "anet")


@dataclass(frozen=True)
class ConvertSummary:
    root: Path
    split: str
    clips: int
    raw_boxes: int | None  # None when the input holds processed boxes only
    processed_boxes: int


def infer_split(path: Path) -> str | None:
    """'val' for iGround_val_set_raw.pkl, 'test' for test.json; None when the name says nothing."""
    match = re.search(r"(?<![a-z])(train|val|test)(?![a-z])", path.name.lower())
    return match.group(1) if match else None


def read_keys(path: str | os.PathLike[str]) -> list[str]:
    """A key list (`--train_keys` of the official scripts): a pickled list of keys, or a text file, one per line."""
    path = Path(path)
    if path.suffix == ".pkl":
        keys = safe_load(path)
        if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) for k in keys):
            raise SchemaError(f"{path}: expected a pickled list of clip keys, got {type(keys).__name__}")
        return list(keys)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_format(
    fmt: str, source: Path, dataset: str, split: str, split_ids: Path | None = None,
    keys: Iterable[str] | None = None, fps: float | None = None, on_progress: ProgressFn | None = None,
) -> tuple[pa.Table, pa.Table]:
    """(clip table, box table) of one split of an annotation file in one of FORMATS."""
    if fmt == "howtoground":
        return read_official(source, dataset, split, keys=keys, on_progress=on_progress)
    if fmt == "vidstg":
        return read_vidstg(source, split, dataset=dataset)
    if fmt == "anet":
        return read_anet_entities(source, split_ids, split, fps=fps, dataset=dataset)
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def _replace_split(existing: pa.Table | None, new: pa.Table, drop_keys: pa.Array) -> pa.Table:
    if existing is None:
        return new
    kept = existing.filter(pc.invert(pc.is_in(existing["key"], value_set=drop_keys)))
    return pa.concat_tables([kept, new.cast(kept.schema)])


def _merge_into(paths: DatasetPaths, split: str, clips: pa.Table, raw: pa.Table | None,
                processed: pa.Table) -> None:
    """Write the split into the folder, replacing a previous conversion of the same split."""
    old_clips = read_clips(paths.clips) if paths.clips.exists() else None
    replaced: list[str] = []
    if old_clips is not None:
        same_split = pc.equal(old_clips["split"], split)
        replaced = old_clips.filter(same_split)["key"].to_pylist()
        others = old_clips.filter(pc.invert(same_split))
        clash = others.filter(pc.is_in(others["key"], value_set=clips["key"].combine_chunks()))
        if clash.num_rows:
            raise SchemaError(f"{paths.root}: {clash.num_rows} clip key(s) of split {split!r} already belong to "
                              f"another split, e.g. {clash['key'][0]} in {clash['split'][0]!r}")
    dropped = pa.array(sorted(set(replaced) | set(clips["key"].to_pylist())), pa.string())
    for path, boxes in ((paths.boxes_raw, raw), (paths.boxes_processed, processed)):
        old = read_boxes(path) if path.exists() else None
        if boxes is not None:
            write_boxes(_replace_split(old, boxes, dropped), path)
        elif old is not None:  # this split has no such boxes: drop what an earlier conversion left
            write_boxes(_replace_split(old, old.schema.empty_table(), dropped), path)
    write_clips(_replace_split(old_clips, clips, dropped), paths.clips)


def _update_manifest(paths: DatasetPaths, split: str, source: dict[str, Any]) -> None:
    manifest = read_manifest(paths.root)
    clips = read_clips(paths.clips)
    counts = pc.value_counts(clips["split"]).to_pylist()
    manifest.setdefault("name", paths.root.name)
    manifest.setdefault("kind", "converted")
    manifest["creator"] = "grove data convert"
    manifest["splits"] = {item["values"]: item["counts"] for item in sorted(counts, key=lambda c: c["values"])}
    manifest.setdefault("sources", {})[split] = source
    write_manifest(paths.root, manifest)


def convert_to_dataset(
    fmt: str, source: str | os.PathLike[str], out: str | os.PathLike[str], split: str | None = None,
    split_ids: str | os.PathLike[str] | None = None, processed_input: bool = False,
    keys: str | os.PathLike[str] | None = None, fps: float | None = None, dataset: str | None = None,
    on_progress: ProgressFn | None = None,
) -> ConvertSummary:
    """Convert one split of an official annotation file into the dataset folder `out`.

    `split` defaults to the one the file name says (train/val/test), else "all". HowToGround pickles
    hold raw boxes unless `processed_input`; from raw ones the processed table is their union merge,
    from processed ones no raw table can be made (the split then has processed boxes only).
    `keys` (howtoground) restricts and orders the clips by a key list. `dataset` (the clip table's
    `dataset` column) defaults to the folder's name.
    """
    source, root = Path(source), Path(out)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    if fmt == "anet" and split_ids is not None and split is None:
        raise ValueError("--split is needed with --split-ids (train, val or test)")
    split = split or infer_split(source) or "all"
    dataset = dataset or root.name
    key_list = read_keys(keys) if keys is not None else None
    clips, boxes = read_format(fmt, source, dataset, split, Path(split_ids) if split_ids else None, key_list, fps,
                               on_progress)
    raw = None if processed_input else boxes
    processed = boxes if processed_input else merge_same_phrase_boxes(boxes)
    paths = DatasetPaths(root)
    root.mkdir(parents=True, exist_ok=True)
    _merge_into(paths, split, clips, raw, processed)
    # the input files relative to the dataset folder (grove.io.portable_path): no absolute path in it
    _update_manifest(paths, split, {
        "format": fmt, "input": portable_path(source, root), "split_ids": portable_path(split_ids, root) if split_ids else None,
        "keys": portable_path(keys, root) if keys else None, "boxes": ["processed"] if processed_input else ["raw", "processed"],
    })
    logger.info("%s: split %r, %d clips, %d raw / %d processed boxes", root, split, clips.num_rows,
                -1 if raw is None else raw.num_rows, processed.num_rows)
    return ConvertSummary(root, split, clips.num_rows, None if raw is None else raw.num_rows, processed.num_rows)


def export_official(
    dataset_dir: str | os.PathLike[str], split: str, out: str | os.PathLike[str], processed: bool = False,
    per_clip: bool = False,
) -> Path:
    """Write a split of a dataset folder as the official pickle (one dict, or one pickle per clip)."""
    root = Path(dataset_dir)
    paths = DatasetPaths(root)
    box_path = paths.boxes_processed if processed else paths.boxes_raw
    form = "processed" if processed else "raw"
    if not box_path.exists():
        raise FileNotFoundError(f"{root}: no {form} box table ({box_path.name})")
    source = read_manifest(root).get("sources", {}).get(split, {})
    if form not in source.get("boxes", [form]):
        raise SchemaError(f"{root}: split {split!r} was converted from {source['boxes']} boxes only; no {form} boxes")
    data = load_dataset(root, processed=processed)
    if split not in data.splits:
        raise SchemaError(f"{root}: no split {split!r} (has {data.splits or 'none'})")
    data = data.split(split)
    records = tables_to_records(data.clips, data.boxes)
    return write_per_clip(records, out) if per_clip else write_official(records, out)
