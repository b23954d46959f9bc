"""`grove demo`: the whole lineage on the demo profile, into a Dagster home that `dagster dev` opens.

synthetic raw videos → catalog → annotation stages 1/2/3 per shard → pre-training subsets →
pre-training per size → fine-tuning (and FT-only) → inference → metrics → data-scaling curve.
Everything lands under runs/demo (or $GROVE_RUNS): data, checkpoints, metrics, the MLflow store
and the Dagster home. A second run reuses every asset Dagster reports as up to date.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import yaml

from grove.io import atomic_write_text
from orchestration.lineage import LineageReport, StepOutcome
from orchestration.profile import PARAMS_FILE, REPO_ROOT, Profile, load_profile, runs_root
from orchestration.report import SEPARATES, Cell, ScalingPoint, metric_table
from orchestration.resources import PRETRAIN_CLIPS

log = logging.getLogger(__name__)
GROUNDING_TITLES = {"vidstg": "VidSTG", "anet_entities": "ActivityNet-Entities"}

# what each protocol of the demo's tables is (evaluation/iground.py's presets)
PROTOCOL_NOTES = {"official": "GROVE's evaluator, as the paper reports",
                  "corrected": "xyxy recall boxes, by-query pairing, objectness AP scores, clips without GT left out"}


def instance_settings(home: Path, gpu_slots: int) -> dict[str, Any]:
    """dagster.yaml of a pipeline home: SQLite storage in the home, and the `gpu` pool's limit."""
    return {
        "storage": {"sqlite": {"base_dir": str(home / "storage")}},
        "concurrency": {"pools": {"granularity": "op", "default_limit": int(gpu_slots)}},
        "telemetry": {"enabled": False},
    }


def prepare_home(home: Path, gpu_slots: int) -> Path:
    """Write the home's dagster.yaml (kept when identical, so a running `dagster dev` is undisturbed)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    text = yaml.safe_dump(instance_settings(home, gpu_slots), sort_keys=True)
    if not config.exists() or config.read_text() != text:
        atomic_write_text(config, text)
    return home


@contextlib.contextmanager
def exclusive_demo(root: Path) -> Iterator[None]:
    """One demo at a time per runs root: a second one fails at once instead of corrupting the first."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".demo.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise RuntimeError(f"{root}: another `grove demo` is running on this runs root") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass
class DemoResult:
    profile: Profile
    root: Path
    seconds: float
    report: LineageReport
    rows: list[ScalingPoint]
    metrics: list[str]
    differences: dict[str, list[tuple[str, dict[str, Cell]]]]  # per protocol: each size minus FT-only (x100), paired
    bootstrap: dict[str, Any]  # how the intervals were drawn (evaluation.bootstrap.BootstrapSettings.to_dict)
    grounding: list[tuple[str, list[str], list[ScalingPoint]]]  # VidSTG, ActivityNet-Entities: (title, columns, rows)
    plot: Path
    experiments: list[str]  # the MLflow experiments of the lineage's runs, one per concern
    mlflow_store: str
    dagster_home: Path
    pushed: str

    def ui_commands(self) -> list[str]:
        """Shell commands that open the Dagster UI (on this profile, runs root and params file) and the MLflow UI."""
        venv = REPO_ROOT / ".venv" / "bin"
        runs = "" if self.root == REPO_ROOT / "runs" / self.profile.name else f"GROVE_RUNS={self.root} "
        params = "" if Path(self.profile.params_file).resolve() == PARAMS_FILE.resolve() else f"GROVE_PARAMS={self.profile.params_file} "
        return [
            f"cd {REPO_ROOT} && DAGSTER_HOME={self.dagster_home} GROVE_PROFILE={self.profile.name} {params}{runs}"
            f"{venv / 'dagster'} dev -w workspace.yaml",
            f"{venv / 'mlflow'} ui --backend-store-uri {self.mlflow_store} --port 5000",
        ]

    def print(self, console: Any) -> None:
        split = self.profile.get("inference.split")
        drawn = (f"[low, high]: {100 * self.bootstrap['confidence']:g}% percentile interval over the test clips, "
                 f"{self.bootstrap['resamples']} resamples, seed {self.bootstrap['seed']}") if self.bootstrap.get("resamples") else None
        for protocol in self.rows[0].protocols if self.rows else []:
            note = PROTOCOL_NOTES.get(protocol, protocol)
            console.print(metric_table(
                [(p.label, p.under(protocol).cells(100.0)) for p in self.rows],
                self.metrics,
                f"iGround {split} (x100) by pre-training size, {protocol} protocol ({note}) — profile '{self.profile.name}'",
                caption=drawn,
            ))
            if self.differences.get(protocol):
                console.print(metric_table(
                    self.differences[protocol], self.metrics,
                    f"minus FT-only, paired on the same resamples ({protocol} protocol)",
                    caption=f"{SEPARATES}: the interval excludes 0 (the difference separates); others do not separate",
                ))
        for title, columns, rows in self.grounding:
            for protocol in rows[0].protocols if rows else []:
                console.print(metric_table([(p.label, p.under(protocol).cells(100.0)) for p in rows], columns,
                                           f"{title} (x100), {protocol} protocol", caption=drawn))
        console.print(
            f"lineage: {self.report.materialised} asset partitions materialised, {self.report.reused} steps reused "
            f"as up to date, in {self.seconds / 60:.1f} min"
        )
        console.print(f"data-scaling plot: {self.plot}")
        console.print(f"MLflow experiments: {', '.join(self.experiments)} in {self.mlflow_store}")
        evaluation = next((name for name in self.experiments if name.endswith("/evaluation")), None)
        if evaluation is not None:
            console.print(f"  data scaling in the MLflow UI: experiment '{evaluation}', Chart view, a scatter chart of "
                          f"{'/'.join(self.metrics)} (y) against {PRETRAIN_CLIPS} (x)", soft_wrap=True)
        if self.pushed:
            console.print(f"DVC: {self.pushed}")
        console.print("open the UIs:")
        for command in self.ui_commands():
            console.print(f"  {command}", soft_wrap=True)


def _group_printer(console: Any, groups: int, workers: int):
    def on_group(index: int, group: Any, partitions: list[str | None]) -> None:
        named = [p for p in partitions if p is not None]
        what = f"{len(named)} partition(s) ({', '.join(named)}), up to {min(workers, len(named))} at a time" if named else "running"
        console.print(f"[{index + 1}/{groups}] {group.label} ({group.assets}): {what} ...", soft_wrap=True, markup=False)

    return on_group


def _step_printer(console: Any, groups: int):
    def on_step(index: int, outcome: StepOutcome) -> None:
        where = f" [{outcome.partition}]" if outcome.partition else ""
        if outcome.reused:
            console.print(f"[{index + 1}/{groups}] {outcome.group}{where}: up to date", style="dim", soft_wrap=True, markup=False)
        else:
            console.print(f"[{index + 1}/{groups}] {outcome.group}{where}: materialised in {outcome.seconds:.1f} s", soft_wrap=True, markup=False)

    return on_step


def run_demo(profile: Profile | str = "demo", console: Any = None, root: Path | None = None) -> DemoResult:
    """The whole lineage of a profile into its runs root, with its Dagster home, MLflow store and DVC records."""
    import dagster as dg

    from orchestration.definitions import build_definitions, dvc_enabled, experiment_name
    from evaluation.bootstrap import BootstrapSettings
    from orchestration.defs.evaluation.assets import CURVE_PLOT, differences_vs_ft_only, scaling_points
    from orchestration.defs.evaluation.grounding import configured, headline_metrics, split_of
    from orchestration.lineage import lineage_groups, materialize_lineage, quiet_preview_warnings, recover_interrupted_runs
    from orchestration.resources import LAYOUT, DvcResource, MlflowResource, PipelinePaths
    from orchestration.sensors import sync_shard_partitions

    started = time.perf_counter()
    quiet_preview_warnings()
    profile = load_profile(profile) if isinstance(profile, str) else profile
    root = Path(root) if root is not None else runs_root(profile)
    with exclusive_demo(root):
        home = prepare_home(root / LAYOUT["dagster_home"], int(profile.get("orchestration.gpu_slots", 1)))
        instance = dg.DagsterInstance.from_config(str(home))
        recovered = recover_interrupted_runs(instance)
        if recovered and console is not None:
            console.print(f"{recovered} run(s) of an interrupted demo marked failed; their work is redone where needed")
        defs = build_definitions(profile, root)
        paths = PipelinePaths(root=str(root))
        groups, workers = len(lineage_groups(defs)), int(profile.get("orchestration.max_concurrent", 1))
        report = materialize_lineage(
            defs,
            instance,
            partition_syncs=[sync_shard_partitions(profile, paths)],
            tags={"grove/profile": profile.name},
            on_step=_step_printer(console, groups) if console is not None else None,
            on_group=_group_printer(console, groups, workers) if console is not None else None,
            workers=workers,
            build=functools.partial(build_definitions, profile, root),
        )
        pushed = ""
        if dvc_enabled(profile, root):
            DvcResource().run("push", "--quiet")
            pushed = f"outputs pushed to the local remote {REPO_ROOT / 'runs' / 'dvc-store'}"
    mlflow = MlflowResource.from_env(root, experiment_name(profile))
    client = mlflow.client()
    experiments = sorted(client.get_experiment(e).name for e in mlflow.experiment_ids(client))
    rows, metrics = scaling_points(profile, paths), list(profile.get("evaluation.metrics"))
    return DemoResult(
        profile=profile,
        root=root,
        seconds=time.perf_counter() - started,
        report=report,
        rows=rows,
        metrics=metrics,
        differences=differences_vs_ft_only(profile, paths, rows[0].protocols if rows else [], metrics),
        bootstrap=BootstrapSettings.from_mapping(profile.get("evaluation.bootstrap", None)).to_dict(),
        grounding=[(f"{GROUNDING_TITLES[name]} {split}", headline_metrics(profile, name), scaling_points(profile, paths, name))
                   for name in configured(profile) for split in [split_of(profile, name)]],
        plot=paths.path("reports", CURVE_PLOT),
        experiments=experiments,
        mlflow_store=mlflow.store_uri,
        dagster_home=home,
        pushed=pushed,
    )
