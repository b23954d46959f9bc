"""Sensors: new videos in the raw folder → a new catalog; a new catalog → new annotation shards.

The shard plan only grows: a new catalog's clips go into new shards, and finished shards are never
re-planned (annotation/shards.py). So the shard sensor requests runs for new shards only, plus any
shard whose recorded key list differs from the plan's (a plan that was deleted and rebuilt), and a
merge of the pool when a catalog only retired clips (no new shard whose annotation would trigger it).

Downstream of the shards, declarative automation conditions (eager) keep the lineage fresh; the
automation sensor that evaluates them is defined here too.
"""

import hashlib
import json
import os
from pathlib import Path

import dagster as dg

from orchestration.defs.annotation.assets import POOL, STAGE_KEYS
from orchestration.defs.annotation.partitions import SHARDS, add_shards, missing_shards, planned_shards
from orchestration.defs.raw_videos.assets import CATALOG, pool_videos_root
from orchestration.profile import Profile
from orchestration.resources import PipelinePaths

STAGES = [STAGE_KEYS[stage] for stage in (1, 2, 3)]


def folder_fingerprint(root: Path) -> tuple[str, int]:
    """A hash of the video files under `root` (relative path, size, mtime) and their count."""
    from grove.data.catalog import find_videos

    digest = hashlib.sha256()
    files = find_videos(root)
    for path in files:
        info = os.stat(path)
        digest.update(f"{path.relative_to(root).as_posix()}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32], len(files)


def latest_shard_hashes(instance: dg.DagsterInstance, names: list[str]) -> dict[str, str]:
    """Shard name → the `keys_hash` its latest stage-1 materialisation recorded."""
    hashes: dict[str, str] = {}
    for start in range(0, len(names), 500):
        batch = names[start : start + 500]
        result = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=STAGES[0], asset_partitions=batch), limit=len(batch) * 50
        )
        for record in result.records:  # newest first
            materialization = record.asset_materialization
            if materialization is None or materialization.partition in hashes:
                continue
            value = materialization.metadata.get("keys_hash")
            hashes[materialization.partition] = value.value if value is not None else ""
    return hashes


def build(profile: Profile) -> list:
    limit = int(profile.get("annotation.new_shards_per_tick"))

    @dg.sensor(
        name="new_videos_sensor",
        target=[CATALOG],
        minimum_interval_seconds=300,
        description="Re-catalogs the pool when video files under its folder appear, disappear or change.",
    )
    def new_videos_sensor(context: dg.SensorEvaluationContext, paths: PipelinePaths) -> dg.SensorResult | dg.SkipReason:
        try:
            root = pool_videos_root(profile, paths)
        except FileNotFoundError as exc:
            return dg.SkipReason(str(exc))
        if not root.is_dir():
            return dg.SkipReason(f"{root}: no folder of videos yet")
        fingerprint, count = folder_fingerprint(root)
        if fingerprint == context.cursor:
            return dg.SkipReason(f"{root}: {count} videos, unchanged")
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=fingerprint, asset_selection=[CATALOG], tags={"grove/videos": str(count)})],
            cursor=fingerprint,
        )

    @dg.sensor(
        name="annotation_shard_sensor",
        target=[*STAGES, POOL],
        minimum_interval_seconds=60,
        description=f"Adds the new shards of a new catalog as partitions (at most {limit} a tick) and annotates "
        "them (finished shards are never re-planned); re-merges the pool when a catalog only removed or "
        "changed clips.",
    )
    def annotation_shard_sensor(context: dg.SensorEvaluationContext, paths: PipelinePaths) -> dg.SensorResult | dg.SkipReason:
        from annotation.shards import load_plan

        records = context.instance.fetch_materializations(CATALOG, limit=1).records
        if not records:
            return dg.SkipReason("no catalog yet")
        catalog_id = records[0].storage_id
        cursor = json.loads(context.cursor) if context.cursor else {}
        planned = planned_shards(profile, paths)  # extends the plan with the catalog's new clips
        new = missing_shards(context.instance, list(planned), limit)
        changed: list[str] = []
        if cursor.get("catalog") != catalog_id:
            known = [name for name in planned if name not in set(new)]
            recorded = latest_shard_hashes(context.instance, known)
            changed = [name for name in known if recorded.get(name) not in (None, planned[name].keys_hash)]
        backlog = len(missing_shards(context.instance, list(planned))) - len(new)
        generations = load_plan(paths.path("annotation")).generations
        # A generation that only retired clips starts no shard run, so nothing else re-merges the pool.
        retiring = [g for g in generations[cursor.get("generations", 0):] if g.retired and not g.shards]
        # The catalog counts as handled once every one of its shards is a partition.
        next_cursor = {"catalog": catalog_id if backlog == 0 else cursor.get("catalog"), "generations": len(generations)}
        requests = [
            dg.RunRequest(run_key=f"{name}:{planned[name].keys_hash}", partition_key=name, asset_selection=STAGES)
            for name in new + changed
        ]
        if retiring:
            requests.append(dg.RunRequest(run_key=f"plan-generation-{retiring[-1].index}", asset_selection=[POOL]))
        if not requests:
            return dg.SensorResult(skip_reason=f"{len(planned)} shards, all known and current", cursor=json.dumps(next_cursor))
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[SHARDS.build_add_request(new)] if new else [],
            cursor=json.dumps(next_cursor),
        )

    automation = dg.AutomationConditionSensorDefinition(
        "grove_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING if profile.get("orchestration.automation", True) else dg.DefaultSensorStatus.STOPPED,
        description="Evaluates the assets' declarative automation conditions (eager downstream of the shards).",
    )
    return [new_videos_sensor, annotation_shard_sensor, automation]


def sync_shard_partitions(profile: Profile, paths: PipelinePaths):
    """The partition sync `grove demo` runs before each group: every planned shard becomes a partition."""

    def sync(instance: dg.DagsterInstance) -> None:
        add_shards(instance, missing_shards(instance, list(planned_shards(profile, paths))))

    return sync
