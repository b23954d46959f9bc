"""The pool merge, incremental: only the shards that changed since the last merge are read again.

```
OUT/
  clips.parquet  boxes_raw.parquet  boxes_processed.parquet  rejects.parquet  dataset.json   the pool
  shards/merge_state.json   what the last merge was made from (a cache, not data: .dvcignore)
```

A merge writes every live clip's rows of every shard's stage-3 tables, and every stage's failures,
into one dataset folder (annotation.shards documents the shards). Read whole, that is every shard's
files, each checked against the sha256 its done.json records, on every merge: fine for a few
shards, a re-read of the whole pool for each new shard at 1,000 shards.

So a merge records, per shard, a token of what it read (the bytes of its three done.json files, the
size and modification time of each file it read, its key list and its retired clips), and the
size, modification time and sha256 of the pool files it wrote (the sha256 is compared only when
the time differs: a file DVC relinked from its cache is still the same file). The next merge re-reads only the shards
whose token differs (new shards, re-annotated ones, shards with newly retired clips). The rows of
every other shard are taken from the previous pool files: a clip's rows come from exactly one shard
(the one where the clip is live), so the previous pool filtered to the live keys of the unchanged
shards is exactly what those shards would give again. The kept and the new rows are sorted as a
whole merge sorts them; processed boxes are per clip, so merging them shard by shard gives the
rows of one merge over the whole pool. The files are byte-identical to a whole merge of the same
shards (tested).

A whole merge runs instead when there is no state, when the annotator's stage versions changed,
when a pool file is not the one the state describes (deleted, rewritten, checked out by DVC), or
when asked (`incremental=False`). The state is removed before the pool files are written and
written after them, so a killed merge leaves no state, and the next merge is a whole one.

What stays proportional to the pool: reading, sorting and writing the pool files themselves (one
file each, as the HowToGround1M format has them), one small done.json read per shard, and, in
long-video mode, the hierarchy of clip, segment and video captions, which is rebuilt from every clip.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from annotation.records import FAILURE_SCHEMA
from annotation.shards import (
    FAILURES,
    REJECTS,
    STAGES,
    AnnotatorConfig,
    ShardSpec,
    _read_shard_table,
    _sha256,
    _sum_stats,
    annotator_version,
    shard_dir,
    stage_version,
)
from grove.data.boxes import merge_same_phrase_boxes
from grove.data.dataset import DatasetPaths, write_manifest
from grove.data.schema import BOX_SCHEMA, CLIP_SCHEMA, sort_boxes, write_table
from grove.io import atomic_write_json, exclusive_lock

logger = logging.getLogger(__name__)

STATE = "merge_state.json"  # under OUT/shards/
LOCK = "merge_state.lock"  # under OUT/shards/: one merge of an output folder at a time
STATE_FORMAT = 1
CLIPS, BOXES_RAW, BOXES_PROCESSED = "clips.parquet", "boxes_raw.parquet", "boxes_processed.parquet"
# The pool's tables, the schema of each, and how its rows are ordered.
POOL_TABLES: dict[str, pa.Schema] = {CLIPS: CLIP_SCHEMA, BOXES_RAW: BOX_SCHEMA, BOXES_PROCESSED: BOX_SCHEMA,
                                     REJECTS: FAILURE_SCHEMA}
# The files of a shard a merge reads: stage 3's tables, and every stage's failures.
SHARD_FILES = tuple((3, name) for name in (CLIPS, BOXES_RAW)) + tuple((stage, FAILURES) for stage in STAGES)


@dataclass(frozen=True)
class MergeResult:
    out: Path
    shards: int  # shards with live clips, all of them in the pool
    read: tuple[str, ...]  # the shards whose tables this merge read (all of them in a whole merge)
    whole: bool  # a whole merge (else the previous pool's rows of the unchanged shards were kept)
    reason: str  # why a whole merge, or "incremental"


@dataclass(frozen=True)
class _ShardRecord:
    token: str  # changes whenever what the merge would read of the shard may have changed
    stats: dict[int, dict[str, Any]]  # each stage's statistics, from its done.json


def merge_pool(out_dir: str | Path, shards: Sequence[ShardSpec], config: AnnotatorConfig,
               incremental: bool = True) -> MergeResult:
    """Merge the shards' stage-3 tables into the pool under `out_dir` (layout in the module doc),
    reading only the shards that changed since the last merge when `incremental`."""
    out = Path(out_dir)
    versions = {stage: stage_version(config, stage) for stage in STAGES}
    live = [shard for shard in shards if shard.live_keys]  # a shard whose clips all left adds nothing
    with exclusive_lock(out / "shards" / LOCK):
        records = {shard.name: _shard_record(out, shard) for shard in live}
        state = _state(config, versions, records, {})
        previous, reason = _previous_state(out, state) if incremental else (None, "a whole merge was asked for")
        if previous is not None:
            reason = _not_incremental(previous, shards, live)
            previous = None if reason else previous
        unchanged = [] if previous is None else [s for s in live if previous["shards"].get(s.name) == records[s.name].token]
        kept = {s.name for s in unchanged}
        changed = [shard for shard in live if shard.name not in kept]
        tables = _sorted_tables([_shard_tables(out, s, versions) for s in changed])
        if previous is not None:  # splice the read shards' rows into the previous pool's
            drop = _dropped_keys(shards, unchanged)
            tables = {name: _splice(_read_pool_table(out, name), drop, tables[name]) for name in POOL_TABLES}
        (out / "shards" / STATE).unlink(missing_ok=True)  # the pool files are about to change
        _write_pool(out, tables, [records[s.name].stats for s in live], config, versions)
        atomic_write_json(out / "shards" / STATE, state | {"outputs": _outputs(out)})
    result = MergeResult(out, len(live), tuple(s.name for s in changed), previous is None,
                         reason if previous is None else "incremental")
    logger.info("merged %d shards into %s: read %d (%s), kept the rows of %d from the previous pool", len(live),
                out, len(changed), result.reason, len(unchanged))
    return result


def _shard_record(out: Path, shard: ShardSpec) -> _ShardRecord:
    """A shard's token and statistics, from its done.json files and the stat of the files a merge reads."""
    digest = hashlib.sha256(json.dumps([shard.name, shard.keys_hash, list(shard.retired)]).encode())
    stats: dict[int, dict[str, Any]] = {}
    for stage in STAGES:
        done = shard_dir(out, stage, shard) / "done.json"
        try:
            raw = done.read_bytes()
        except OSError:
            raw = b""  # not done: the shard counts as changed, and reading it names the problem
        digest.update(f"\0stage{stage}\0".encode() + raw)
        try:
            stats[stage] = json.loads(raw).get("stats", {}) if raw else {}
        except (json.JSONDecodeError, AttributeError):
            stats[stage] = {}
    for stage, name in SHARD_FILES:
        digest.update(f"\0{stage}/{name}\0{_stamp(shard_dir(out, stage, shard) / name)}".encode())
    return _ShardRecord(digest.hexdigest(), stats)


def _stamp(path: Path) -> list[int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def _outputs(out: Path) -> dict[str, dict[str, Any]]:
    """Each pool table's stamp (size, modification time) and sha256, as this merge wrote it."""
    return {name: {"stamp": _stamp(out / name), "sha256": _sha256(out / name)} for name in POOL_TABLES}


def _same_file(path: Path, recorded: Any) -> bool:
    """Whether `path` is the file a merge recorded: the same stamp, or else (a copy, or a file DVC
    relinked from its cache, has a new modification time) the same sha256."""
    if not isinstance(recorded, Mapping) or recorded.get("stamp") is None:
        return False
    if recorded["stamp"] == _stamp(path):
        return True
    return path.exists() and _sha256(path) == recorded.get("sha256")


def _state(config: AnnotatorConfig, versions: Mapping[int, str], records: Mapping[str, _ShardRecord],
           outputs: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "format": STATE_FORMAT,
        "annotator_version": annotator_version(config),
        "stage_versions": {str(stage): version for stage, version in versions.items()},
        "shards": {name: record.token for name, record in records.items()},
        "outputs": dict(outputs),
    }


def _previous_state(out: Path, current: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The state of the last merge, if the pool files are still the ones it wrote; else why not."""
    path = out / "shards" / STATE
    try:
        previous = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "no previous merge"
    except (OSError, json.JSONDecodeError) as exc:
        return None, f"{path}: unreadable ({exc})"
    if not isinstance(previous, dict) or previous.get("format") != STATE_FORMAT:
        return None, f"{path}: another state format"
    for name in ("annotator_version", "stage_versions"):
        if previous.get(name) != current[name]:
            return None, f"the annotator changed ({name})"
    outputs = previous.get("outputs", {})
    for name in POOL_TABLES:
        if not _same_file(out / name, outputs.get(name)):
            return None, f"{out / name}: not the file the last merge wrote"
    return previous, ""


def _not_incremental(previous: Mapping[str, Any], shards: Sequence[ShardSpec], live: Sequence[ShardSpec]) -> str:
    """Why the previous pool's rows cannot be kept shard by shard ("" when they can)."""
    known = {shard.name for shard in shards}
    left = [name for name in previous["shards"] if name not in known]
    if left:  # its keys are unknown here, so its rows could not be taken out
        return f"{left[0]} was merged last time and is not among the shards now"
    keys = pa.chunked_array([pa.array(s.live_keys, pa.string()) for s in live], pa.string())
    if pc.count_distinct(keys).as_py() != len(keys):  # a plan never does this; hand-made shards may
        return "two shards hold the same live clip"
    return ""


def _dropped_keys(shards: Sequence[ShardSpec], unchanged: Sequence[ShardSpec]) -> pa.Array:
    """The keys whose rows in the previous pool must go: every key of a shard read again or no longer
    live, but the keys live in an unchanged shard (a clip retired from a changed shard may be live,
    unchanged, in a later one)."""
    kept = {shard.name for shard in unchanged}
    candidates = pa.array([key for shard in shards if shard.name not in kept for key in shard.keys], pa.string())
    live = pa.chunked_array([pa.array(shard.live_keys, pa.string()) for shard in unchanged], pa.string())
    return candidates.filter(pc.invert(pc.is_in(candidates, value_set=live)))


def _shard_tables(out: Path, shard: ShardSpec, versions: Mapping[int, str]) -> dict[str, pa.Table]:
    """A shard's contribution to the pool: its live clips' rows (checked against its done.json)."""
    raw = _without(_read_shard_table(out, 3, shard, BOXES_RAW, versions[3]), shard.retired)
    failures = [_without(_read_shard_table(out, stage, shard, FAILURES, versions[stage]), shard.retired)
                for stage in STAGES]
    return {
        CLIPS: _without(_read_shard_table(out, 3, shard, CLIPS, versions[3]), shard.retired),
        BOXES_RAW: raw,
        # processed boxes merge the boxes of one phrase in one frame of one clip: per clip, so per shard
        BOXES_PROCESSED: merge_same_phrase_boxes(raw),
        REJECTS: _concat(failures, FAILURE_SCHEMA),
    }


def _read_pool_table(out: Path, name: str) -> pa.Table:
    """A pool table as the previous merge wrote it, in its canonical schema (as the new rows are)."""
    return pq.read_table(out / name).cast(POOL_TABLES[name])


def _without(table: pa.Table, keys: Sequence[str]) -> pa.Table:
    if not keys:
        return table
    return table.filter(pc.invert(pc.is_in(table["key"], value_set=pa.array(keys, pa.string()))))


def _concat(tables: Sequence[pa.Table], schema: pa.Schema) -> pa.Table:
    return pa.concat_tables([t.cast(schema) for t in tables]) if tables else schema.empty_table()


def _sorted_tables(parts: Sequence[Mapping[str, pa.Table]]) -> dict[str, pa.Table]:
    """The shards' tables concatenated and sorted in the pool's row order (key first: each clip's rows
    come from one shard, and the sorts are stable), as contiguous tables (so the Parquet bytes do not
    depend on how the rows were gathered)."""
    tables = {}
    for name, schema in POOL_TABLES.items():
        table = _concat([part[name] for part in parts], schema)
        if name == CLIPS:
            table = table.sort_by([("key", "ascending")])
        elif name == REJECTS:
            table = table.sort_by([("key", "ascending"), ("stage", "ascending")])
        else:
            table = sort_boxes(table)
        tables[name] = table.combine_chunks()
    return tables


def _splice(previous: pa.Table, drop: pa.Array, new: pa.Table) -> pa.Table:
    """`previous` without the rows of the keys in `drop`, with `new` inserted where a sort would put it.

    Both tables are in the pool's order, whose first column is the key, so each key's rows are one
    run; no kept key is in `new`. The result is what sorting both together gives, without the sort:
    the kept runs are sliced around the new ones, so the work is one copy of the pool.
    """
    keys, starts = _key_runs(previous)
    dropped = pc.is_in(keys, value_set=drop).to_numpy(zero_copy_only=False)
    new_keys, new_starts = _key_runs(new)
    # where each new run goes: before the first previous run whose key is not smaller
    places = [int(starts[_bisect_left(keys, key)]) for key in new_keys.to_pylist()]
    pieces, done, first = [], 0, 0  # rows of `previous` placed so far; first new run not placed yet
    for run in range(1, len(places) + 1):
        if run == len(places) or places[run] != places[first]:  # new runs first..run-1 go at one place
            pieces += _kept_slices(previous, starts, dropped, done, places[first])
            pieces.append(new.slice(int(new_starts[first]), int(new_starts[run] - new_starts[first])))
            done, first = places[first], run
    pieces += _kept_slices(previous, starts, dropped, done, previous.num_rows)
    return pa.concat_tables(pieces).combine_chunks() if pieces else previous.schema.empty_table()


def _key_runs(table: pa.Table) -> tuple[pa.Array, np.ndarray]:
    """Each run of equal keys: its key, and the row where it starts (one more entry: the row count)."""
    if table.num_rows == 0:
        return pa.array([], pa.string()), np.zeros(1, np.int64)
    runs = pc.run_end_encode(table["key"].combine_chunks(), run_end_type=pa.int64())
    return runs.values, np.concatenate([[0], runs.run_ends.to_numpy()])


def _bisect_left(keys: pa.Array, key: str) -> int:
    """The first index of the sorted `keys` whose key is not smaller than `key` (len(keys) if none)."""
    low, high = 0, len(keys)
    while low < high:
        middle = (low + high) // 2
        if keys[middle].as_py() < key:
            low = middle + 1
        else:
            high = middle
    return low


def _kept_slices(table: pa.Table, starts: np.ndarray, dropped: np.ndarray, first: int, last: int) -> list[pa.Table]:
    """The rows first..last-1 of `table` (both run boundaries) outside dropped runs, one slice a stretch of kept runs."""
    low, high = int(np.searchsorted(starts, first)), int(np.searchsorted(starts, last))
    # +1 where a stretch of kept runs begins, -1 where it ends (the edges count as dropped)
    edges = np.diff(np.concatenate([[1], dropped[low:high], [1]]).astype(np.int8))
    begins, ends = np.flatnonzero(edges == -1) + low, np.flatnonzero(edges == 1) + low
    return [table.slice(int(starts[b]), int(starts[e] - starts[b])) for b, e in zip(begins, ends)]


def _write_pool(out: Path, tables: Mapping[str, pa.Table], stats: Sequence[Mapping[int, Mapping[str, Any]]],
                config: AnnotatorConfig, versions: Mapping[int, str]) -> None:
    for name, schema in POOL_TABLES.items():
        write_table(tables[name], out / name, schema)
    clips = tables[CLIPS]
    splits = {item["values"]: item["counts"] for item in pc.value_counts(clips["split"]).to_pylist()}
    manifest = {
        "name": config.dataset_name,
        "kind": "auto-annotated",
        "splits": dict(sorted(splits.items())),
        "creator": {"tool": "grove annotate", "annotator_version": annotator_version(config),
                    "stage_versions": {str(s): v for s, v in versions.items()}, "config": config.resolved()},
        "stats": {
            "clips": clips.num_rows,
            "boxes_raw": tables[BOXES_RAW].num_rows,
            "rejects": tables[REJECTS].num_rows,
            "stage2": _sum_stats([shard[2] for shard in stats]),
            "stage3": _sum_stats([shard[3] for shard in stats]),
        },
    }
    if config.clip_seconds:
        from annotation.longvideo import write_hierarchy

        manifest["hierarchy"] = write_hierarchy(out, clips, config)
    write_manifest(out, manifest)
