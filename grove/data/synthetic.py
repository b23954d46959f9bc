"""The synthetic grounded-video dataset: procedurally rendered clips with exact ground truth.

`generate_dataset(out, config)` writes a dataset folder (grove/data/dataset.py): H.264 MP4 clips,
the canonical clip and box tables (raw: one box per visible instance; processed: same-phrase
instances merged), the official GROVE pickles, and `frame_objects.parquet`, what an image grounded
captioner could see in each annotated frame (the stage-1 simulator's input).

Splits: "pool" stands in for HowToGround1M (its ground truth exists, but the pipeline annotates it
again automatically); "train", "val" and "test" are iGround-like. Clip `i` of split `s` is drawn from
the generator seeded with (seed, s, i) alone, so a clip does not depend on the other splits' sizes
nor on how many worker processes ran.

Re-running into a folder: when its manifest holds the same parameters and every file is there,
nothing is done. Otherwise the tables are rebuilt (cheap), a video is re-encoded only when it is
missing or was made with other parameters (its MP4 `comment` holds the parameter fingerprint), and
videos of clips that no longer belong to the dataset are deleted. The manifest is written last.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from grove.data import howtoground
from grove.data.boxes import merge_same_phrase_boxes
from grove.data.dataset import DatasetPaths, read_manifest, write_manifest
from grove.data.frames import annotated_frame_ids
from grove.data.schema import BOX_SCHEMA, CLIP_SCHEMA, clip_key, sort_boxes, write_boxes, write_clips, write_table
from grove.data.synthetic_render import EncoderSettings, encode_mp4, make_compositor, read_mp4_comment
from grove.data.synthetic_scene import KINDS, Infeasible, Scene, canonical_action, canonical_description, sample_scene

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1  # bump when a change alters what a (seed, split, index) renders to
SPLITS = ("pool", "train", "val", "test")
SPLIT_SHARES = {"pool": 0.7, "train": 0.15, "val": 0.05, "test": 0.1}  # of `--clips N`
DATASET_NAME = "synthetic"
MAX_SCENE_ATTEMPTS = 50
# Share of annotated frames in which a caption phrase must be visible; motions that leave the view
# need less. A scene failing it is drawn again, so captions never name what cannot be seen.
MIN_VISIBLE_SHARE = {"enters": 0.2, "leaves": 0.2, "hides": 0.3}
DEFAULT_MIN_VISIBLE_SHARE = 0.6
LARGE_FROM_SCALE = 0.8  # an instance drawn at this fraction of its kind's full size or more looks "large"

FRAME_OBJECT_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("frame_index", pa.int32(), nullable=False),
        pa.field("frame_id", pa.int64(), nullable=False),
        pa.field("object_id", pa.int32(), nullable=False),  # stable within the clip
        pa.field("entity_index", pa.int32(), nullable=False),  # instances of one phrase share it
        pa.field("kind", pa.string(), nullable=False),
        pa.field("colour", pa.string(), nullable=False),
        pa.field("size", pa.string(), nullable=False),  # "small" / "large" as drawn in this frame
        pa.field("description", pa.string(), nullable=False),  # canonical noun phrase: "a small red cup"
        pa.field("is_human", pa.bool_(), nullable=False),
        pa.field("x1", pa.float64(), nullable=False),  # box of the visible part, original pixels
        pa.field("y1", pa.float64(), nullable=False),
        pa.field("x2", pa.float64(), nullable=False),
        pa.field("y2", pa.float64(), nullable=False),
        pa.field("visible_fraction", pa.float64(), nullable=False),  # visible share of the whole shape
        pa.field("in_caption", pa.bool_(), nullable=False),
        pa.field("phrase_index", pa.int32(), nullable=False),  # into the clip's phrases; -1: distractor
        pa.field("action", pa.string(), nullable=False),  # canonical verb phrase: "moves to the left"
        pa.field("target_object_id", pa.int32(), nullable=False),  # what a human acts on; -1: nothing
    ]
)
ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class SynthConfig:
    """What a synthetic dataset is made of. Defaults suit the CPU demo (params.yaml `demo.synthetic`)."""

    seed: int = 42
    pool_clips: int = 240
    train_clips: int = 48
    val_clips: int = 16
    test_clips: int = 24
    width: int = 160
    height: int = 96
    fps: float = 10.0
    seconds: float = 8.0
    preset: str = "veryfast"
    crf: int = 20

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2 or self.width < 64 or self.height < 48:
            raise ValueError(f"frame size must be even and at least 64x48 (yuv420p), got {self.width}x{self.height}")
        if self.fps < 5 or self.seconds <= 0:
            raise ValueError(f"need fps >= 5 (the annotation grid is 5 fps) and seconds > 0, got fps={self.fps}, seconds={self.seconds}")
        if min(self.split_counts.values()) < 0:
            raise ValueError(f"split sizes must be >= 0, got {self.split_counts}")

    @property
    def split_counts(self) -> dict[str, int]:
        return {split: getattr(self, f"{split}_clips") for split in SPLITS}

    @property
    def n_frames(self) -> int:
        return max(1, int(round(self.seconds * self.fps)))

    @property
    def encoder(self) -> EncoderSettings:
        return EncoderSettings(preset=self.preset, crf=self.crf)

    def render_fingerprint(self) -> str:
        """Identifies what each clip renders to (every parameter but the split sizes)."""
        render = {k: v for k, v in asdict(self).items() if not k.endswith("_clips")}
        render["generator_version"] = GENERATOR_VERSION
        digest = hashlib.sha256(json.dumps(render, sort_keys=True).encode()).hexdigest()[:16]
        return f"grove-synthetic v{GENERATOR_VERSION} {digest}"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], source: str = "<config>") -> "SynthConfig":
        """Build from a mapping such as params.yaml `demo.synthetic` (plus `seed`); unknown keys are an error."""
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{source}: unknown synthetic-data parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(values))


def config_from_params(params_file: str | os.PathLike[str], profile: str | None = None) -> SynthConfig:
    """The synthetic-data parameters of a params.yaml profile: its `seed` and `synthetic` section.

    The profile is `profile`, else `$GROVE_PROFILE`, else the file's `profile:` key, else "demo". A
    profile without a `synthetic` section (the paper one) gets the defaults with its seed.
    """
    path = Path(params_file)
    try:
        params = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the params file: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of profiles at the top level")
    name = profile or os.environ.get("GROVE_PROFILE") or params.get("profile") or "demo"
    section = params.get(name)
    if not isinstance(section, dict):
        raise ValueError(f"{path}: no profile {name!r}")
    values = dict(section.get("synthetic") or {})
    if "seed" in section:
        values.setdefault("seed", section["seed"])
    return SynthConfig.from_mapping(values, source=f"{path}: profile {name!r}")


def rendered_video_folders(folders: Iterable[Path]) -> set[Path]:
    """The folders among `folders` that hold videos rendered by `grove data synth`: the `videos/` folder
    of a dataset whose manifest says kind "synthetic" (converted copies of its tables keep pointing there)."""
    rendered = set()
    for folder in set(folders):
        try:
            manifest = read_manifest(Path(folder).parent)
        except ValueError:
            continue
        if manifest.get("kind") == "synthetic" and manifest.get("creator") == "grove data synth":
            rendered.add(folder)
    return rendered


def split_counts_for_total(total: int) -> dict[str, int]:
    """Split `total` clips by SPLIT_SHARES: each labelled split gets at least one clip once total >= 4."""
    if total < 0:
        raise ValueError(f"the number of clips must be >= 0, got {total}")
    counts = {split: int(total * share) for split, share in SPLIT_SHARES.items() if split != "pool"}
    if total >= 4:
        counts = {split: max(1, n) for split, n in counts.items()}
    counts["pool"] = total - sum(counts.values())
    return {split: counts[split] for split in SPLITS}


def with_split_counts(config: SynthConfig, counts: Mapping[str, int]) -> SynthConfig:
    return replace(config, **{f"{split}_clips": n for split, n in counts.items()})


# ---------------------------------------------------------------------------------------------- one clip


@dataclass(frozen=True)
class ClipTask:
    config: SynthConfig
    split: str
    index: int
    video_file: str  # absolute path of the MP4
    fingerprint: str


@dataclass
class ClipResult:
    clip: dict[str, Any]
    boxes: dict[str, list]  # BOX_SCHEMA columns
    frame_objects: dict[str, list]  # FRAME_OBJECT_SCHEMA columns
    encoded: bool


def clip_ids(split: str, index: int) -> tuple[str, str]:
    """(video_id, clip_id) of clip `index` of `split`."""
    return f"synth-{split}-{index:06d}", "0"


def _clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS.index(split), index])


def _visible_shares(scene: Scene, visibility: dict[int, Any], n_annotated: int) -> dict[int, tuple[float, bool]]:
    """Per caption entity: share of annotated frames where any of its instances is visible, and whether it is ever hidden."""
    owner = {inst.object_id: inst.entity for inst in scene.instances}
    seen: dict[int, int] = {i: 0 for i, e in enumerate(scene.entities) if e.in_caption}
    for frame in visibility.values():
        for entity in {owner[o] for o in frame.object_ids} & seen.keys():
            seen[entity] += 1
    return {e: (count / n_annotated, count < n_annotated) for e, count in seen.items()}


def scene_is_valid(scene: Scene, visibility: dict[int, Any], n_annotated: int) -> bool:
    """Every caption phrase is seen often enough for its motion; one that hides is hidden at least once."""
    for entity, (share, ever_hidden) in _visible_shares(scene, visibility, n_annotated).items():
        motion = scene.entities[entity].motion
        if share < MIN_VISIBLE_SHARE.get(motion, DEFAULT_MIN_VISIBLE_SHARE) or share == 0:
            return False
        if motion == "hides" and not ever_hidden:
            return False
    return True


def _clip_row(task: ClipTask, scene: Scene, n_annotated: int, video_path: str) -> dict[str, Any]:
    config = task.config
    video_id, clip_id = clip_ids(task.split, task.index)
    entities = [
        {"kind": e.kind, "colour": e.colour, "size": e.size, "count": e.count, "motion": e.motion, "side": e.side,
         "window": list(e.window), "in_caption": e.in_caption, "phrase_index": e.phrase_index, "target": e.target}
        for e in scene.entities
    ]
    extra = {"synthetic": {"generator_version": GENERATOR_VERSION, "schedule": scene.schedule,
                           "occluder": list(scene.occluder) if scene.occluder else None,
                           "occluder_noun": scene.occluder_noun, "entities": entities}}
    return {
        "key": clip_key(video_id, clip_id), "dataset": DATASET_NAME, "split": task.split, "video_id": video_id,
        "clip_id": clip_id, "video_path": video_path, "fps": float(config.fps), "clip_start_frame": 0,
        "clip_end_frame": config.n_frames - 1, "num_frames": n_annotated, "width": config.width,
        "height": config.height, "caption": scene.caption, "tagged_caption": scene.tagged_caption,
        "phrases": scene.phrases, "extra": json.dumps(extra, sort_keys=True),
    }


def _append(columns: dict[str, list], **values: Any) -> None:
    for name, value in values.items():
        columns[name].append(value)


def _annotation_columns(key: str, scene: Scene, frame_ids: list[int], visibility: dict[int, Any]) -> tuple[dict, dict]:
    """Box-table and frame-object columns from the visibility of every annotated frame."""
    boxes: dict[str, list] = {name: [] for name in BOX_SCHEMA.names}
    objects: dict[str, list] = {name: [] for name in FRAME_OBJECT_SCHEMA.names}
    instances = {inst.object_id: inst for inst in scene.instances}
    first_instance = {}
    for inst in scene.instances:
        first_instance.setdefault(inst.entity, inst.object_id)
    actions = [canonical_action(e, scene.entities) for e in scene.entities]
    for t, frame_id in enumerate(frame_ids):
        frame = visibility[frame_id]
        rows = sorted(zip(frame.object_ids, frame.boxes, frame.fractions),
                      key=lambda r: (scene.entities[instances[r[0]].entity].phrase_index < 0,
                                     scene.entities[instances[r[0]].entity].phrase_index, r[0]))
        box_index = 0
        for object_id, (x1, y1, x2, y2), fraction in rows:
            inst = instances[object_id]
            entity = scene.entities[inst.entity]
            kind = KINDS[entity.kind]
            size = "large" if float(inst.scale[frame_id]) >= LARGE_FROM_SCALE else "small"
            box = {"x1": float(x1), "y1": float(y1), "x2": float(x2), "y2": float(y2)}
            if entity.in_caption:
                _append(boxes, key=key, frame_index=t, frame_id=frame_id, box_index=box_index,
                        phrase_index=entity.phrase_index, phrase=entity.phrase, score=None, **box)
                box_index += 1
            _append(objects, key=key, frame_index=t, frame_id=frame_id, object_id=object_id, entity_index=inst.entity,
                    kind=entity.kind, colour=entity.colour, size=size,
                    description=canonical_description(entity.kind, entity.colour, size), is_human=kind.is_human,
                    visible_fraction=float(fraction), in_caption=entity.in_caption, phrase_index=entity.phrase_index,
                    action=actions[inst.entity], target_object_id=first_instance.get(entity.target, -1), **box)
    return boxes, objects


def synthesize_clip(task: ClipTask) -> ClipResult:
    """Draw, render and annotate one clip; encode its MP4 unless one with the same fingerprint exists."""
    config = task.config
    encode = read_mp4_comment(task.video_file) != task.fingerprint
    rng = _clip_rng(config.seed, task.split, task.index)
    n_frames = config.n_frames
    frame_ids = annotated_frame_ids(config.fps, 0, n_frames - 1)
    annotated = set(frame_ids)
    drawn = range(n_frames) if encode else frame_ids
    for _ in range(MAX_SCENE_ATTEMPTS):
        try:
            scene = sample_scene(rng, config.width, config.height, n_frames, np.array(frame_ids))
        except Infeasible:
            continue
        compositor = make_compositor(scene, rng, config.width, config.height)
        pixels = np.empty((n_frames, config.height, config.width, 3), np.uint8) if encode else None
        visibility = {}
        for f in drawn:
            image, layout = compositor.draw(f, with_ids=f in annotated)
            if pixels is not None:
                pixels[f] = image
            if layout is not None:
                visibility[f] = compositor.visibility(layout)
        if scene_is_valid(scene, visibility, len(frame_ids)):
            break
    else:
        raise RuntimeError(f"clip {task.index} of split {task.split!r}: no valid scene in {MAX_SCENE_ATTEMPTS} draws "
                           f"at {config.width}x{config.height}; the frame is probably too small")
    if pixels is not None:
        encode_mp4(pixels, task.video_file, config.fps, config.encoder, comment=task.fingerprint)
    key = clip_key(*clip_ids(task.split, task.index))
    clip = _clip_row(task, scene, len(frame_ids), f"videos/{Path(task.video_file).name}")
    boxes, objects = _annotation_columns(key, scene, frame_ids, visibility)
    return ClipResult(clip, boxes, objects, encode)


# ---------------------------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class SynthSummary:
    root: Path
    clips: int
    encoded: int  # videos encoded by this run (the others were already there)
    seconds: float
    up_to_date: bool  # nothing was done: the folder already held this dataset


def official_file_names(split: str) -> dict[str, str]:
    """Official pickle file names of a split, raw and processed (the pool is the HowToGround1M stand-in)."""
    if split == "pool":
        return {"raw": "HowToGround1M_raw.pkl", "processed": "HowToGround1M.pkl"}
    return {form: f"iGround_{split}_set_{form}.pkl" for form in ("raw", "processed")}


def _manifest(config: SynthConfig, name: str, tables: Mapping[str, pa.Table]) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "synthetic",
        "creator": "grove data synth",
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "parameters": asdict(config),
        "fingerprint": config.render_fingerprint(),
        "splits": {split: n for split, n in config.split_counts.items()},
        "rows": {table_name: table.num_rows for table_name, table in tables.items()},
        "official": {split: official_file_names(split) for split in SPLITS if config.split_counts[split]},
        "complete": True,
    }


def _tasks(config: SynthConfig, videos: Path) -> list[ClipTask]:
    fingerprint = config.render_fingerprint()
    tasks = []
    for split, count in config.split_counts.items():
        for index in range(count):
            key = clip_key(*clip_ids(split, index))
            tasks.append(ClipTask(config, split, index, str(videos / f"{key}.mp4"), fingerprint))
    return tasks


def is_complete(root: str | os.PathLike[str], config: SynthConfig, name: str = DATASET_NAME) -> bool:
    """The folder already holds exactly this dataset: same manifest parameters, every file present."""
    paths = DatasetPaths(Path(root))
    manifest = read_manifest(paths.root)
    if not manifest.get("complete") or manifest.get("parameters") != asdict(config) or manifest.get("name") != name:
        return False
    if manifest.get("fingerprint") != config.render_fingerprint():
        return False
    files = [paths.clips, paths.boxes_raw, paths.boxes_processed, paths.frame_objects]
    files += [paths.official / f for split in manifest.get("official", {}) for f in official_file_names(split).values()]
    files += [Path(task.video_file) for task in _tasks(config, paths.videos)]
    return all(path.is_file() for path in files)


def _run_tasks(tasks: list[ClipTask], workers: int, progress: ProgressFn | None) -> list[ClipResult]:
    results: list[ClipResult] = []
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            results.append(synthesize_clip(task))
            if progress is not None:
                progress(len(results), len(tasks))
        return results
    # spawn, not fork: the parent may hold threads (Arrow, torch) that a forked child would inherit locked
    context = multiprocessing.get_context("spawn")
    chunk = max(1, min(4, len(tasks) // (workers * 8)))  # small chunks: steady progress, balanced workers
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for result in pool.map(synthesize_clip, tasks, chunksize=chunk):
            results.append(result)
            if progress is not None:
                progress(len(results), len(tasks))
    return results


def _concat_columns(parts: list[dict[str, list]], schema: pa.Schema) -> pa.Table:
    columns = {name: [value for part in parts for value in part[name]] for name in schema.names}
    return pa.table({name: pa.array(values, schema.field(name).type) for name, values in columns.items()}, schema=schema)


def _remove_stale_videos(videos: Path, keep: set[str]) -> int:
    """Delete MP4s this generator made for clips no longer in the dataset, and temporary files of killed runs."""
    removed = 0
    for path in sorted(videos.glob("synth-*.mp4")) + sorted(videos.glob(".synth-*.tmp")):
        if path.name not in keep:
            path.unlink()
            removed += 1
    return removed


def _write_official(root: Path, clips: pa.Table, raw: pa.Table, processed: pa.Table) -> None:
    for split in SPLITS:
        split_clips = clips.filter(pc.equal(clips["split"], split))
        if split_clips.num_rows == 0:
            continue
        keys = split_clips["key"]
        names = official_file_names(split)
        for form, boxes in (("raw", raw), ("processed", processed)):
            split_boxes = boxes.filter(pc.is_in(boxes["key"], value_set=keys))
            records = howtoground.tables_to_records(split_clips, split_boxes)
            howtoground.write_official(records, root / "official" / names[form])


def generate_dataset(
    out: str | os.PathLike[str],
    config: SynthConfig,
    workers: int | None = None,
    name: str = DATASET_NAME,
    progress: ProgressFn | None = None,
) -> SynthSummary:
    """Render the dataset `config` describes into the folder `out` (see the module docstring for re-runs).

    `workers` processes render clips in parallel (default: one per CPU); the output is the same for
    any number. `progress(done, total)` is called after each clip.
    """
    started = time.perf_counter()
    paths = DatasetPaths(Path(out))
    if is_complete(paths.root, config, name):
        logger.info("%s already holds this synthetic dataset (%d clips); nothing to do", paths.root, sum(config.split_counts.values()))
        return SynthSummary(paths.root, sum(config.split_counts.values()), 0, time.perf_counter() - started, True)
    paths.videos.mkdir(parents=True, exist_ok=True)
    tasks = _tasks(config, paths.videos)
    workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    results = _run_tasks(tasks, workers, progress)

    clips = pa.Table.from_pylist([r.clip for r in results], schema=CLIP_SCHEMA)
    raw = sort_boxes(_concat_columns([r.boxes for r in results], BOX_SCHEMA))
    processed = merge_same_phrase_boxes(raw)
    objects = _concat_columns([r.frame_objects for r in results], FRAME_OBJECT_SCHEMA).sort_by(
        [("key", "ascending"), ("frame_index", "ascending"), ("object_id", "ascending")])
    write_clips(clips, paths.clips)
    write_boxes(raw, paths.boxes_raw)
    write_boxes(processed, paths.boxes_processed)
    write_table(objects, paths.frame_objects, FRAME_OBJECT_SCHEMA)
    _write_official(paths.root, clips, raw, processed)
    removed = _remove_stale_videos(paths.videos, {Path(t.video_file).name for t in tasks})
    tables = {"clips": clips, "boxes_raw": raw, "boxes_processed": processed, "frame_objects": objects}
    write_manifest(paths.root, _manifest(config, name, tables))

    elapsed = time.perf_counter() - started
    encoded = sum(r.encoded for r in results)
    logger.info("synthetic dataset: %d clips (%d encoded, %d stale videos removed) in %.1f s (%.1f clips/s) -> %s",
                len(tasks), encoded, removed, elapsed, len(tasks) / max(elapsed, 1e-9), paths.root)
    return SynthSummary(paths.root, len(tasks), encoded, elapsed, False)
