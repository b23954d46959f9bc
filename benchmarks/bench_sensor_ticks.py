"""The annotation shard sensor and the re-annotation schedule with 1,000 shard partitions: goal under 1 s a tick.

    .venv/bin/python benchmarks/bench_sensor_ticks.py [--shards 1000] [--repeats 3]

A `paper`-profile catalog of `--shards` x 10 clips (shards of 10 clips, so the plan has `--shards`
shards without a million-row catalog), a Dagster instance (the storage `grove demo` configures)
holding every shard as a partition with a stage-1 and a stage-3 materialisation each. Times, as
medians of `--repeats` (each on a fresh sensor cursor where it matters): the sensor's first tick
(plans every shard, requests them all), a tick with nothing new, a tick after a new catalog (reads
every shard's latest stage-1 record to find re-planned ones), and the schedule's tick (every shard's
latest stage-3 record). Prints each and the ratio goal / slowest (> 1 meets the goal).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import dagster as dg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grove.data.schema import clip_table, write_clips  # noqa: E402
from orchestration import schedules, sensors  # noqa: E402
from orchestration.defs.annotation.assets import STAGE_KEYS  # noqa: E402
from orchestration.defs.raw_videos.assets import CATALOG  # noqa: E402
from orchestration.demo import instance_settings  # noqa: E402
from orchestration.profile import Profile, load_profile  # noqa: E402
from orchestration.resources import PipelinePaths  # noqa: E402

GOAL_SECONDS = 1.0


def profile_with_small_shards(shards: int) -> Profile:
    base = load_profile("paper")
    params = copy.deepcopy(dict(base.params))
    params["annotation"].update(shard_size=10, new_shards_per_tick=shards)
    return Profile(base.name, params, base.params_file)


def write_catalog(paths: PipelinePaths, clips: int) -> None:
    rows = [dict(key=f"v{i:07d}_0", dataset="pool", split="all", video_id=f"v{i:07d}", clip_id="0",
                 video_path=f"videos/v{i:07d}.mp4", fps=30.0, clip_start_frame=0, clip_end_frame=239, num_frames=0,
                 width=455, height=256, caption="", tagged_caption="", phrases=[], extra={}) for i in range(clips)]
    write_clips(clip_table(rows), paths.path("catalog") / "clips.parquet")


def timed(action: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    profile = profile_with_small_shards(args.shards)
    sensor = next(s for s in sensors.build(profile) if s.name == "annotation_shard_sensor")
    schedule = schedules.build(profile)[0]
    when = dt.datetime(2026, 12, 7, 3, 0, tzinfo=dt.timezone.utc)
    times: dict[str, list[float]] = {"first": [], "unchanged": [], "new catalog": [], "schedule": []}
    with tempfile.TemporaryDirectory(prefix="grove-bench-ticks-") as tmp:
        paths = PipelinePaths(root=str(Path(tmp) / "runs"))
        write_catalog(paths, args.shards * 10)
        with dg.instance_for_test(overrides=instance_settings(Path(tmp) / "home", gpu_slots=1)) as instance:

            def tick(cursor: str | None) -> dg.SensorResult:
                with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"paths": paths}) as context:
                    return sensor(context)

            instance.report_runless_asset_event(dg.AssetMaterialization(CATALOG))
            for repeat in range(args.repeats):
                seconds, first = timed(lambda: tick(None))
                times["first"].append(seconds)
                if repeat == 0:
                    names = list(first.dynamic_partitions_requests[0].partition_keys)
                    instance.add_dynamic_partitions("annotation_shards", names)
                    for name in names:
                        for stage in (1, 3):
                            instance.report_runless_asset_event(dg.AssetMaterialization(
                                STAGE_KEYS[stage], partition=name, metadata={"keys_hash": "an older key list"}))
                settled = tick(first.cursor)
                times["unchanged"].append(timed(lambda: tick(settled.cursor))[0])
                instance.report_runless_asset_event(dg.AssetMaterialization(CATALOG))
                seconds, changed = timed(lambda: tick(settled.cursor))
                times["new catalog"].append(seconds)
                with dg.build_schedule_context(instance=instance, scheduled_execution_time=when) as context:
                    seconds, requests = timed(lambda: schedule(context))
                times["schedule"].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{args.shards} shard partitions, paper profile (medians of {args.repeats}):")
    rows = [(f"shard sensor, first tick (plans, adds and requests {len(first.run_requests)})", median["first"]),
            ("shard sensor, nothing new", median["unchanged"]),
            (f"shard sensor, new catalog ({len(changed.run_requests)} shards re-planned)", median["new catalog"]),
            (f"re-annotation schedule ({len(requests)} shards outdated)", median["schedule"])]
    for label, seconds in rows:
        print(f"  {label:<62} {seconds:.3f} s")
    slowest = max(median.values())
    print(f"goal {GOAL_SECONDS:.1f} s a tick: ratio goal/slowest = {GOAL_SECONDS / slowest:.2f} (> 1 meets it)")


if __name__ == "__main__":
    main()
