"""What every evaluation returns: metrics, the protocol that produced them, and the input problems met on the way.

Bad input never aborts a whole evaluation: each problem is recorded against the item it concerns
(a clip key, a video id, a query id). An "error" is bad input that leaves the item out of the scores
(a CLI may refuse to report on such a reduced set without an explicit flag); "skipped" leaves it out
because the protocol says so (e.g. a clip without a prediction, which the official script skips); a
"warning" is reported while the item is still scored (e.g. a box clamped into the frame, as the
official script does). `counts` says how many items there were, how many were scored and how many
were left out, per reason: a report never stands on a silently reduced set.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Severity = Literal["error", "skipped", "warning"]


@dataclass(frozen=True)
class Problem:
    item: str
    kind: str
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.item}: {self.message}"


@dataclass
class EvalReport:
    """The result of one evaluation. `metrics` are plain fractions (papers print them x100)."""

    benchmark: str
    split: str
    metrics: dict[str, float]
    protocol: dict[str, Any]
    num_items: int = 0
    num_scored: int = 0
    problems: list[Problem] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    per_item: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def error_items(self) -> list[str]:
        """Items left out because their input is bad (severity "error"), in the order met."""
        return list(dict.fromkeys(p.item for p in self.problems if p.severity == "error"))

    @property
    def skipped_by_reason(self) -> dict[str, int]:
        """Items left out, per reason (the first error or skip recorded for each item)."""
        reasons: dict[str, str] = {}
        for p in self.problems:
            if p.severity in ("error", "skipped"):
                reasons.setdefault(p.item, p.kind)
        return dict(sorted(collections.Counter(reasons.values()).items()))

    @property
    def counts(self) -> dict[str, Any]:
        by_kind = collections.Counter(p.kind for p in self.problems)
        warned = {p.item for p in self.problems if p.severity == "warning"}
        return {"items": self.num_items, "scored": self.num_scored, "skipped": self.num_items - self.num_scored,
                "skipped_by_reason": self.skipped_by_reason, "items_with_errors": len(self.error_items),
                "items_with_warnings": len(warned), **{f"problem_{k}": v for k, v in sorted(by_kind.items())}}

    def to_dict(self, max_messages: int = 200, per_item: bool = False) -> dict[str, Any]:
        out = {
            "benchmark": self.benchmark,
            "split": self.split,
            "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
            "protocol": self.protocol,
            "counts": self.counts,
            "problems": [{"item": p.item, "kind": p.kind, "severity": p.severity, "message": p.message}
                         for p in self.problems[:max_messages]],
            "unavailable": self.unavailable,
        }
        if len(self.problems) > max_messages:
            out["problems_left_out"] = len(self.problems) - max_messages
        if per_item:
            out["per_item"] = self.per_item
        return out

    def summary_lines(self, percent: bool = True) -> list[str]:
        """Human-readable lines: metrics (x100 when `percent`), counts, first problems, unavailable metrics."""
        scale = 100.0 if percent else 1.0
        skipped = self.num_items - self.num_scored
        reasons = ", ".join(f"{kind}: {n}" for kind, n in self.skipped_by_reason.items())
        lines = [f"{self.benchmark} ({self.split}): {self.num_scored} of {self.num_items} items scored"]
        if skipped or reasons:
            lines.append(f"  left out: {skipped}" + (f" ({reasons})" if reasons else ""))
        width = max((len(k) for k in self.metrics), default=0)
        lines += [f"  {name:<{width}}  {value * scale:8.3f}" for name, value in self.metrics.items()]
        for problem in self.problems[:20]:
            lines.append(f"  [{problem.severity}] {problem}")
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more problems (see --json)")
        lines += [f"  {name}: {reason}" for name, reason in self.unavailable.items()]
        return lines


def _json_number(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def mean(values: Any) -> float:
    """`np.mean`, but 0.0 for no values (the official scripts' `np.mean(x) if x else 0.0`)."""
    return float(np.mean(values)) if len(values) else 0.0
