"""Checks on every metrics partition: each headline metric is present, finite and in its range, under
every protocol the partition reports, and its bootstrap interval (where drawn) is finite and ordered.

Metrics are fractions (evaluation/ reports them unscaled; papers print them x100). CIDEr is the one
headline metric that can exceed 1 (its consensus weighting reaches 10 on a perfect corpus). AP50's
range depends on the protocol: the official iGround evaluator averages COCOeval's -1 for a clip
without ground-truth boxes into the mean (protocol option `empty_gt_videos="include"`), so AP50 can
be negative there; with `"exclude"` such clips are left out and AP50 lies in [0, 1].
"""

import math
from typing import Any, Mapping, Sequence

import dagster as dg

RANGES = {"CIDEr": (0.0, 10.0)}
DEFAULT_RANGE = (0.0, 1.0)
CHECK_NAME = "metrics_finite_in_range"


def metric_range(name: str, protocol: Mapping[str, Any] | None = None) -> tuple[float, float]:
    """The values `name` can take under `protocol` (an iGround protocol record; None: the official one)."""
    if name == "AP50" and (protocol or {}).get("empty_gt_videos", "include") == "include":
        return (-1.0, 1.0)
    return RANGES.get(name, DEFAULT_RANGE)


def metric_problems(
    metrics: Mapping[str, float | None], required: Sequence[str], protocol: Mapping[str, Any] | None = None,
    intervals: Mapping[str, Any] | None = None,
) -> list[str]:
    """One message per required metric that is missing, not a finite number, or out of range; with
    `intervals` (metric -> `evaluation.bootstrap.Interval`), also one per interval missing, not finite or
    inverted."""
    problems = []
    for name in required:
        value = metrics.get(name)
        low, high = metric_range(name, protocol)
        if value is None:
            problems.append(f"{name}: missing")
        elif not _finite(value):
            problems.append(f"{name}: not a finite number ({value!r})")
        elif not low <= value <= high:
            problems.append(f"{name}: {value} outside [{low:g}, {high:g}]")
        if intervals is None or value is None:
            continue
        interval = intervals.get(name)
        if interval is None:
            problems.append(f"{name}: no interval")
        elif not (_finite(interval.low) and _finite(interval.high) and interval.low <= interval.high):
            problems.append(f"{name}: interval [{interval.low!r}, {interval.high!r}] is not finite and ordered")
    return problems


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def metric_check_specs(asset_key: dg.AssetKey, required: Sequence[str]) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset=asset_key,
            description=f"{', '.join(required)} are present, finite and in range under every protocol reported: CIDEr "
            "in [0, 10]; AP50 in [-1, 1] under the official protocol (clips without GT boxes count with COCOeval's -1), "
            "else [0, 1]; the others in [0, 1]; their bootstrap intervals, where drawn, finite and ordered.",
        )
    ]


def metric_check_results(
    metrics: Mapping[str, float | None], required: Sequence[str], protocol: Mapping[str, Any] | None = None
) -> list[dg.AssetCheckResult]:
    problems = metric_problems(metrics, required, protocol)
    ranges = {name: list(metric_range(name, protocol)) for name in required}
    return [
        dg.AssetCheckResult(
            check_name=CHECK_NAME,
            passed=not problems,
            metadata={"problems": dg.MetadataValue.json(problems), "ranges": dg.MetadataValue.json(ranges),
                      "empty_gt_videos": str((protocol or {}).get("empty_gt_videos", "include"))},
        )
    ]


def report_check_results(report: Any, required: Sequence[str]) -> list[dg.AssetCheckResult]:
    """The check over an `EvalReport` and its alternative protocols (problems prefixed with the protocol's
    name), intervals included where the report has them."""
    problems, ranges = [], {}
    for part in (report, *report.alternatives.values()):
        preset = str(part.protocol.get("preset", ""))
        found = metric_problems(part.metrics, required, part.protocol, part.intervals if part.uncertainty else None)
        problems += [f"{preset}: {p}" if preset else p for p in found]
        ranges[preset] = {name: list(metric_range(name, part.protocol)) for name in required}
    return [dg.AssetCheckResult(check_name=CHECK_NAME, passed=not problems,
                                metadata={"problems": dg.MetadataValue.json(problems), "ranges": dg.MetadataValue.json(ranges),
                                          "bootstrap": dg.MetadataValue.json(report.uncertainty or {})})]
