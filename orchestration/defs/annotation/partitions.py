"""Annotation shards as Dagster partitions.

One partition per shard of about `annotation.shard_size` clips, never one per video (the UI slows
past ~100k partitions). The shard names come from the annotation folder's shard plan, which
annotation.plan_shards brings up to date with the catalog: new clips land in new shards, and a
planned shard keeps its clips for good (annotation/shards.py). A partition key therefore always
names the same clips, and a new catalog only adds partitions. The shards exist only once the
catalog does: the shard sensor (and `grove demo`) adds them, a batch at a time (SQLite instance
storage fails on very large single additions).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import dagster as dg

from orchestration.profile import Profile
from orchestration.resources import PipelinePaths

SHARDS = dg.DynamicPartitionsDefinition(name="annotation_shards")


def annotator_config(profile: Profile) -> Any:
    """The profile's AnnotatorConfig (every `annotation.*` key that is one of its fields; the rest are
    orchestration settings): its hash is the annotator version, the stages' code version."""
    from annotation.shards import AnnotatorConfig

    names = {field.name for field in dataclasses.fields(AnnotatorConfig)}
    return AnnotatorConfig(**{key: value for key, value in profile.get("annotation").items() if key in names})


def planned_shards(profile: Profile, paths: PipelinePaths) -> dict[str, Any]:
    """Shard name → ShardSpec of every planned shard; empty before the catalog exists.

    Brings the plan (under the annotation folder) up to date with the current catalog first: a new
    catalog adds shards for its new clips and retires changed or removed clips from their shards.
    This is idempotent and locked, so the sensor, `grove demo` and every asset run may call it. The
    plan uses the annotator's own clip parameters (`clip_seconds` splits long videos into clips
    before sharding), so it names exactly the clips `run_stage` annotates.
    """
    from annotation.shards import plan_shards

    catalog = paths.path("catalog")
    if not (catalog / "clips.parquet").exists():
        return {}
    shards = plan_shards(catalog, paths.path("annotation"), int(profile.get("annotation.shard_size")),
                         clip_seconds=annotator_config(profile).clip_seconds)
    return {shard.name: shard for shard in shards}


def batch_size(profile: Profile) -> int:
    """Clips a stage runs between two resume points (`annotation.batch_size`; the library default if unset)."""
    from annotation.shards import DEFAULT_BATCH_SIZE

    return int(profile.get("annotation.batch_size", DEFAULT_BATCH_SIZE))


def shard_spec(profile: Profile, paths: PipelinePaths, name: str) -> Any:
    shards = planned_shards(profile, paths)
    if name not in shards:
        raise KeyError(
            f"{paths.path('catalog')}: the catalog has no shard '{name}' "
            f"(it has {len(shards)}: {', '.join(list(shards)[:3])}{'...' if len(shards) > 3 else ''})"
        )
    return shards[name]


def missing_shards(instance: dg.DagsterInstance, planned: list[str], limit: int | None = None) -> list[str]:
    """Planned shard names not yet partitions, in order, at most `limit` of them."""
    known = set(instance.get_dynamic_partitions(SHARDS.name))
    new = [name for name in planned if name not in known]
    return new[:limit] if limit is not None else new


MAX_RECORDS = 10_000  # Dagster refuses to fetch more event records than this at a time


def latest_materializations(instance: dg.DagsterInstance, key: dg.AssetKey, partitions: list[str],
                            page: int = MAX_RECORDS, batch: int = 500) -> dict[str, dg.EventLogRecord]:
    """Each partition's newest materialisation record (a partition never materialised is absent).

    Reads the records newest first, `batch` partitions a query (SQLite bounds a query's parameters)
    and `page` records a call, until every partition of the batch has been seen or none is left: a
    partition re-annotated many times cannot push another's latest record out of a fixed limit.
    """
    latest: dict[str, dg.EventLogRecord] = {}
    for start in range(0, len(partitions), batch):
        wanted = set(partitions[start : start + batch])
        records_filter = dg.AssetRecordsFilter(asset_key=key, asset_partitions=sorted(wanted))
        cursor = None
        while wanted:
            result = instance.fetch_materializations(records_filter, limit=page, cursor=cursor)
            for record in result.records:  # newest first
                if record.partition_key in wanted:
                    latest[record.partition_key] = record
                    wanted.discard(record.partition_key)
            if not result.has_more:
                break
            cursor = result.cursor
    return latest


def add_shards(instance: dg.DagsterInstance, names: list[str], batch: int = 1000) -> None:
    for start in range(0, len(names), batch):
        instance.add_dynamic_partitions(SHARDS.name, names[start : start + batch])


def shard_files(stage: int) -> tuple[str, ...]:
    """The data files a stage writes per shard (its done.json stamp aside)."""
    from annotation.shards import FAILURES, STAGE_FILES

    return (*STAGE_FILES[stage], FAILURES)
