"""Presenting results: the metric table (rows: pre-training sizes and FT-only) and the data-scaling plot."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from grove.io import atomic_path

HEADLINE_METRICS = ("METEOR", "CIDEr", "AP50", "Recall")


@dataclass
class ScalingPoint:
    """One row of the data-scaling table: a pre-training size (clips=None for FT-only) and its metrics."""

    label: str
    clips: int | None
    metrics: dict[str, float] = field(default_factory=dict)


def format_value(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}"


def metric_table(
    rows: Sequence[tuple[str, Mapping[str, float]]],
    columns: Sequence[str],
    title: str,
    label: str = "pre-training",
    extra: Sequence[tuple[str, Sequence[str]]] = (),
) -> Any:
    """A rich table: one row per (name, metrics); `extra` adds (column name, one value per row)."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column(label)
    for column in columns:
        table.add_column(column, justify="right")
    for name, _ in extra:
        table.add_column(name, style="dim")
    for i, (name, metrics) in enumerate(rows):
        table.add_row(name, *(format_value(metrics.get(c)) for c in columns), *(values[i] for _, values in extra))
    return table


def plot_scaling_curve(points: Sequence[ScalingPoint], metrics: Sequence[str], out: str | Path, title: str) -> Path:
    """One panel per metric: metric vs pre-training clips (log x), FT-only as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sized = sorted((p for p in points if p.clips is not None), key=lambda p: p.clips)
    baseline = next((p for p in points if p.clips is None), None)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.0), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        xs = [p.clips for p in sized if metric in p.metrics]
        ys = [p.metrics[metric] for p in sized if metric in p.metrics]
        axis.plot(xs, ys, marker="o", label="pre-train + fine-tune")
        for p in sized:
            if metric in p.metrics:
                axis.annotate(p.label, (p.clips, p.metrics[metric]), textcoords="offset points", xytext=(0, 5), fontsize=7, ha="center")
        if baseline is not None and metric in baseline.metrics:
            axis.axhline(baseline.metrics[metric], linestyle="--", color="grey", label=baseline.label)
        if xs and min(xs) > 0 and max(xs) / min(xs) >= 10:
            axis.set_xscale("log")
        axis.set_title(metric)
        axis.set_xlabel("pre-training clips")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out
