"""`grove compare`: a table of metrics across MLflow runs, e.g. iGround metrics by pre-training size.

Every model and evaluation asset partition writes one MLflow run tagged with its Dagster asset key
and partition, in its concern's experiment (orchestration.resources.MlflowResource), so a comparison
is a search by asset key across the profile's experiments with one row per partition: the latest
finished run, or every run with `latest_only=False`.

An evaluation run logs its primary protocol's metrics under their own names and every other
protocol's under `<preset>.<metric>`; each metric's bootstrap interval as `<metric>.ci_low` and
`<metric>.ci_high` (`mlflow_metrics`). Paired differences against a baseline run need the per-clip
statistics, which live in the run's report artifact (`REPORT_ARTIFACT`), the metric JSON itself.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from orchestration.report import Cell, metric_table

# Assets whose MLflow metrics are fractions that the paper (and `grove demo`'s table) prints x100.
PERCENT_ASSETS = ("iground_metrics",)
# Assets whose runs log their report (with per-clip statistics) as REPORT_ARTIFACT: paired differences work on them.
PAIRED_ASSETS = ("iground_metrics",)
REPORT_ARTIFACT = "iground_report.json"
PROTOCOL_PARAM = "protocol"

ASSET_TAG = "dagster.asset_key"
PARTITION_TAG = "dagster.partition"
CODE_VERSION_TAG = "dagster.code_version"


@dataclass
class ComparisonRow:
    partition: str
    run_id: str
    start_time: int
    code_version: str
    metrics: dict[str, float] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    experiment_id: str = ""


def metric_key(name: str, preset: str | None = None, bound: str | None = None) -> str:
    """The MLflow name of a metric (`preset` None: the run's primary protocol), or of one bound of its interval."""
    return ".".join(part for part in (preset, name, f"ci_{bound}" if bound else None) if part)


def mlflow_metrics(report: Mapping[str, Any]) -> dict[str, float]:
    """A report's JSON (`EvalReport.to_dict`) as MLflow metrics: values and interval bounds, every protocol."""
    out: dict[str, float] = {}
    sections = [(None, report), *report.get("other_protocols", {}).items()]
    for preset, section in sections:
        for name, value in section["metrics"].items():
            if value is None:
                continue
            out[metric_key(name, preset)] = float(value)
            interval = section.get("intervals", {}).get(name)
            if interval is not None:
                out[metric_key(name, preset, "low")] = float(interval["low"])
                out[metric_key(name, preset, "high")] = float(interval["high"])
    return out


def protocol_section(report: Mapping[str, Any], preset: str | None) -> Mapping[str, Any]:
    """The part of a report's JSON holding `preset`'s numbers (None: the primary protocol's)."""
    if preset is None or report.get("protocol", {}).get("preset") == preset:
        return report
    others = report.get("other_protocols", {})
    if preset not in others:
        primary = report.get("protocol", {}).get("preset", "?")
        raise ValueError(f"the report has no '{preset}' protocol (it holds {[primary, *others]})")
    return others[preset]


def search_asset_runs(client: Any, experiment_ids: Sequence[str], asset_key: str) -> list[Any]:
    """Finished runs of one asset in any of the experiments, newest first."""
    if not experiment_ids:
        return []
    return client.search_runs(
        list(experiment_ids),
        filter_string=f"tags.`{ASSET_TAG}` = '{asset_key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=5000,
    )


def comparison_rows(runs: Sequence[Any], order: Sequence[str] = (), latest_only: bool = True) -> list[ComparisonRow]:
    """One row per run (or per partition, its newest run), partitions in `order` first, then by name."""
    rows, seen = [], set()
    for run in runs:
        partition = run.data.tags.get(PARTITION_TAG, "")
        if latest_only and partition in seen:
            continue
        seen.add(partition)
        rows.append(
            ComparisonRow(
                partition=partition,
                run_id=run.info.run_id,
                start_time=run.info.start_time,
                code_version=run.data.tags.get(CODE_VERSION_TAG, ""),
                experiment_id=run.info.experiment_id,
                metrics=dict(run.data.metrics),
                params=dict(getattr(run.data, "params", {}) or {}),
            )
        )
    rank = {name: i for i, name in enumerate(order)}
    rows.sort(key=lambda row: (rank.get(row.partition, len(rank)), row.partition, -row.start_time))
    return rows


def metric_columns(rows: Sequence[ComparisonRow], wanted: Sequence[str] | None = None) -> list[str]:
    """The requested metrics, or every metric some row has (sorted; interval bounds and other protocols left out)."""
    if wanted:
        return list(wanted)
    return sorted({name for row in rows for name in row.metrics if "." not in name})


def default_scale(asset_key: str) -> float:
    """100 for assets whose metrics are fractions printed x100 (as `grove demo` prints them), else 1."""
    return 100.0 if asset_key in PERCENT_ASSETS else 1.0


def row_cells(row: ComparisonRow, columns: Sequence[str], preset: str | None = None, scale: float = 1.0) -> dict[str, Cell]:
    """A row's value (and interval, where logged) per column under `preset` (None: the run's primary protocol)."""
    prefix = None if preset is None or row.params.get(PROTOCOL_PARAM) == preset else preset
    cells: dict[str, Cell] = {}
    for name in columns:
        value = row.metrics.get(metric_key(name, prefix))
        if value is None:
            continue
        cells[name] = Cell.scaled(value, tuple(row.metrics.get(metric_key(name, prefix, b)) for b in ("low", "high")), scale)
    return cells


def comparison_table(rows: Sequence[ComparisonRow], columns: Sequence[str], title: str, scale: float = 1.0,
                     preset: str | None = None) -> Any:
    """The table; the metric columns (value [interval]) are multiplied by `scale` (other metrics of a row are not shown)."""
    return metric_table(
        [(row.partition or "-", row_cells(row, columns, preset, scale)) for row in rows],
        columns,
        title,
        label="partition",
        extra=[("code version", [row.code_version for row in rows]), ("run", [row.run_id[:8] for row in rows])],
    )


def paired_difference_cells(
    reports: Sequence[tuple[str, Mapping[str, Any]]], baseline: str, columns: Sequence[str], preset: str | None = None,
    scale: float = 1.0,
) -> list[tuple[str, dict[str, Cell]]]:
    """Each report's metric minus the baseline report's, with the interval of the difference drawn on the same
    resamples of the clips (the settings the reports' intervals used). ValueError when a report was scored on
    other clips than the baseline, or holds no clip statistics."""
    from evaluation.bootstrap import BootstrapSettings, ClipStatistics, paired_differences

    by_label = dict(reports)
    if baseline not in by_label:
        raise ValueError(f"no baseline '{baseline}' among {list(by_label)}")

    def parts(label: str) -> tuple[ClipStatistics, Mapping[str, Any], BootstrapSettings]:
        section = protocol_section(by_label[label], preset)
        if "clip_statistics" not in section:
            raise ValueError(f"{label}: the report holds no clip statistics (evaluated without bootstrap resamples)")
        settings = BootstrapSettings.from_mapping({k: section["uncertainty"][k] for k in ("resamples", "seed", "confidence")})
        return ClipStatistics.from_dict(section["clip_statistics"]), section["metrics"], settings

    base_stats, base_metrics, settings = parts(baseline)
    out = []
    for label, _ in reports:
        if label == baseline:
            continue
        stats, metrics, _ = parts(label)
        try:
            differences = paired_differences(stats, {c: metrics.get(c) for c in columns}, base_stats, base_metrics, settings)
        except ValueError as exc:
            raise ValueError(f"{label} vs {baseline}: {exc}") from None
        out.append((label, {name: Cell(d.value * scale, d.low * scale, d.high * scale, signed=True, mark=d.separates)
                            for name, d in differences.items()}))
    return out


def run_report(client: Any, run_id: str, artifact: str = REPORT_ARTIFACT) -> dict[str, Any]:
    """The report JSON an evaluation run logged as an artifact."""
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    previous = os.environ.get(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name)
    os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = "false"  # one bar per row would bury the tables
    try:
        with tempfile.TemporaryDirectory(prefix="grove-compare-") as tmp:
            return json.loads(Path(client.download_artifacts(run_id, artifact, tmp)).read_text())
    finally:
        if previous is None:
            os.environ.pop(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name, None)
        else:
            os.environ[MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name] = previous


def difference_table(client: Any, rows: Sequence[ComparisonRow], columns: Sequence[str], baseline: str,
                     preset: str | None = None, scale: float = 1.0) -> Any:
    """Each row's metrics minus the baseline partition's, paired on the same resamples of the test clips
    (from the runs' report artifacts), as a table; `*` marks a difference whose interval excludes 0."""
    from orchestration.report import SEPARATES

    if len({row.partition for row in rows}) != len(rows):
        raise ValueError("paired differences need one run per partition (not every run)")
    reports = [(row.partition, run_report(client, row.run_id)) for row in rows]
    differences = paired_difference_cells(reports, baseline, columns, preset, scale)
    section = protocol_section(dict(reports)[baseline], preset)
    drawn = section.get("uncertainty", {})
    return metric_table(
        differences, columns, f"minus {baseline}, paired on the same resamples of the clips"
        + (f" ({preset} protocol)" if preset else ""), label="partition",
        caption=f"[low, high]: {100 * drawn.get('confidence', 0):g}% interval, {drawn.get('resamples')} resamples, seed "
                f"{drawn.get('seed')}; {SEPARATES}: the interval excludes 0 (the difference separates)")
