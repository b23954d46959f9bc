"""Presenting results: metric tables (values with their intervals) and the data-scaling plot."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from grove.io import atomic_path

HEADLINE_METRICS = ("METEOR", "CIDEr", "AP50", "Recall")
SEPARATES = "*"  # marks a difference whose interval excludes 0


@dataclass(frozen=True)
class Cell:
    """A table cell: a value, optionally its interval; `signed` prints a difference's sign, `mark` flags it."""

    value: float | None
    low: float | None = None
    high: float | None = None
    signed: bool = False
    mark: bool = False

    def __str__(self) -> str:
        if _missing(self.value):
            return "-"
        text = f"{self.value:+.2f}" if self.signed else f"{self.value:.2f}"
        if not (_missing(self.low) or _missing(self.high)):
            text += f" [{self.low:.2f}, {self.high:.2f}]"
        return text + (SEPARATES if self.mark else "")

    @classmethod
    def scaled(cls, value: float, interval: tuple[float | None, float | None] | None, scale: float = 1.0) -> Cell:
        """A value and its (low, high) interval, if any, multiplied by `scale` (e.g. 100 for percentages)."""
        low, high = interval or (None, None)
        return cls(value * scale, None if low is None else low * scale, None if high is None else high * scale)


@dataclass
class ScalingPoint:
    """One row of the data-scaling table: a pre-training size (clips=None for FT-only), its metrics and
    their intervals under `protocol`, and the same row under other protocols (`other_protocols`)."""

    label: str
    clips: int | None
    metrics: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    protocol: str = "official"
    other_protocols: dict[str, ScalingPoint] = field(default_factory=dict)

    @property
    def protocols(self) -> list[str]:
        return [self.protocol, *self.other_protocols]

    def under(self, protocol: str) -> ScalingPoint:
        """This row's numbers under `protocol` (KeyError if it was not scored so)."""
        return self if protocol == self.protocol else self.other_protocols[protocol]

    def cells(self, scale: float = 1.0) -> dict[str, Cell]:
        return {name: Cell.scaled(value, self.intervals.get(name), scale) for name, value in self.metrics.items()}


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_value(value: float | Cell | str | None) -> str:
    """A number to 2 decimals, a Cell as it prints, text as it is, a missing value as '-'."""
    if isinstance(value, (Cell, str)):
        return str(value)
    if _missing(value):
        return "-"
    return f"{value:.2f}"


def metric_table(
    rows: Sequence[tuple[str, Mapping[str, float | Cell | str]]],
    columns: Sequence[str],
    title: str,
    label: str = "pre-training",
    extra: Sequence[tuple[str, Sequence[str]]] = (),
    caption: str | None = None,
) -> Any:
    """A rich table: one row per (name, metrics), a metric a number or a `Cell` (value [interval]);
    `extra` adds (column name, one value per row)."""
    from rich.markup import escape
    from rich.table import Table

    # titles and captions are text: "[low, high]" would otherwise be read as rich markup and vanish
    table = Table(title=escape(title), caption=escape(caption) if caption else None)
    table.add_column(label)
    for column in columns:
        table.add_column(column, justify="right")
    for name, _ in extra:
        table.add_column(name, style="dim")
    for i, (name, metrics) in enumerate(rows):
        table.add_row(name, *(format_value(metrics.get(c)) for c in columns), *(values[i] for _, values in extra))
    return table


def markdown_table(label: str, columns: Sequence[str], rows: Sequence[tuple[str, Mapping[str, float | Cell]]]) -> str:
    """The same table as Markdown (Dagster metadata, reports)."""
    lines = [f"| {label} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + name + " | " + " | ".join(format_value(cells.get(c)) for c in columns) + " |" for name, cells in rows]
    return "\n".join(lines)


def plot_scaling_curve(points: Sequence[ScalingPoint], metrics: Sequence[str], out: str | Path, title: str,
                       protocols: Sequence[str] | None = None) -> Path:
    """`scaling_figure` written as a PNG (atomically)."""
    import matplotlib.pyplot as plt

    fig = scaling_figure(points, metrics, title, protocols)
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return out


def scaling_figure(points: Sequence[ScalingPoint], metrics: Sequence[str], title: str,
                   protocols: Sequence[str] | None = None) -> Any:
    """One panel per metric and protocol (rows: protocols): the metric against pre-training clips on a log
    axis, with each point's interval as an error bar; FT-only as a horizontal line in a band (its interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = list(protocols or (points[0].protocols if points else ["official"]))
    sized = sorted((p for p in points if p.clips is not None), key=lambda p: p.clips)
    baseline = next((p for p in points if p.clips is None), None)
    fig, axes = plt.subplots(len(protocols), len(metrics), figsize=(3.2 * len(metrics), 3.0 * len(protocols)),
                             squeeze=False)
    for row, protocol in zip(axes, protocols):
        for axis, metric in zip(row, metrics):
            _scaling_panel(axis, [p.under(protocol) for p in sized],
                           baseline.under(protocol) if baseline is not None else None, metric)
            axis.set_title(f"{metric} ({protocol})")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _scaling_panel(axis: Any, sized: Sequence[ScalingPoint], baseline: ScalingPoint | None, metric: str) -> None:
    shown = [p for p in sized if metric in p.metrics]
    xs = [p.clips for p in shown]
    ys = [p.metrics[metric] for p in shown]
    # asymmetric error bars: percentile intervals need not be centred on the point estimate
    below = [p.metrics[metric] - p.intervals[metric][0] if metric in p.intervals else 0.0 for p in shown]
    above = [p.intervals[metric][1] - p.metrics[metric] if metric in p.intervals else 0.0 for p in shown]
    axis.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3, label="pre-train + fine-tune")
    for p in shown:
        axis.annotate(p.label, (p.clips, p.metrics[metric]), textcoords="offset points", xytext=(0, 5), fontsize=7,
                      ha="center")
    if baseline is not None and metric in baseline.metrics:
        axis.axhline(baseline.metrics[metric], linestyle="--", color="grey", label=baseline.label)
        if metric in baseline.intervals:
            axis.axhspan(*baseline.intervals[metric], color="grey", alpha=0.2, linewidth=0)
    if xs and min(xs) > 0:
        axis.set_xscale("log")  # pre-training sizes grow geometrically (1K ... 1M in the paper)
    axis.set_xlabel("pre-training clips")
    axis.grid(alpha=0.3)
