"""Training data: clips from the canonical tables and their videos, 8 frames by the GROVE protocol.

One sample = one clip: 8 frames sampled from the clip's 5 fps grid (random in each TSN segment and
resampled until one frame shows an object for training; segment centres for validation, grove_spec
1.1), the tagged answer, and per (frame, phrase) the normalised cxcywh box and its presence label.
`GroveProcessor` turns the sample into model inputs inside the DataLoader workers.

Randomness never comes from worker state: the frames of a training sample are a pure function of
(seed, epoch, clip index), so a resumed run and a DDP run draw exactly the samples a single
uninterrupted run draws. The decoded 5 fps grid of a clip is cached per worker (bounded in bytes),
so after the first epoch a clip costs no decoding.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from grove.data.boxes import boxes_by_key
from grove.data.dataset import Dataset, load_dataset
from grove.data.frames import NUM_FRAMES, annotated_frame_ids, sample_segment_indices
from grove.data.schema import read_boxes, read_clips

logger = logging.getLogger(__name__)

MAX_RESAMPLES = 100
ALL_SPLITS = ("all", "*")


@dataclass(frozen=True)
class ClipRecord:
    """Everything the loader needs about one clip, with its boxes laid out on the 5 fps grid."""

    key: str
    video_file: Path
    fps: float
    width: int
    height: int
    frame_ids: tuple[int, ...]  # native ids of the 5 fps grid
    caption: str
    tagged_caption: str
    phrases: tuple[str, ...]
    boxes: np.ndarray  # (F, P, 4) xyxy in original pixels, zeros where absent
    present: np.ndarray  # (F, P) bool


@dataclass
class ClipSample:
    """One training example before the processor: 8 frames plus the targets on those frames."""

    key: str
    frames: np.ndarray  # (T, H, W, 3) uint8
    frame_ids: list[int]
    caption: str
    tagged_caption: str
    phrases: list[str]
    boxes: np.ndarray  # (T, P, 4) xyxy in original pixels, zeros where absent
    present: np.ndarray  # (T, P) bool
    width: int
    height: int


def resolve_dataset(
    data: str | Path,
    split: str | None,
    processed: bool = True,
    boxes: str | Path | None = None,
    video_root: str | Path | None = None,
) -> Dataset:
    """A dataset folder, or a clip table (`clips.parquet`) with a box table next to it or given.

    `split` picks rows by the `split` column; None, "all" or "*" keep every split.
    """
    path = Path(data)
    keep_split = None if split is None or split in ALL_SPLITS else split
    if path.is_dir():
        dataset = load_dataset(path, processed=processed, video_root=video_root)
    elif path.is_file():
        box_path = Path(boxes) if boxes is not None else _sibling_box_table(path, processed)
        dataset = Dataset(
            clips=read_clips(path),
            boxes=read_boxes(box_path),
            video_root=Path(video_root) if video_root is not None else path.parent,
        )
    else:
        raise FileNotFoundError(f"{path}: no such dataset folder or clip table")
    if keep_split is not None:
        if keep_split not in dataset.splits:
            raise ValueError(f"{path}: no split {keep_split!r} (splits: {', '.join(dataset.splits) or 'none'})")
        dataset = dataset.split(keep_split)
    return dataset


def _sibling_box_table(clips_path: Path, processed: bool) -> Path:
    names = ["boxes_processed.parquet", "boxes_raw.parquet"]
    for name in names if processed else names[::-1]:
        candidate = clips_path.parent / name
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{clips_path}: no box table next to it ({' or '.join(names)}); pass one explicitly")


def clip_records(dataset: Dataset) -> list[ClipRecord]:
    """Lay out each clip's boxes on its 5 fps grid. Several boxes of one phrase in a frame become their union."""
    per_key = boxes_by_key(dataset.boxes)
    records = []
    for row in dataset.clips.to_pylist():
        frame_ids = annotated_frame_ids(
            row["fps"], row["clip_start_frame"], row["clip_end_frame"], num_annotated=row["num_frames"] or None
        )
        if not frame_ids:
            raise ValueError(f"clip {row['key']}: empty frame range [{row['clip_start_frame']}, {row['clip_end_frame']}]")
        phrases = tuple(row["phrases"])
        boxes, present = _grid_boxes(row["key"], per_key.get(row["key"]), len(frame_ids), len(phrases))
        records.append(
            ClipRecord(
                key=row["key"],
                video_file=dataset.video_file(row["video_path"]),
                fps=float(row["fps"]),
                width=int(row["width"]),
                height=int(row["height"]),
                frame_ids=tuple(frame_ids),
                caption=row["caption"],
                tagged_caption=row["tagged_caption"],
                phrases=phrases,
                boxes=boxes,
                present=present,
            )
        )
    return records


def _grid_boxes(key: str, boxes: pa.Table | None, num_frames: int, num_phrases: int) -> tuple[np.ndarray, np.ndarray]:
    grid = np.zeros((num_frames, num_phrases, 4), np.float32)
    present = np.zeros((num_frames, num_phrases), bool)
    if boxes is None:
        return grid, present
    columns = boxes.select(["frame_index", "phrase_index", "x1", "y1", "x2", "y2"]).to_pydict()
    for t, j, *xyxy in zip(*columns.values()):
        if j < 0:
            continue  # a label that is not one of the clip's phrases cannot be supervised
        if not (0 <= t < num_frames and j < num_phrases):
            raise ValueError(f"clip {key}: box at frame_index {t}, phrase_index {j} is outside the clip's grid")
        if present[t, j]:
            old = grid[t, j]
            xyxy = [min(old[0], xyxy[0]), min(old[1], xyxy[1]), max(old[2], xyxy[2]), max(old[3], xyxy[3])]
        grid[t, j] = xyxy
        present[t, j] = True
    return grid, present


def sample_frame_indices(present: np.ndarray, rng: np.random.Generator | None, num_frames: int = NUM_FRAMES) -> list[int]:
    """Grid positions of the 8 frames: segment centres without `rng`; random per segment with it,
    redrawn until a drawn frame shows an object (the official loop, bounded for clips with none)."""
    grid_length = present.shape[0]
    if rng is None:
        return sample_segment_indices(grid_length, num_frames)
    if not present.any():
        return sample_segment_indices(grid_length, num_frames, rng)
    for _ in range(MAX_RESAMPLES):
        picks = sample_segment_indices(grid_length, num_frames, rng)
        if present[picks].any():
            return picks
    return picks


def sample_seed(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class FrameCache:
    """Least-recently-used decoded grids, bounded in bytes (one cache per worker process)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> np.ndarray | None:
        frames = self._items.get(key)
        if frames is not None:
            self._items.move_to_end(key)
        return frames

    def put(self, key: str, frames: np.ndarray) -> None:
        if frames.nbytes > self.max_bytes or key in self._items:
            return
        self._items[key] = frames
        self._bytes += frames.nbytes
        while self._bytes > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self._bytes -= evicted.nbytes


def decode_frames(video_file: Path, frame_ids: Sequence[int], backend: str = "pyav") -> np.ndarray:
    """Frames at native ids as (N, H, W, 3) uint8; errors name the file."""
    from grove.data import video

    # naming the PyAV reader directly skips the probe of every backend that a backend name triggers
    reader_kind = video.PyAVReader if backend == "pyav" else backend
    with video.open_video(video_file, reader_kind) as reader:
        return reader.get_frames(list(frame_ids))


class GroveClipDataset(torch.utils.data.Dataset):
    """Map-style dataset of clips. An item is a clip index (evaluation: segment centres) or a
    (clip index, epoch) pair (training: random frames drawn from (seed, epoch, index)).

    With a `processor` (GroveProcessor), items come out as model inputs; the training question is
    drawn from the same per-sample generator as the frames.
    """

    def __init__(
        self,
        records: Sequence[ClipRecord],
        processor: Callable[..., Any] | None = None,
        seed: int = 0,
        backend: str = "pyav",
        cache_bytes: int = 256 << 20,
    ) -> None:
        self.records = list(records)
        self.processor = processor
        self.seed = seed
        self.backend = backend
        self.cache = FrameCache(cache_bytes)

    def __len__(self) -> int:
        return len(self.records)

    def grid_frames(self, record: ClipRecord) -> np.ndarray:
        frames = self.cache.get(record.key)
        if frames is None:
            frames = decode_frames(record.video_file, record.frame_ids, self.backend)
            self.cache.put(record.key, frames)
        return frames

    def _index_and_rng(self, item: int | tuple[int, int]) -> tuple[int, np.random.Generator | None]:
        if isinstance(item, (int, np.integer)):
            return int(item), None
        index, epoch = item
        return int(index), sample_seed(self.seed, epoch, index)

    def sample(self, item: int | tuple[int, int], rng: np.random.Generator | None = None) -> ClipSample:
        index, item_rng = self._index_and_rng(item)
        rng = rng if rng is not None else item_rng
        record = self.records[index]
        picks = sample_frame_indices(record.present, rng)
        return ClipSample(
            key=record.key,
            frames=self.grid_frames(record)[picks],
            frame_ids=[record.frame_ids[i] for i in picks],
            caption=record.caption,
            tagged_caption=record.tagged_caption,
            phrases=list(record.phrases),
            boxes=record.boxes[picks],
            present=record.present[picks],
            width=record.width,
            height=record.height,
        )

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        index, rng = self._index_and_rng(item)
        sample = self.sample(index, rng)
        if self.processor is None:
            return sample
        try:
            return self.processor(
                sample.frames,
                caption=sample.caption,
                phrases=sample.phrases,
                tagged_caption=sample.tagged_caption,
                boxes=sample.boxes,
                present=sample.present,
                original_size=(sample.width, sample.height),
                rng=rng,
            )
        except ValueError as exc:
            raise ValueError(f"clip {sample.key} ({self.records[index].video_file}): {exc}") from exc


class StepBatchSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    """Micro-batches of (clip index, epoch) for this rank, step by step from `start_step`.

    Global step s takes the next `global_batch` clips of a per-epoch seeded permutation; rank r
    gets its contiguous share, cut into micro-batches. One process with `accumulation = k` sees
    exactly the clips that k ranks see together, so their gradients agree.
    """

    def __init__(
        self,
        num_clips: int,
        global_batch: int,
        micro_batch: int,
        total_steps: int,
        start_step: int = 0,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
    ) -> None:
        if num_clips <= 0:
            raise ValueError("no clips to train on")
        if global_batch % (micro_batch * world_size):
            raise ValueError(
                f"global batch {global_batch} is not a multiple of micro batch {micro_batch} × world size {world_size}"
            )
        self.num_clips = num_clips
        self.global_batch = global_batch
        self.micro_batch = micro_batch
        self.total_steps = total_steps
        self.start_step = start_step
        self.world_size = world_size
        self.rank = rank
        self.seed = seed

    @property
    def accumulation(self) -> int:
        return self.global_batch // (self.micro_batch * self.world_size)

    @property
    def steps_per_epoch(self) -> int:
        return max(1, self.num_clips // self.global_batch)

    def global_batch_at(self, step: int) -> list[tuple[int, int]]:
        epoch, position = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(self.num_clips)
        if len(order) < self.global_batch:  # fewer clips than one batch: repeat the permutation
            order = np.resize(order, self.global_batch)
        start = position * self.global_batch
        return [(int(i), epoch) for i in order[start : start + self.global_batch]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.global_batch // self.world_size
        for step in range(self.start_step, self.total_steps):
            mine = self.global_batch_at(step)[self.rank * share : (self.rank + 1) * share]
            for m in range(0, share, self.micro_batch):
                yield mine[m : m + self.micro_batch]

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.accumulation


def make_loader(
    dataset: GroveClipDataset,
    batch_sampler: torch.utils.data.Sampler | None = None,
    collate: Callable[[list[Any]], Any] | None = None,
    num_workers: int = 2,
    batch_size: int = 1,
) -> torch.utils.data.DataLoader:
    """A DataLoader with worker processes. Workers get no torch seed from the main process's RNG
    (a private generator), so creating a loader never shifts the training RNG."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(persistent_workers=batch_sampler is not None, prefetch_factor=4)
    if batch_sampler is None:
        kwargs.update(batch_size=batch_size, shuffle=False)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate if collate is not None else list,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
