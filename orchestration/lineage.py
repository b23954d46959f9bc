"""Materialise a whole asset graph in lineage order, reusing what Dagster already considers up to date.

`grove demo` uses this instead of one big run, because the annotation shards are dynamic
partitions that exist only once the catalog does, and because a second run must skip everything
that is fresh. "Up to date" is Dagster's own notion: materialised, same code version, and made
from the current data versions of its parents (which are DVC hashes here).

Consecutive assets of the graph's topological order that share a partitioning form one group;
each partition of a group is one run that starts at the group's first stale or missing asset,
as soon as the partitions upstream of it are done (not the whole group before it).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import dagster as dg
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.definitions.partitions.definition import PartitionsDefinition

log = logging.getLogger(__name__)

RUN_TAG = "grove/lineage"
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

# Called before a group's partitions are listed: keeps dynamic partitions in step with the data
# upstream of them (e.g. adds the shards of a catalog that was just materialised).
PartitionSync = Callable[[dg.DagsterInstance], None]
DefinitionsFactory = Callable[[], dg.Definitions]


@dataclass(frozen=True)
class Group:
    keys: tuple[dg.AssetKey, ...]
    partitions_def: PartitionsDefinition | None

    @property
    def label(self) -> str:
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


def lineage_groups(defs: dg.Definitions) -> list[Group]:
    graph = defs.resolve_asset_graph()
    groups: list[Group] = []
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        if not node.is_materializable:
            continue
        if groups and groups[-1].partitions_def == node.partitions_def:
            groups[-1] = Group(groups[-1].keys + (key,), node.partitions_def)
        else:
            groups.append(Group((key,), node.partitions_def))
    return groups


def partition_keys(partitions_def: PartitionsDefinition | None, instance: dg.DagsterInstance) -> list[str | None]:
    if partitions_def is None:
        return [None]
    return list(partitions_def.get_partition_keys(dynamic_partitions_store=instance))


def stale_or_missing(defs: dg.Definitions, instance: dg.DagsterInstance, keys: Sequence[dg.AssetKey], partition: str | None) -> list[dg.AssetKey]:
    """The keys Dagster reports as missing or stale for `partition` (a fresh resolver each call)."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._time import get_current_datetime

    # Internal API (as `dagster._utils.test.data_versions` uses it): Dagster exposes stale status to
    # the UI and to RunRequest(stale_assets_only=True) but has no public function for it.
    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
    return [key for key in keys if resolver.get_status(key, partition) in (StaleStatus.MISSING, StaleStatus.STALE)]


def _materialize(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    selection: Sequence[dg.AssetKey],
    partition: str | None,
    tags: Mapping[str, str] | None,
    run_config: Mapping | None,
) -> float:
    started = time.perf_counter()
    dg.materialize(
        list(defs.assets or []) + list(defs.asset_checks or []),
        selection=dg.AssetSelection.assets(*selection),
        partition_key=partition,
        instance=instance,
        resources=defs.resources,
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
        return _materialize(build(), instance, keys, partition, tags, run_config)
    except Exception as exc:  # Dagster's errors do not always survive pickling; their message does
        raise RuntimeError(f"{', '.join(selection)} [{partition}]: {type(exc).__name__}: {exc}") from None
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
        self.graph = defs.resolve_asset_graph()
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
        index, partition = task
        return any(
            (earlier, upstream) not in self.finished and self._feeds(earlier, upstream, index, partition)
            for earlier in range(index)
            for upstream in self.partitions[earlier]
        )

    def _feeds(self, upstream_group: int, upstream: str | None, group: int, partition: str | None) -> bool:
        parents = set(self.groups[upstream_group].keys)
        return any(
            self._maps(key, parent, partition, upstream)
            for key in self.groups[group].keys
            for parent in self.graph.get(key).parent_keys & parents
        )

    def _maps(self, key: dg.AssetKey, parent: dg.AssetKey, partition: str | None, upstream: str | None) -> bool:
        """Whether `partition` of `key` reads `upstream` of `parent` (True when unsure)."""
        if partition is None or upstream is None:
            return True
        mapping = self.defs.resolve_assets_def(key).get_partition_mapping(parent)
        if isinstance(mapping, dg.StaticPartitionMapping):
            downstream = mapping.downstream_partition_keys_by_upstream_partition_key.get(upstream, ())
            return partition in ({downstream} if isinstance(downstream, str) else set(downstream))
        if isinstance(mapping, dg.IdentityPartitionMapping):
            return partition == upstream
        return True


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
                    seconds = _materialize(defs, instance, selection, partition, tags, run_config)
                    plan.finished.add(task)
                    _record(report, on_step, index, StepOutcome(group.label, partition, names, seconds, False))
                    continue
                pool = pool or ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
                future = pool.submit(_materialize_in_worker, build, instance.get_ref(), names, partition, tags, run_config)
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
