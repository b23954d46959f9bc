"""The new-videos sensor, the annotation-shard sensor (batches of new partitions) and the re-annotation schedule."""

import copy
import datetime as dt
import json

import dagster as dg
import pytest

from grove.data.schema import clip_table, write_clips
from orchestration import schedules, sensors
from orchestration.defs.annotation.assets import STAGE_KEYS, stage_code_version
from orchestration.defs.annotation.partitions import planned_shards
from orchestration.profile import Profile
from orchestration.resources import PipelinePaths


def profile_with(base: Profile, **annotation) -> Profile:
    params = copy.deepcopy(dict(base.params))
    params["annotation"].update(annotation)
    return Profile(base.name, params, base.params_file)


def by_name(defs: list, name: str):
    return next(d for d in defs if d.name == name)


def write_catalog(paths: PipelinePaths, clips: int) -> None:
    rows = [
        dict(key=f"v{i:03d}_0", dataset="pool", split="pool", video_id=f"v{i:03d}", clip_id="0", video_path=f"videos/v{i:03d}.mp4",
             fps=10.0, clip_start_frame=0, clip_end_frame=19, num_frames=0, width=64, height=48, caption="",
             tagged_caption="", phrases=[], extra={})
        for i in range(clips)
    ]
    write_clips(clip_table(rows), paths.path("catalog") / "clips.parquet")


@pytest.fixture
def paths(tmp_path):
    return PipelinePaths(root=str(tmp_path))


def evaluate_sensor(sensor_def, instance, paths, cursor=None):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"paths": paths}) as context:
        return sensor_def(context)


def test_new_videos_sensor_requests_a_catalog_when_the_folder_changes(tiny_profile, dagster_instance, paths):
    sensor_def = by_name(sensors.build(tiny_profile), "new_videos_sensor")
    assert isinstance(evaluate_sensor(sensor_def, dagster_instance, paths), dg.SkipReason)  # no folder yet

    videos = paths.path("synthetic") / "videos"
    videos.mkdir(parents=True)
    (videos / "a.mp4").write_bytes(b"a")
    (videos / "notes.txt").write_text("not a video")
    first = evaluate_sensor(sensor_def, dagster_instance, paths)
    (request,) = first.run_requests
    assert request.asset_selection == [dg.AssetKey("pool_catalog")] and request.tags["grove/videos"] == "1"

    unchanged = evaluate_sensor(sensor_def, dagster_instance, paths, cursor=first.cursor)
    assert not unchanged.run_requests and "1 videos, unchanged" in unchanged.skip_reason.skip_message

    (videos / "b.mp4").write_bytes(b"b")
    second = evaluate_sensor(sensor_def, dagster_instance, paths, cursor=first.cursor)
    assert second.run_requests[0].run_key != request.run_key and second.cursor != first.cursor


def test_shard_sensor_adds_new_shards_in_batches_and_requests_their_annotation(tiny_profile, dagster_instance, paths):
    profile = profile_with(tiny_profile, shard_size=4, new_shards_per_tick=2)
    sensor_def = by_name(sensors.build(profile), "annotation_shard_sensor")
    assert isinstance(evaluate_sensor(sensor_def, dagster_instance, paths), dg.SkipReason)  # no catalog yet

    write_catalog(paths, clips=14)  # 4 shards of 4, 4, 4, 2 clips
    dagster_instance.report_runless_asset_event(dg.AssetMaterialization("pool_catalog"))
    first = evaluate_sensor(sensor_def, dagster_instance, paths)
    (add,) = first.dynamic_partitions_requests
    assert add.partitions_def_name == "annotation_shards" and list(add.partition_keys) == ["shard-00000", "shard-00001"]
    assert [r.partition_key for r in first.run_requests] == ["shard-00000", "shard-00001"]
    assert all(r.asset_selection == [STAGE_KEYS[1], STAGE_KEYS[2], STAGE_KEYS[3]] for r in first.run_requests)
    assert json.loads(first.cursor)["catalog"] is None  # the catalog is not handled until every shard is a partition

    dagster_instance.add_dynamic_partitions("annotation_shards", list(add.partition_keys))
    second = evaluate_sensor(sensor_def, dagster_instance, paths, cursor=first.cursor)
    assert list(second.dynamic_partitions_requests[0].partition_keys) == ["shard-00002", "shard-00003"]
    dagster_instance.add_dynamic_partitions("annotation_shards", ["shard-00002", "shard-00003"])

    # A new catalog: shard 0 was annotated from its current key list, shard 1 from an older one.
    stage1 = STAGE_KEYS[1]
    plan = planned_shards(profile, paths)
    dagster_instance.report_runless_asset_event(
        dg.AssetMaterialization(stage1, partition="shard-00000", metadata={"keys_hash": plan["shard-00000"].keys_hash})
    )
    dagster_instance.report_runless_asset_event(
        dg.AssetMaterialization(stage1, partition="shard-00001", metadata={"keys_hash": "an older key list"})
    )
    dagster_instance.report_runless_asset_event(dg.AssetMaterialization("pool_catalog"))
    third = evaluate_sensor(sensor_def, dagster_instance, paths, cursor=second.cursor)
    assert [r.partition_key for r in third.run_requests] == ["shard-00001"]  # its clips changed
    assert not third.dynamic_partitions_requests

    fourth = evaluate_sensor(sensor_def, dagster_instance, paths, cursor=third.cursor)
    assert not fourth.run_requests  # same catalog, already handled


def test_reannotation_schedule_requests_only_shards_of_an_older_annotator_version(tiny_profile, dagster_instance):
    schedule_def = by_name(schedules.build(tiny_profile), "reannotation_schedule")
    assert schedule_def.cron_schedule == tiny_profile.get("annotation.reannotate_cron")
    dagster_instance.add_dynamic_partitions("annotation_shards", ["shard-00000", "shard-00001"])
    current = stage_code_version(tiny_profile, 3)
    dagster_instance.report_runless_asset_event(
        dg.AssetMaterialization(STAGE_KEYS[3], partition="shard-00000", tags={"dagster/code_version": current})
    )
    dagster_instance.report_runless_asset_event(
        dg.AssetMaterialization(STAGE_KEYS[3], partition="shard-00001", tags={"dagster/code_version": "an old prompt"})
    )
    when = dt.datetime(2026, 11, 22, 3, 0, tzinfo=dt.timezone.utc)
    with dg.build_schedule_context(instance=dagster_instance, scheduled_execution_time=when) as context:
        requests = schedule_def(context)
    assert [r.partition_key for r in requests] == ["shard-00001"]
    assert requests[0].tags["grove/annotator_version"] == current

    dagster_instance.report_runless_asset_event(
        dg.AssetMaterialization(STAGE_KEYS[3], partition="shard-00001", tags={"dagster/code_version": current})
    )
    with dg.build_schedule_context(instance=dagster_instance, scheduled_execution_time=when) as context:
        result = schedule_def(context)
    assert isinstance(result, dg.SkipReason) and "current version" in result.skip_message


def test_the_reannotation_schedule_evaluates_without_a_scheduled_time(tiny_profile, dagster_instance):
    """The UI's "Test schedule" and `build_schedule_context()` give no scheduled time: now stands in for it."""
    schedule_def = by_name(schedules.build(tiny_profile), "reannotation_schedule")
    dagster_instance.add_dynamic_partitions("annotation_shards", ["shard-00000"])
    before = dt.datetime.now(dt.timezone.utc)
    with dg.build_schedule_context(instance=dagster_instance) as context:
        requests = schedule_def(context)
    assert [r.partition_key for r in requests] == ["shard-00000"]  # never annotated: outdated
    prefix = f"shard-00000:{stage_code_version(tiny_profile, 3)}:"
    assert requests[0].run_key.startswith(prefix)
    assert dt.datetime.fromisoformat(requests[0].run_key[len(prefix):]) >= before


def test_a_changed_stage_option_changes_the_code_version_of_that_stage_and_later_ones(tiny_profile):
    changed = profile_with(tiny_profile, stage2="transformers")
    assert stage_code_version(changed, 1) == stage_code_version(tiny_profile, 1)
    assert stage_code_version(changed, 2) != stage_code_version(tiny_profile, 2)
    assert stage_code_version(changed, 3) != stage_code_version(tiny_profile, 3)


def test_the_automation_sensor_covers_every_asset(tiny_profile):
    automation = by_name(sensors.build(tiny_profile), "grove_automation")
    assert isinstance(automation, dg.AutomationConditionSensorDefinition)
    assert automation.default_status == dg.DefaultSensorStatus.RUNNING


def test_shards_are_planned_from_the_clips_the_annotator_runs(tiny_profile, paths):
    """With `clip_seconds`, long videos are split into clips before sharding: the partitions' plan and
    the shard runner must see the same clips (else `run_stage` refuses a shard naming unknown clips)."""
    from annotation.shards import Annotator

    from orchestration.defs.annotation.partitions import annotator_config

    write_catalog(paths, clips=3)  # three 2-second videos
    split = profile_with(tiny_profile, shard_size=4, clip_seconds=0.5)
    planned = planned_shards(split, paths)
    annotator = Annotator(annotator_config(split), paths.path("catalog"), paths.path("annotation"))
    keys = annotator.catalog.clips["key"].to_pylist()
    assert len(keys) == 15 and [key for shard in planned.values() for key in shard.keys] == keys
    assert all(annotator.shard_clips(shard).num_rows == len(shard.keys) for shard in planned.values())
    # Whole clips again: every split clip is retired from its shard (v000_0 changed its span, v000_1...
    # left the catalog), and the three whole clips make a new shard; planned shards keep their key lists.
    whole = planned_shards(profile_with(tiny_profile, shard_size=4), paths)
    assert list(whole) == [*planned, "shard-00004"] and whole["shard-00004"].keys == ("v000_0", "v001_0", "v002_0")
    assert all(whole[name].keys == shard.keys and not whole[name].live_keys for name, shard in planned.items())


def test_one_annotator_serves_every_stage_and_shard_of_a_process_until_the_catalog_changes(tiny_profile, paths):
    from orchestration.defs.annotation.assets import process_annotator
    from orchestration.defs.annotation.partitions import annotator_config

    write_catalog(paths, clips=3)
    config, catalog, out = annotator_config(tiny_profile), paths.path("catalog"), paths.path("annotation")
    first = process_annotator(config, catalog, out)
    assert process_annotator(config, catalog, out) is first
    assert process_annotator(annotator_config(profile_with(tiny_profile, stage3="embedding")), catalog, out) is not first
    again = process_annotator(config, catalog, out)
    write_catalog(paths, clips=4)  # a rewritten catalog
    renewed = process_annotator(config, catalog, out)
    assert renewed is not again and renewed.catalog.clips.num_rows == 4


def test_automation_leaves_the_shards_to_the_shard_sensor_and_merges_the_pool_after_them(tiny_profile, dagster_instance,
                                                                                         tmp_path):
    """Shard runs have one source each: the shard sensor (new and re-planned shards) and the schedule
    (an older annotator). Automation requesting them too would run new shards twice, and re-request
    every shard (1,000 in `paper`) whenever a new catalog lands."""
    from orchestration.definitions import build_definitions
    from orchestration.defs.annotation.assets import POOL

    definitions = build_definitions(tiny_profile, tmp_path)
    selection = dg.AssetSelection.assets(dg.AssetKey("pool_catalog"), *STAGE_KEYS.values(), POOL)
    names = ["shard-00000", "shard-00001"]
    dagster_instance.report_runless_asset_event(dg.AssetMaterialization("pool_catalog"))
    result = dg.evaluate_automation_conditions(definitions, dagster_instance, selection)
    dagster_instance.add_dynamic_partitions("annotation_shards", names)  # as the shard sensor does
    result = dg.evaluate_automation_conditions(definitions, dagster_instance, selection, cursor=result.cursor)
    assert all(result.get_num_requested(key) == 0 for key in STAGE_KEYS.values())  # eager asked for both

    for name in names:  # the shard sensor's runs: each output with its data version, its blocking check passed
        for stage, key in STAGE_KEYS.items():
            dagster_instance.report_runless_asset_event(
                dg.AssetMaterialization(key, partition=name, tags={"dagster/data_version": f"{key.path[-1]}-{name}"}))
            dagster_instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(asset_key=key, check_name=f"stage{stage}_schema", passed=True, partition=name))
    result = dg.evaluate_automation_conditions(definitions, dagster_instance, selection, cursor=result.cursor)
    assert result.get_num_requested(POOL) == 1 and all(result.get_num_requested(key) == 0 for key in STAGE_KEYS.values())

    dagster_instance.report_runless_asset_event(dg.AssetMaterialization("pool_catalog"))  # a new catalog
    result = dg.evaluate_automation_conditions(definitions, dagster_instance, selection, cursor=result.cursor)
    assert all(result.get_num_requested(key) == 0 for key in STAGE_KEYS.values())


def test_each_shards_latest_materialisation_is_found_past_any_page_limit(dagster_instance):
    """The shard sensor and the schedule read each shard's newest record: a shard materialised many
    times must not push another's out of a page (Dagster pages at most 10,000 records a call; the
    former fixed limit of 50 a shard also exceeded that past 200 shards and failed)."""
    from orchestration.defs.annotation.partitions import latest_materializations

    names = [f"shard-{i:05d}" for i in range(5)]
    dagster_instance.add_dynamic_partitions("annotation_shards", names)
    for round_ in range(3):
        for name in names[:2] if round_ else names:  # shards 0 and 1 re-annotated twice more
            dagster_instance.report_runless_asset_event(
                dg.AssetMaterialization(STAGE_KEYS[1], partition=name, metadata={"keys_hash": f"{name}@{round_}"}))
    for page, batch in ((2, 500), (3, 2), (10_000, 500)):
        latest = latest_materializations(dagster_instance, STAGE_KEYS[1], [*names, "shard-99999"], page=page, batch=batch)
        assert {name: r.asset_materialization.metadata["keys_hash"].value for name, r in latest.items()} == {
            "shard-00000": "shard-00000@2", "shard-00001": "shard-00001@2", "shard-00002": "shard-00002@0",
            "shard-00003": "shard-00003@0", "shard-00004": "shard-00004@0"}
