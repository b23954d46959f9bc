"""The lineage runner: materialise in order, add dynamic partitions on the way, reuse what is fresh."""

import functools
import os
import time

import dagster as dg
import pytest

from orchestration.lineage import LineageOrderError, lineage_groups, materialize_lineage, recover_interrupted_runs, RUN_TAG, why_stale

SHARDS = dg.DynamicPartitionsDefinition(name="toy_shards")
SIZES = dg.StaticPartitionsDefinition(["s", "m"])


def toy_defs(calls: list, merged_version: str = "1", merged_output: str = "a") -> dg.Definitions:
    def body(name):
        def run(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            calls.append((name, context.partition_key if context.has_partition_key else None))
            output = merged_output if name == "merged" else "same"
            return dg.MaterializeResult(data_version=dg.DataVersion(f"{name}-{output}"))

        return run

    catalog = dg.asset(name="catalog", code_version="1")(body("catalog"))
    stage1 = dg.asset(name="stage1", deps=[catalog], partitions_def=SHARDS, code_version="1")(body("stage1"))
    stage2 = dg.asset(name="stage2", deps=[stage1], partitions_def=SHARDS, code_version="1")(body("stage2"))
    merged = dg.asset(name="merged", deps=[stage2], code_version=merged_version)(body("merged"))
    subset = dg.asset(name="subset", deps=[merged], partitions_def=SIZES, code_version="1")(body("subset"))
    curve = dg.asset(name="curve", deps=[subset], code_version="1")(body("curve"))

    @dg.asset_check(asset=merged)
    def merged_not_empty() -> dg.AssetCheckResult:
        calls.append(("check", None))
        return dg.AssetCheckResult(passed=True)

    jobs = [dg.define_asset_job(name, selection=selection) for name, selection in [
        ("catalog_job", [catalog]), ("stages_job", [stage1, stage2]), ("merged_job", [merged]),
        ("subset_job", [subset]), ("curve_job", [curve])]]
    return dg.Definitions(assets=[catalog, stage1, stage2, merged, subset, curve], asset_checks=[merged_not_empty], jobs=jobs)


def add_shards(instance: dg.DagsterInstance) -> None:
    # Stands in for the shard sync: shards appear only once the catalog is materialised.
    if instance.get_latest_materialization_event(dg.AssetKey("catalog")) is not None:
        instance.add_dynamic_partitions("toy_shards", ["shard-0", "shard-1"])


def test_groups_follow_the_partitioning_in_topological_order():
    groups = lineage_groups(toy_defs([]))
    assert [(g.job, [k.to_user_string() for k in g.keys]) for g in groups] == [
        ("catalog_job", ["catalog"]), ("stages_job", ["stage1", "stage2"]), ("merged_job", ["merged"]),
        ("subset_job", ["subset"]), ("curve_job", ["curve"]),
    ]


def test_whole_lineage_then_nothing_then_only_what_changes_make_stale(dagster_instance):
    calls: list = []
    instance = dagster_instance
    started: list = []
    report = materialize_lineage(toy_defs(calls), instance, partition_syncs=[add_shards],
                                 on_group=lambda index, group, partitions: started.append((index, group.label, partitions)))
    assert started == [(0, "catalog_job", [None]), (1, "stages_job", ["shard-0", "shard-1"]), (2, "merged_job", [None]),
                       (3, "subset_job", ["s", "m"]), (4, "curve_job", [None])]  # each group announced before it runs
    assert set(calls) == {
        ("catalog", None), ("stage1", "shard-0"), ("stage2", "shard-0"), ("stage1", "shard-1"),
        ("stage2", "shard-1"), ("merged", None), ("check", None), ("subset", "s"), ("subset", "m"), ("curve", None),
    }
    assert len(calls) == 10 and calls[0] == ("catalog", None) and calls[-1] == ("curve", None)
    order = {call: i for i, call in enumerate(calls)}
    for shard in ("shard-0", "shard-1"):
        assert order[("stage1", shard)] < order[("stage2", shard)] < order[("merged", None)]
    assert report.materialised == 9 and report.reused == 0
    runs = instance.get_runs()
    assert runs and all(run.tags.get(RUN_TAG) == "true" for run in runs)

    calls.clear()
    started.clear()
    again = materialize_lineage(toy_defs(calls), instance, partition_syncs=[add_shards],
                                on_group=lambda index, group, partitions: started.append(index))
    assert calls == [] and again.materialised == 0 and again.reused == len(again.outcomes) == 7
    assert started == []  # nothing to run, nothing announced

    # A new code version re-runs the asset; equal output (data version) leaves its children fresh.
    materialize_lineage(toy_defs(calls, merged_version="2"), instance, partition_syncs=[add_shards])
    assert sorted(calls) == [("check", None), ("merged", None)]

    calls.clear()
    materialize_lineage(toy_defs(calls, merged_version="3", merged_output="b"), instance, partition_syncs=[add_shards])
    # New output: its children re-run; theirs is unchanged, so the curve stays fresh.
    assert sorted(calls) == sorted([("merged", None), ("check", None), ("subset", "s"), ("subset", "m")])


def test_a_failing_asset_stops_the_lineage_with_its_error(dagster_instance):
    @dg.asset
    def fails() -> None:
        raise ValueError("catalog.parquet: missing column 'key'")

    with pytest.raises(Exception, match="missing column 'key'"):
        materialize_lineage(dg.Definitions(assets=[fails], jobs=[dg.define_asset_job("fails_job", [fails])]), dagster_instance)
    # The failed run is recorded as failed, not left "started".
    assert recover_interrupted_runs(dagster_instance) == 0


def recording_defs(log_dir: str, fail_partition: str = "") -> dg.Definitions:
    """Toy lineage whose assets append to a file: the record survives worker processes."""

    def body(name):
        def run(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
            partition = context.partition_key if context.has_partition_key else None
            if partition and partition == fail_partition:
                raise ValueError(f"{name}: bad clip in {partition}")
            with open(f"{log_dir}/calls.txt", "a") as handle:
                handle.write(f"{name} {partition} {os.getpid()}\n")
            return dg.MaterializeResult(data_version=dg.DataVersion(f"{name}-{partition}"))

        return run

    sizes = dg.StaticPartitionsDefinition(["a", "b", "c"])
    root = dg.asset(name="root", code_version="1")(body("root"))
    train = dg.asset(name="train", deps=[root], partitions_def=sizes, code_version="1")(body("train"))
    score = dg.asset(name="score", deps=[train], partitions_def=sizes, code_version="1")(body("score"))
    jobs = [dg.define_asset_job("root_job", [root]), dg.define_asset_job("train_job", [train, score])]
    return dg.Definitions(assets=[root, train, score], jobs=jobs)


def test_partitions_of_a_group_run_concurrently_in_worker_processes(dagster_instance, tmp_path):
    build = functools.partial(recording_defs, str(tmp_path))
    report = materialize_lineage(build(), dagster_instance, workers=2, build=build)
    calls = [line.split() for line in (tmp_path / "calls.txt").read_text().splitlines()]
    assert sorted((name, part) for name, part, _ in calls) == sorted(
        [("root", "None")] + [(n, p) for n in ("train", "score") for p in "abc"]
    )
    workers = {pid for name, _, pid in calls if name != "root"}
    assert str(os.getpid()) not in workers and 1 <= len(workers) <= 2
    assert report.materialised == 7
    again = materialize_lineage(build(), dagster_instance, workers=2, build=build)
    assert again.materialised == 0


def test_a_failing_partition_in_a_worker_fails_the_lineage_after_the_others_finish(dagster_instance, tmp_path):
    build = functools.partial(recording_defs, str(tmp_path), "b")
    with pytest.raises(RuntimeError, match=r"train_job: train, score \[b\].*bad clip in b"):
        materialize_lineage(build(), dagster_instance, workers=2, build=build)
    done = {tuple(line.split()[:2]) for line in (tmp_path / "calls.txt").read_text().splitlines()}
    assert ("root", "None") in done and ("train", "b") not in done
    assert recover_interrupted_runs(dagster_instance) == 0
    with pytest.raises(ValueError, match="needs `build`"):
        materialize_lineage(build(), dagster_instance, workers=2)


def waiting_defs(log_dir: str) -> dg.Definitions:
    """Pre-training `b` finishes only once the FT-only fine-tuning has run: with whole-group steps it never would."""
    flag = f"{log_dir}/ft_only.done"

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a", "b"]), code_version="1")
    def pretrain(context: dg.AssetExecutionContext) -> None:
        deadline = time.monotonic() + 60
        while context.partition_key == "b" and not os.path.exists(flag):
            if time.monotonic() > deadline:
                raise TimeoutError("the FT-only partition did not start while pre-training `b` ran")
            time.sleep(0.2)

    @dg.asset(
        partitions_def=dg.StaticPartitionsDefinition(["ft_only", "a", "b"]),
        deps=[dg.AssetDep(pretrain, partition_mapping=dg.StaticPartitionMapping({"a": "a", "b": "b"}))],
        code_version="1",
    )
    def finetune(context: dg.AssetExecutionContext) -> None:
        if context.partition_key == "ft_only":
            open(flag, "w").close()

    jobs = [dg.define_asset_job("pretrain_job", [pretrain]), dg.define_asset_job("finetune_job", [finetune])]
    return dg.Definitions(assets=[pretrain, finetune], jobs=jobs)


def test_a_partition_starts_once_its_own_upstream_is_done_not_the_whole_group(dagster_instance, tmp_path):
    build = functools.partial(waiting_defs, str(tmp_path))
    announced: list = []
    report = materialize_lineage(build(), dagster_instance, workers=2, build=build,
                                 on_group=lambda index, group, partitions: announced.append((index, partitions)))
    assert report.materialised == 5
    assert announced == [(0, ["a", "b"]), (1, ["ft_only", "a", "b"])]
    # `finetune[b]` ran after `pretrain[b]`: outcomes arrive in completion order
    order = [(o.group, o.partition) for o in report.outcomes]
    assert order.index(("pretrain_job", "b")) < order.index(("finetune_job", "b"))


def test_runs_are_the_named_jobs_and_an_asset_outside_every_job_is_refused(dagster_instance):
    materialize_lineage(toy_defs([]), dagster_instance, partition_syncs=[add_shards])
    names = {run.job_name for run in dagster_instance.get_runs()}
    assert names == {"catalog_job", "stages_job", "merged_job", "subset_job", "curve_job"}

    @dg.asset
    def orphan() -> None: ...

    with pytest.raises(LineageOrderError, match="orphan: in no lineage job"):
        lineage_groups(dg.Definitions(assets=[orphan]))
    late = toy_defs([])
    jobs = list(late.jobs)
    with pytest.raises(LineageOrderError, match="reads catalog of the later job catalog_job"):
        lineage_groups(dg.Definitions(assets=late.assets, jobs=[jobs[1], jobs[0], *jobs[2:]]))


def test_why_stale_names_the_reason(dagster_instance):
    calls: list = []
    materialize_lineage(toy_defs(calls), dagster_instance, partition_syncs=[add_shards])
    fresh = toy_defs(calls)
    assert why_stale(fresh, dagster_instance, dg.AssetKey("subset"), "s") is None
    assert why_stale(toy_defs(calls, merged_version="2"), dagster_instance, dg.AssetKey("merged"), None) == "code version 1 → 2"
    materialize_lineage(toy_defs(calls, merged_version="1", merged_output="b"), dagster_instance, partition_syncs=[add_shards])
    # merged kept its code version, so nothing re-ran it; re-materialise it with new output by hand
    dg.materialize([*toy_defs(calls, merged_output="b").assets], selection=["merged"], instance=dagster_instance)
    assert why_stale(fresh, dagster_instance, dg.AssetKey("subset"), "s") == "merged changed"
    assert why_stale(fresh, dagster_instance, dg.AssetKey("curve"), None) is None  # its parent has not re-run yet
