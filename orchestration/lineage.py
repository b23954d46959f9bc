"""Materialise the lineage's named jobs in order, reusing what is already up to date.

`grove demo` uses this instead of one big run: a Dagster run covers one partition of one
partitioning, the annotation shards are dynamic partitions that exist only once the catalog does,
and a second run must skip everything that is fresh. Each lineage job (orchestration/jobs.py) is a
group; each partition of a group is one run of that job, from the group's first stale or missing
asset, started as soon as the partitions upstream of it are done (not the whole group before it).

"Up to date" is Dagster's data-versioning notion, read from the event log through public APIs:
materialised, with the code version it has now, and from the same data versions of its upstream
partitions (DVC hashes here) as when it was materialised (`why_stale`).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import dagster as dg

log = logging.getLogger(__name__)

RUN_TAG = "grove/lineage"
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
DATA_VERSION_TAG = "dagster/data_version"  # the materialisation tag Dagster keeps an asset's data version in

# Called before a group's partitions are listed: keeps dynamic partitions in step with the data
# upstream of them (e.g. adds the shards of a catalog that was just materialised).
PartitionSync = Callable[[dg.DagsterInstance], None]
DefinitionsFactory = Callable[[], dg.Definitions]


@dataclass(frozen=True)
class Group:
    """One lineage job: its name, its assets in topological order, and their partitioning."""

    job: str
    keys: tuple[dg.AssetKey, ...]
    partitions_def: dg.PartitionsDefinition | None

    @property
    def label(self) -> str:
        return self.job

    @property
    def assets(self) -> str:
        return " → ".join(key.to_user_string() for key in self.keys)


@dataclass
class StepOutcome:
    group: str
    partition: str | None
    materialised: list[str]
    seconds: float
    reused: bool


@dataclass
class LineageReport:
    outcomes: list[StepOutcome] = field(default_factory=list)

    @property
    def materialised(self) -> int:
        return sum(len(o.materialised) for o in self.outcomes)

    @property
    def reused(self) -> int:
        return sum(1 for o in self.outcomes if o.reused)


class LineageOrderError(ValueError):
    """The definitions' jobs do not form a lineage: an asset in no job, or reading a later job's asset."""


def lineage_groups(defs: dg.Definitions) -> list[Group]:
    """The definitions' asset jobs in the order they are declared, checked to be a lineage order."""
    graph = defs.resolve_asset_graph()
    order = {key: index for index, key in enumerate(graph.toposorted_asset_keys)}
    groups = []
    for job in defs.jobs or []:
        selection = getattr(job, "selection", None)  # asset jobs (define_asset_job) have one; op jobs do not
        if isinstance(selection, dg.AssetSelection):
            keys = tuple(sorted(selection.resolve(graph), key=order.__getitem__))
            groups.append(Group(job.name, keys, defs.resolve_assets_def(keys[0]).partitions_def))
    _check_order(defs, groups, set(order))
    return groups


def _check_order(defs: dg.Definitions, groups: list[Group], all_keys: set[dg.AssetKey]) -> None:
    position = {key: index for index, group in enumerate(groups) for key in group.keys}
    for key in all_keys:
        if key not in position:
            if defs.resolve_assets_def(key).is_materializable:
                raise LineageOrderError(f"{key.to_user_string()}: in no lineage job")
            continue
        for dep in dependencies(defs, key):
            if position.get(dep.asset_key, -1) > position[key]:
                raise LineageOrderError(f"{key.to_user_string()} (job {groups[position[key]].job}) reads "
                                        f"{dep.asset_key.to_user_string()} of the later job {groups[position[dep.asset_key]].job}")


def dependencies(defs: dg.Definitions, key: dg.AssetKey) -> list[dg.AssetDep]:
    return list(defs.resolve_assets_def(key).specs_by_key[key].deps)


def partition_keys(partitions_def: dg.PartitionsDefinition | None, instance: dg.DagsterInstance) -> list[str | None]:
    if partitions_def is None:
        return [None]
    return list(partitions_def.get_partition_keys(dynamic_partitions_store=instance))


def upstream_partitions(
    defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey, dep: dg.AssetDep, partition: str | None
) -> list[str | None]:
    """The partitions of `dep` that `partition` of `key` reads (all of them when the mapping is not one we know)."""
    parent = defs.resolve_assets_def(dep.asset_key).partitions_def
    if parent is None:
        return [None]
    everything = partition_keys(parent, instance)
    if partition is None:
        return everything
    child = defs.resolve_assets_def(key)
    mapping = child.get_partition_mapping(dep.asset_key)
    if isinstance(mapping, dg.StaticPartitionMapping):
        return [q for q in everything if partition in _as_set(mapping.downstream_partition_keys_by_upstream_partition_key.get(q, ()))]
    if isinstance(mapping, dg.IdentityPartitionMapping) or (mapping is None and child.partitions_def == parent):
        return [partition]  # Dagster's default between equal partitionings: partition to partition
    return everything


def _as_set(value: str | Sequence[str]) -> set[str]:
    return {value} if isinstance(value, str) else set(value)


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None, before: int | None = None) -> Any:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition is not None else None,
                              before_storage_id=before),
        limit=1,
    ).records
    return records[0] if records else None


def why_stale(defs: dg.Definitions, instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None) -> str | None:
    """Why `partition` of `key` needs materialising ("missing", a new code version, a changed upstream), else None.

    An upstream partition counts as changed when it was materialised after `key` with a data
    version other than the one it had when `key` was materialised: re-materialising a parent
    with the same output leaves its children fresh.
    """
    record = _latest(instance, key, partition)
    if record is None:
        return "missing"
    provenance = dg.DataProvenance.from_tags(record.asset_materialization.tags)
    code_version = defs.resolve_assets_def(key).code_versions_by_key.get(key)
    if code_version is not None and (provenance is None or provenance.code_version != code_version):
        return f"code version {provenance.code_version if provenance else None} → {code_version}"
    for dep in dependencies(defs, key):
        for upstream in upstream_partitions(defs, instance, key, dep, partition):
            if _changed_since(instance, dep.asset_key, upstream, record.storage_id):
                where = f" [{upstream}]" if upstream is not None else ""
                return f"{dep.asset_key.to_user_string()}{where} changed"
    return None


def _changed_since(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None, storage_id: int) -> bool:
    latest = _latest(instance, key, partition)
    if latest is None or latest.storage_id < storage_id:
        return False
    before = _latest(instance, key, partition, before=storage_id)
    return before is None or _data_version(before) != _data_version(latest)


def _data_version(record: Any) -> str | None:
    return record.asset_materialization.tags.get(DATA_VERSION_TAG)


def stale_or_missing(defs: dg.Definitions, instance: dg.DagsterInstance, keys: Sequence[dg.AssetKey], partition: str | None) -> list[dg.AssetKey]:
    """The keys of `keys` that `why_stale` finds missing or stale for `partition`."""
    return [key for key in keys if why_stale(defs, instance, key, partition) is not None]


def _materialize(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job: str,
    selection: Sequence[dg.AssetKey],
    partition: str | None,
    tags: Mapping[str, str] | None,
    run_config: Mapping | None,
) -> float:
    """One run of the named job over `selection` (and the checks of those assets)."""
    started = time.perf_counter()
    defs.resolve_job_def(job).execute_in_process(
        instance=instance,
        partition_key=partition,
        asset_selection=list(selection),
        tags={RUN_TAG: "true", **(tags or {})},
        run_config=run_config if run_config is not None else QUIET_RUN_CONFIG,
    )
    return time.perf_counter() - started


def quiet_preview_warnings() -> None:
    """Dagster's Pipes calls its own preview APIs and warns about them on every launch: noise for users."""
    import warnings

    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)


def _materialize_in_worker(
    build: DefinitionsFactory,
    instance_ref: Any,
    job: str,
    selection: Sequence[str],
    partition: str | None,
    tags: Mapping[str, str] | None,
    run_config: Mapping | None,
) -> float:
    """A worker process's run: its own definitions and instance (both rebuilt from picklable recipes)."""
    quiet_preview_warnings()
    instance = dg.DagsterInstance.from_ref(instance_ref)
    try:
        keys = [dg.AssetKey.from_user_string(key) for key in selection]
        return _materialize(build(), instance, job, keys, partition, tags, run_config)
    except Exception as exc:  # Dagster's errors do not always survive pickling; their message does
        raise RuntimeError(f"{job}: {', '.join(selection)} [{partition}]: {type(exc).__name__}: {exc}") from None
    finally:
        instance.dispose()


class _Plan:
    """Which (group, partition) runs may start: those whose upstream partitions are all finished.

    A group's partitions are listed once every earlier group is listed, and a group of dynamic
    partitions only once every earlier group has finished (its partitions come from their data).
    A partition then waits only for the partitions of earlier groups that feed it through a
    dependency and its partition mapping, so e.g. the FT-only fine-tuning need not wait for the
    largest pre-training.
    """

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, syncs: Sequence[PartitionSync]) -> None:
        self.defs, self.instance, self.syncs = defs, instance, syncs
        self.groups = lineage_groups(defs)
        self.partitions: dict[int, list[str | None]] = {}
        self.started: set[tuple[int, str | None]] = set()
        self.finished: set[tuple[int, str | None]] = set()

    def next_ready(self) -> tuple[int, str | None] | None:
        self._list_groups()
        for index, partitions in self.partitions.items():
            for partition in partitions:
                task = (index, partition)
                if task not in self.started and not self._waits(task):
                    return task
        return None

    def group_done(self, index: int) -> bool:
        return index in self.partitions and all((index, p) in self.finished for p in self.partitions[index])

    def _list_groups(self) -> None:
        for index, group in enumerate(self.groups):
            if index in self.partitions:
                continue
            dynamic = isinstance(group.partitions_def, dg.DynamicPartitionsDefinition)
            if dynamic and not all(self.group_done(earlier) for earlier in range(index)):
                return
            for sync in self.syncs:
                sync(self.instance)
            self.partitions[index] = partition_keys(group.partitions_def, self.instance)

    def _waits(self, task: tuple[int, str | None]) -> bool:
        """Whether a partition of an earlier group that `task` reads has not finished yet."""
        index, partition = task
        owner = {key: earlier for earlier in range(index) for key in self.groups[earlier].keys}
        for key in self.groups[index].keys:
            for dep in dependencies(self.defs, key):
                earlier = owner.get(dep.asset_key)
                if earlier is None:
                    continue
                upstream = upstream_partitions(self.defs, self.instance, key, dep, partition)
                if any((earlier, q) not in self.finished for q in upstream):
                    return True
        return False


def materialize_lineage(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    *,
    partition_syncs: Sequence[PartitionSync] = (),
    tags: Mapping[str, str] | None = None,
    on_step: Callable[[int, StepOutcome], None] | None = None,
    run_config: Mapping | None = None,
    workers: int = 1,
    build: DefinitionsFactory | None = None,
    on_group: Callable[[int, "Group", list[str | None]], None] | None = None,
) -> LineageReport:
    """Materialise every asset of `defs` that is missing or stale, group by group, partition by partition.

    Each partition of a group is one run over the group's assets from its first stale one; it
    starts once the partitions upstream of it have finished (`_Plan`), and is checked for
    staleness only then. `on_step` hears of every partition once it is done (or found up to
    date); `on_group` of every group when its first run starts, with the group's partitions.

    With `workers` > 1, that many runs go on at once, each in a worker process that rebuilds the
    definitions with `build` (a picklable callable, e.g. a functools.partial of a module-level
    function); the `gpu` pool still caps how many GPU steps overlap. A failed run stops new ones
    from starting; the running ones finish, then its error is raised.
    """
    if workers > 1 and build is None:
        raise ValueError("workers > 1 needs `build`, a picklable callable that returns the definitions")
    report, plan = LineageReport(), _Plan(defs, instance, partition_syncs)
    announced: set[int] = set()
    running: dict[Future, tuple[int, str | None, list[str]]] = {}
    failure: BaseException | None = None
    pool: ProcessPoolExecutor | None = None
    try:
        while True:
            while failure is None and len(running) < max(workers, 1) and (task := plan.next_ready()) is not None:
                index, partition = task
                plan.started.add(task)
                group = plan.groups[index]
                stale = set(stale_or_missing(defs, instance, group.keys, partition))
                first = next((i for i, key in enumerate(group.keys) if key in stale), None)
                if first is None:
                    plan.finished.add(task)
                    _record(report, on_step, index, StepOutcome(group.label, partition, [], 0.0, True))
                    continue
                if on_group is not None and index not in announced:
                    announced.add(index)
                    on_group(index, group, plan.partitions[index])
                selection = list(group.keys[first:])
                names = [key.to_user_string() for key in selection]
                if workers <= 1:
                    seconds = _materialize(defs, instance, group.job, selection, partition, tags, run_config)
                    plan.finished.add(task)
                    _record(report, on_step, index, StepOutcome(group.label, partition, names, seconds, False))
                    continue
                pool = pool or ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
                future = pool.submit(_materialize_in_worker, build, instance.get_ref(), group.job, names, partition, tags, run_config)
                running[future] = (index, partition, names)
            if not running:
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                index, partition, names = running.pop(future)
                try:
                    seconds = future.result()
                except BaseException as exc:  # let the running partitions finish; nothing done is lost
                    failure = failure or exc
                    continue
                plan.finished.add((index, partition))
                _record(report, on_step, index, StepOutcome(plan.groups[index].label, partition, names, seconds, False))
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if failure is not None:
        raise failure
    return report


def _record(report: LineageReport, on_step: Callable[[int, StepOutcome], None] | None, index: int, outcome: StepOutcome) -> None:
    report.outcomes.append(outcome)
    if on_step is not None:
        on_step(index, outcome)


def recover_interrupted_runs(instance: dg.DagsterInstance) -> int:
    """Mark lineage runs left STARTED by a killed process as failed and free their pool slots.

    In-process runs die with their process; without this, a killed `grove demo` would hold the
    `gpu` pool slot forever and the next one would wait on it.
    """
    records = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING], tags={RUN_TAG: "true"})
    )
    for record in records:
        instance.report_run_failed(record.dagster_run, "interrupted: the process running it is gone")
        instance.event_log_storage.free_concurrency_slots_for_run(record.dagster_run.run_id)
    return len(records)
