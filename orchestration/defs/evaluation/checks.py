"""Checks on every metrics partition: each headline metric is present, finite and in its range.

Metrics are fractions (evaluation/ reports them unscaled; papers print them x100). CIDEr is the one
headline metric that can exceed 1 (its consensus weighting reaches 10 on a perfect corpus).
"""

import math
from typing import Mapping, Sequence

import dagster as dg

RANGES = {"CIDEr": (0.0, 10.0)}
DEFAULT_RANGE = (0.0, 1.0)


def metric_problems(metrics: Mapping[str, float | None], required: Sequence[str]) -> list[str]:
    """One message per required metric that is missing, not a finite number, or out of range."""
    problems = []
    for name in required:
        value = metrics.get(name)
        low, high = RANGES.get(name, DEFAULT_RANGE)
        if value is None:
            problems.append(f"{name}: missing")
        elif not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"{name}: not a finite number ({value!r})")
        elif not low <= value <= high:
            problems.append(f"{name}: {value} outside [{low}, {high}]")
    return problems


def metric_check_specs(asset_key: dg.AssetKey, required: Sequence[str]) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "metrics_finite_in_range",
            asset=asset_key,
            description=f"{', '.join(required)} are present, finite and in range (CIDEr in [0, 10], the others in [0, 1]).",
        )
    ]


def metric_check_results(metrics: Mapping[str, float | None], required: Sequence[str]) -> list[dg.AssetCheckResult]:
    problems = metric_problems(metrics, required)
    return [
        dg.AssetCheckResult(
            check_name="metrics_finite_in_range",
            passed=not problems,
            metadata={"problems": dg.MetadataValue.json(problems)},
        )
    ]
