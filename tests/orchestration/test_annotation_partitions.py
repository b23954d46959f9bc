"""The annotation partitions on the Dagster side, kept fast (a handful of synthetic clips, no lineage):
planned shards become partitions, a partition materialises all three stages in batches with its
checks, and a grown catalog adds a partition and a run for it alone while finished partitions'
files stay as they were; a catalog that only removes clips asks for a merge of the pool."""

from __future__ import annotations

import hashlib
import json
import shutil

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from orchestration import sensors
from orchestration.defs.annotation import assets as annotation_assets
from orchestration.defs.annotation.assets import POOL, STAGE_KEYS
from orchestration.resources import PipelinePaths
from orchestration.sensors import sync_shard_partitions
from tests.annotation.conftest import make_synthetic
from tests.orchestration.test_sensors_schedules import evaluate_sensor, profile_with

SHARDS = "annotation_shards"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), 12)


def use_catalog(synthetic, paths: PipelinePaths, clips: int) -> None:
    """The first `clips` clips of the synthetic catalog as the pipeline's catalog."""
    folder = paths.path("catalog")
    folder.mkdir(parents=True, exist_ok=True)
    table = pq.read_table(synthetic.catalog / "clips.parquet")
    keep = table.filter(pc.is_in(table["key"], value_set=pa.array([f"vid{i:04d}_0" for i in range(clips)])))
    pq.write_table(keep, folder / "clips.parquet")
    shutil.copy(synthetic.catalog / "catalog.json", folder / "catalog.json")


def shard_files(paths: PipelinePaths, name: str) -> dict[str, str]:
    root = paths.path("annotation") / "shards"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for stage in (1, 2, 3) for p in sorted((root / f"stage{stage}" / name).rglob("*")) if p.is_file()}


def test_partitions_materialise_in_batches_and_a_grown_catalog_adds_only_new_ones(synthetic, tiny_profile,
                                                                                 dagster_instance, tmp_path):
    profile = profile_with(tiny_profile, shard_size=4, batch_size=2)
    paths = PipelinePaths(root=str(tmp_path))
    use_catalog(synthetic, paths, clips=8)
    sync_shard_partitions(profile, paths)(dagster_instance)
    assert dagster_instance.get_dynamic_partitions(SHARDS) == ["shard-00000", "shard-00001"]

    stages = [a for a in annotation_assets.build(profile) if a.key in STAGE_KEYS.values()]
    result = dg.materialize(stages, partition_key="shard-00001", instance=dagster_instance, resources={"paths": paths})
    assert result.success
    for stage, key in STAGE_KEYS.items():
        (materialization,) = result.asset_materializations_for_node(key.path[-1])
        assert materialization.partition == "shard-00001"
        assert materialization.metadata["batches"].value == 2 and materialization.metadata["resumed_batches"].value == 0
    assert all(check.passed for check in result.get_asset_check_evaluations())
    finished = shard_files(paths, "shard-00001")
    assert not any("batches" in name for name in finished)

    # Four more videos: one new shard, requested alone; the finished shard is untouched.
    sensor = next(d for d in sensors.build(profile) if d.name == "annotation_shard_sensor")
    use_catalog(synthetic, paths, clips=12)
    dagster_instance.report_runless_asset_event(dg.AssetMaterialization("pool_catalog"))
    tick = evaluate_sensor(sensor, dagster_instance, paths)
    (add,) = tick.dynamic_partitions_requests
    assert list(add.partition_keys) == ["shard-00002"]
    assert [(r.partition_key, r.asset_selection) for r in tick.run_requests] == [("shard-00002", list(STAGE_KEYS.values()))]
    dagster_instance.add_dynamic_partitions(SHARDS, ["shard-00002"])
    result = dg.materialize(stages, partition_key="shard-00002", instance=dagster_instance, resources={"paths": paths})
    assert result.success and shard_files(paths, "shard-00001") == finished

    # A catalog that only drops a video retires its clip: no shard to run, a merge of the pool instead.
    use_catalog(synthetic, paths, clips=11)
    dagster_instance.report_runless_asset_event(dg.AssetMaterialization("pool_catalog"))
    retired = evaluate_sensor(sensor, dagster_instance, paths, cursor=tick.cursor)
    assert not retired.dynamic_partitions_requests
    assert [(r.partition_key, r.asset_selection) for r in retired.run_requests] == [(None, [POOL])]
    assert json.loads(retired.cursor)["generations"] == 3
    again = evaluate_sensor(sensor, dagster_instance, paths, cursor=retired.cursor)
    assert not again.run_requests
