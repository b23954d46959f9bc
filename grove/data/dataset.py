"""The dataset folder: the one on-disk layout that `grove data synth`, `grove annotate` and training share.

```
DATASET/
  dataset.json             manifest: name, kind, splits with clip counts, creator and its parameters
  clips.parquet            canonical clip table, every split (column `split`)
  boxes_raw.parquet        canonical box table, one box per instance
  boxes_processed.parquet  same-phrase instances of a frame merged into their union box (training input)
  videos/                  the clips' video files (clip `video_path` is relative to DATASET)
  official/                the same data in the official GROVE pickle layout
  frame_objects.parquet    synthetic only: what an image grounded-captioner would see in each frame
```
A folder that holds only `clips.parquet` and a box table is also a dataset; videos then resolve
against `video_root` (defaults to the folder itself).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from grove.data.schema import read_boxes, read_clips
from grove.io import atomic_write_json

MANIFEST = "dataset.json"
CLIPS = "clips.parquet"
BOXES_RAW = "boxes_raw.parquet"
BOXES_PROCESSED = "boxes_processed.parquet"
VIDEOS = "videos"
OFFICIAL = "official"
FRAME_OBJECTS = "frame_objects.parquet"


@dataclass(frozen=True)
class DatasetPaths:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def clips(self) -> Path:
        return self.root / CLIPS

    @property
    def boxes_raw(self) -> Path:
        return self.root / BOXES_RAW

    @property
    def boxes_processed(self) -> Path:
        return self.root / BOXES_PROCESSED

    @property
    def videos(self) -> Path:
        return self.root / VIDEOS

    @property
    def official(self) -> Path:
        return self.root / OFFICIAL

    @property
    def frame_objects(self) -> Path:
        return self.root / FRAME_OBJECTS


@dataclass
class Dataset:
    """Clip and box tables of a dataset folder, with the root that relative video paths resolve against."""

    clips: pa.Table
    boxes: pa.Table
    video_root: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    def split(self, name: str) -> "Dataset":
        clips = self.clips.filter(pc.equal(self.clips["split"], name))
        keys = clips["key"]
        boxes = self.boxes.filter(pc.is_in(self.boxes["key"], value_set=keys))
        return Dataset(clips, boxes, self.video_root, self.manifest)

    def video_file(self, video_path: str) -> Path:
        path = Path(video_path)
        return path if path.is_absolute() else self.video_root / path

    @property
    def splits(self) -> list[str]:
        return sorted(set(self.clips["split"].to_pylist()))


def write_manifest(root: Path, manifest: dict[str, Any]) -> None:
    atomic_write_json(Path(root) / MANIFEST, manifest)


def read_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from exc


def load_dataset(
    root: str | Path, processed: bool = True, video_root: str | Path | None = None, split: str | None = None
) -> Dataset:
    """Load a dataset folder. `processed` picks the union-merged boxes (training) or the raw ones (evaluation)."""
    paths = DatasetPaths(Path(root))
    if not paths.clips.exists():
        raise FileNotFoundError(f"{paths.root}: not a dataset folder (no {CLIPS})")
    box_path = paths.boxes_processed if processed else paths.boxes_raw
    if not box_path.exists():
        other = paths.boxes_raw if processed else paths.boxes_processed
        if not other.exists():
            raise FileNotFoundError(f"{paths.root}: no box table ({BOXES_PROCESSED} or {BOXES_RAW})")
        box_path = other
    dataset = Dataset(
        clips=read_clips(paths.clips),
        boxes=read_boxes(box_path),
        video_root=Path(video_root) if video_root is not None else paths.root,
        manifest=read_manifest(paths.root),
    )
    return dataset.split(split) if split is not None else dataset
