"""Sensors: new videos in the raw folder → a new catalog; a new catalog → new annotation shards.

The new-videos sensor does not stat every file each tick: its cursor keeps an index of the folder's
directories (grove.data.discovery), so a tick stats each directory and lists only the ones whose
modification time changed; a full rescan, which also sees files rewritten in place, runs every
`orchestration.video_rescan_hours` (default 24) and whenever the cursor is reset (on demand, from
the UI or `dagster sensor cursor --delete new_videos_sensor`).

The shard plan only grows: a new catalog's clips go into new shards, and finished shards are never
re-planned (annotation/shards.py). So the shard sensor requests runs for new shards only, plus any
shard whose recorded key list differs from the plan's (a plan that was deleted and rebuilt), and a
merge of the pool when a catalog only retired clips (no new shard whose annotation would trigger it).

The shards themselves have no automation condition: this sensor and the re-annotation schedule are
the only sources of shard runs, so a new shard is requested once, and a new catalog does not request
every shard again. Downstream of the shards, declarative automation conditions (eager) keep the
lineage fresh, starting with the pool's merge; the automation sensor that evaluates them is defined
here too.
"""

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from orchestration.defs.annotation.assets import POOL, STAGE_KEYS
from orchestration.defs.annotation.partitions import (
    SHARDS,
    add_shards,
    latest_materializations,
    missing_shards,
    planned_shards,
)
from orchestration.defs.raw_videos.assets import CATALOG, pool_videos_root
from orchestration.profile import Profile
from orchestration.resources import PipelinePaths

if TYPE_CHECKING:  # imported where used: the discovery module imports PyAV, which loading the definitions skips
    from grove.data.discovery import FolderScan

STAGES = [STAGE_KEYS[stage] for stage in (1, 2, 3)]


RESCAN_HOURS = 24.0  # default of `orchestration.video_rescan_hours`: how often a tick is a full rescan


def videos_cursor(previous: str | None, root: Path, rescan_s: float, now: float) -> tuple[dict[str, Any], "FolderScan"]:
    """The new-videos sensor's next cursor and the folder scan behind it.

    The cursor holds the folder's directory index (grove.data.discovery: one entry per directory,
    not per file), the fingerprint of the last requested catalog, and a request counter within an
    epoch that starts when the cursor does: run keys stay unique when a folder returns to an earlier
    state, and a tick evaluated twice asks for the same run. No cursor (the first tick, or one reset
    in the UI: a rescan on demand), another format, or an index older than `rescan_s` means a full scan.
    """
    from grove.data.discovery import FolderIndex, scan_folder

    state = _load_cursor(previous)
    index = FolderIndex.from_json(state.get("index"))
    full = index is None or now - index.rescanned_at >= rescan_s
    scan = scan_folder(root, index, full=full, now=now)
    cursor = {"epoch": state.get("epoch", int(now)), "requests": state.get("requests", 0),
              "requested": state.get("requested"), "index": scan.index.to_json()}
    return cursor, scan


def _load_cursor(cursor: str | None) -> dict[str, Any]:
    try:
        value = json.loads(cursor) if cursor else {}
    except json.JSONDecodeError:  # the fingerprint string of an earlier version of this sensor
        return {}
    return value if isinstance(value, dict) else {}


def latest_shard_hashes(instance: dg.DagsterInstance, names: list[str]) -> dict[str, str]:
    """Shard name → the `keys_hash` its latest stage-1 materialisation recorded."""
    hashes: dict[str, str] = {}
    for name, record in latest_materializations(instance, STAGES[0], names).items():
        value = record.asset_materialization.metadata.get("keys_hash") if record.asset_materialization else None
        hashes[name] = value.value if value is not None else ""
    return hashes


def build(profile: Profile) -> list:
    limit = int(profile.get("annotation.new_shards_per_tick"))

    rescan_s = float(profile.get("orchestration.video_rescan_hours", RESCAN_HOURS)) * 3600

    @dg.sensor(
        name="new_videos_sensor",
        target=[CATALOG],
        minimum_interval_seconds=300,
        description="Re-catalogs the pool when video files under its folder appear, disappear or change: "
        "each tick stats the folder's directories and lists only those whose modification time changed; "
        f"a full rescan (every {rescan_s / 3600:g} h, or after a cursor reset) also sees files rewritten in place.",
    )
    def new_videos_sensor(context: dg.SensorEvaluationContext, paths: PipelinePaths) -> dg.SensorResult | dg.SkipReason:
        try:
            root = pool_videos_root(profile, paths)
        except FileNotFoundError as exc:
            return dg.SkipReason(str(exc))
        if not root.is_dir():
            return dg.SkipReason(f"{root}: no folder of videos yet")
        cursor, scan = videos_cursor(context.cursor, root, rescan_s, time.time())
        fingerprint, count = scan.index.fingerprint, scan.index.videos
        context.log.info("%s: %d videos (%s)", root, count, scan.summary())
        if fingerprint == cursor["requested"]:
            return dg.SensorResult(skip_reason=f"{root}: {count} videos, unchanged ({scan.summary()})",
                                   cursor=json.dumps(cursor, sort_keys=True))
        cursor |= {"requests": cursor["requests"] + 1, "requested": fingerprint}
        request = dg.RunRequest(run_key=f"{cursor['epoch']}-{cursor['requests']}-{fingerprint}", asset_selection=[CATALOG],
                                tags={"grove/videos": str(count)})
        return dg.SensorResult(run_requests=[request], cursor=json.dumps(cursor, sort_keys=True))

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
        description="Evaluates the assets' declarative automation conditions (eager downstream of the shards; "
        "the shards' runs come from the shard sensor and the re-annotation schedule).",
    )
    return [new_videos_sensor, annotation_shard_sensor, automation]


def sync_shard_partitions(profile: Profile, paths: PipelinePaths):
    """The partition sync `grove demo` runs before each group: every planned shard becomes a partition."""

    def sync(instance: dg.DagsterInstance) -> None:
        add_shards(instance, missing_shards(instance, list(planned_shards(profile, paths))))

    return sync
