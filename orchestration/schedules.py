"""The re-annotation schedule (weekly in both profiles): every shard whose stage-3 output was made by
another annotator version than the current one (a changed prompt, model or parameter) is annotated
again. Shards already current are skipped here, and the shard runner would skip them anyway.
"""

import datetime as dt

import dagster as dg

from orchestration.defs.annotation.assets import STAGE_KEYS, stage_code_version
from orchestration.defs.annotation.partitions import SHARDS, latest_materializations
from orchestration.profile import Profile

CODE_VERSION_TAG = "dagster/code_version"


def shard_code_versions(instance: dg.DagsterInstance, names: list[str]) -> dict[str, str]:
    """Shard → the code version of its latest stage-3 materialisation."""
    return {name: (record.event_log_entry.tags or {}).get(CODE_VERSION_TAG, "")
            for name, record in latest_materializations(instance, STAGE_KEYS[3], names).items()}


def evaluation_time(context: dg.ScheduleEvaluationContext) -> dt.datetime:
    """The tick's scheduled time, or now for an evaluation outside a tick (the UI's "Test schedule" without a
    time, `build_schedule_context()`): Dagster raises on reading an unset scheduled time."""
    try:
        scheduled = context.scheduled_execution_time
    except Exception:  # dagster's CheckError, not exported
        scheduled = None
    return scheduled or dt.datetime.now(dt.timezone.utc)


def build(profile: Profile) -> list:
    current = stage_code_version(profile, 3)
    stages = [STAGE_KEYS[stage] for stage in (1, 2, 3)]

    @dg.schedule(
        name="reannotation_schedule",
        cron_schedule=str(profile.get("annotation.reannotate_cron")),
        target=stages,
        description="Re-annotates every shard made by an older annotator version (current: "
        f"stage-3 version {current}).",
    )
    def reannotation_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        names = list(context.instance.get_dynamic_partitions(SHARDS.name))
        versions = shard_code_versions(context.instance, names)
        outdated = [name for name in names if versions.get(name) != current]
        if not outdated:
            return dg.SkipReason(f"all {len(names)} shards are annotated with the current version {current}")
        stamp = evaluation_time(context).isoformat()
        return [
            dg.RunRequest(run_key=f"{name}:{current}:{stamp}", partition_key=name, asset_selection=stages,
                          tags={"grove/annotator_version": current})
            for name in outdated
        ]

    return [reannotation_schedule]
