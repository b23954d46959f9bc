"""Checks on every metrics partition: each headline metric is present, finite and in its range.

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
    metrics: Mapping[str, float | None], required: Sequence[str], protocol: Mapping[str, Any] | None = None
) -> list[str]:
    """One message per required metric that is missing, not a finite number, or out of range."""
    problems = []
    for name in required:
        value = metrics.get(name)
        low, high = metric_range(name, protocol)
        if value is None:
            problems.append(f"{name}: missing")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{name}: not a finite number ({value!r})")
        elif not low <= value <= high:
            problems.append(f"{name}: {value} outside [{low:g}, {high:g}]")
    return problems


def metric_check_specs(asset_key: dg.AssetKey, required: Sequence[str]) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset=asset_key,
            description=f"{', '.join(required)} are present, finite and in range: CIDEr in [0, 10]; AP50 in [-1, 1] "
            "under the official protocol (clips without GT boxes count with COCOeval's -1), else [0, 1]; "
            "the others in [0, 1].",
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
