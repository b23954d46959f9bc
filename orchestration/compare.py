"""`grove compare`: a table of metrics across MLflow runs, e.g. iGround metrics by pre-training size.

Every model and evaluation asset partition writes one MLflow run tagged with its Dagster asset key
and partition (orchestration.resources.MlflowResource), so a comparison is a search by asset key
with one row per partition: the latest finished run, or every run with `latest_only=False`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from orchestration.report import metric_table

# Assets whose MLflow metrics are fractions that the paper (and `grove demo`'s table) prints x100.
PERCENT_ASSETS = ("iground_metrics",)

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


def search_asset_runs(client: Any, experiment_id: str, asset_key: str) -> list[Any]:
    """Finished runs of one asset, newest first."""
    return client.search_runs(
        [experiment_id],
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
                metrics=dict(run.data.metrics),
            )
        )
    rank = {name: i for i, name in enumerate(order)}
    rows.sort(key=lambda row: (rank.get(row.partition, len(rank)), row.partition, -row.start_time))
    return rows


def metric_columns(rows: Sequence[ComparisonRow], wanted: Sequence[str] | None = None) -> list[str]:
    """The requested metrics, or every metric some row has (sorted)."""
    if wanted:
        return list(wanted)
    return sorted({name for row in rows for name in row.metrics})


def default_scale(asset_key: str) -> float:
    """100 for assets whose metrics are fractions printed x100 (as `grove demo` prints them), else 1."""
    return 100.0 if asset_key in PERCENT_ASSETS else 1.0


def comparison_table(rows: Sequence[ComparisonRow], columns: Sequence[str], title: str, scale: float = 1.0) -> Any:
    """The table; the metric columns are multiplied by `scale` (other metrics of a row are not shown)."""
    return metric_table(
        [(row.partition or "-", {name: row.metrics[name] * scale for name in columns if name in row.metrics}) for row in rows],
        columns,
        title,
        label="partition",
        extra=[("code version", [row.code_version for row in rows]), ("run", [row.run_id[:8] for row in rows])],
    )
