"""Nested, seeded pre-training subsets of the auto-annotated pool (the paper's 1K ⊂ 10K ⊂ 100K ⊂ 1M).

Each clip key gets a rank, sha256(f"{seed}:{key}"); a subset of n clips is the n best-ranked keys.
So subsets are nested by construction, identical on any machine for the same seed and pool, and a
pool that grows keeps the relative order of the clips it already had. Plain functions: DVC's stage
(`grove pipeline subset`) and the Dagster asset both call `write_subset`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from grove.data.dataset import BOXES_PROCESSED, BOXES_RAW, CLIPS, DatasetPaths, load_dataset, read_manifest, write_manifest
from grove.data.schema import read_boxes, write_boxes, write_clips
from grove.io import portable_path


class SubsetError(ValueError):
    """The pool cannot provide the requested subset; the message names the pool and the sizes."""


def ranked_keys(keys: Iterable[str], seed: int) -> list[str]:
    """Keys in subset order: by sha256 of seed and key (ties, impossible in practice, by key)."""
    return sorted(set(keys), key=lambda key: (hashlib.sha256(f"{seed}:{key}".encode()).hexdigest(), key))


def nested_subset(keys: Iterable[str], seed: int, size: int | None) -> list[str]:
    """The first `size` keys of the seeded order (None: all of them)."""
    ranked = ranked_keys(keys, seed)
    if size is None:
        return ranked
    if size > len(ranked):
        raise SubsetError(f"a subset of {size} clips needs a pool of at least {size}; the pool has {len(ranked)}")
    return ranked[:size]


@dataclass(frozen=True)
class SubsetSummary:
    out_dir: str
    clips: int
    boxes: int
    pool_clips: int
    seed: int


def write_subset(
    pool_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    size: int | None,
    seed: int,
    split: str | None = None,
    video_root: str | os.PathLike[str] | None = None,
) -> SubsetSummary:
    """Write a dataset folder holding `size` clips of the pool dataset folder `pool_dir` (of its `split` only, if given).

    The pool's relative video paths resolve against `video_root` (default: the pool folder). They
    are rewritten relative to the subset folder, so the subset is a dataset folder of its own (and
    its hash does not depend on where the runs root is).
    """
    pool_dir, out_dir = Path(pool_dir), Path(out_dir)
    pool = load_dataset(pool_dir, video_root=video_root)
    if split is not None:
        pool = pool.split(split)
    try:
        keys = nested_subset(pool.clips["key"].to_pylist(), seed, size)
    except SubsetError as exc:
        raise SubsetError(f"{pool_dir}: {exc}") from exc
    key_set = pa.array(keys, pa.string())

    clips = pool.clips.filter(pc.is_in(pool.clips["key"], value_set=key_set)).sort_by("key")
    relative = [portable_path(pool.video_file(path), out_dir) for path in clips["video_path"].to_pylist()]
    clips = clips.set_column(clips.schema.get_field_index("video_path"), "video_path", pa.array(relative, pa.string()))
    write_clips(clips, out_dir / CLIPS)

    pool_paths = DatasetPaths(pool_dir)
    box_rows = 0
    for name, source in ((BOXES_PROCESSED, pool_paths.boxes_processed), (BOXES_RAW, pool_paths.boxes_raw)):
        if source.exists():
            boxes = read_boxes(source)
            boxes = boxes.filter(pc.is_in(boxes["key"], value_set=key_set))
            write_boxes(boxes, out_dir / name)
            box_rows = box_rows or boxes.num_rows
    write_manifest(
        out_dir,
        {
            "name": out_dir.name,
            "kind": "pretraining-subset",
            "parent": read_manifest(pool_dir).get("name", pool_dir.name),
            "seed": seed,
            "size": size,
            "pool_split": split,
            "splits": {split: int(pc.sum(pc.equal(clips["split"], split)).as_py() or 0) for split in sorted(set(clips["split"].to_pylist()))},
        },
    )
    return SubsetSummary(str(out_dir), clips.num_rows, box_rows, pool.clips.num_rows, seed)


def rebase_video_paths(dataset_dir: str | os.PathLike[str], video_root: str | os.PathLike[str], home: str | os.PathLike[str] | None = None) -> int:
    """Rewrite the relative video paths of a dataset folder's clips, which resolve against `video_root`,
    to resolve against `home` (default: the folder itself), so the folder is a dataset on its own.
    Returns how many paths changed; absolute paths are kept.
    """
    from grove.data.schema import read_clips

    dataset_dir, video_root = Path(dataset_dir), Path(video_root)
    home = Path(home) if home is not None else dataset_dir
    clips = read_clips(dataset_dir / CLIPS)
    old = clips["video_path"].to_pylist()
    new = [path if Path(path).is_absolute() else portable_path(video_root / path, home) for path in old]
    clips = clips.set_column(clips.schema.get_field_index("video_path"), "video_path", pa.array(new, pa.string()))
    write_clips(clips, dataset_dir / CLIPS)
    return sum(a != b for a, b in zip(old, new))
