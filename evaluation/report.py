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
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from evaluation.bootstrap import ClipStatistics, Interval

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
    """The result of one evaluation. `metrics` are plain fractions (papers print them x100).

    `clip_statistics` keeps what each metric is recomputed from on a resample of the scored clips;
    `intervals` (metric -> `evaluation.bootstrap.Interval`) and `uncertainty` (how they were drawn) are
    set by `evaluation.bootstrap.add_intervals`. `alternatives` holds the same predictions scored under
    other protocols, by preset name (e.g. iGround's "corrected" beside the "official" numbers).
    """

    benchmark: str
    split: str
    metrics: dict[str, float]
    protocol: dict[str, Any]
    num_items: int = 0
    num_scored: int = 0
    problems: list[Problem] = field(default_factory=list)
    unavailable: dict[str, str] = field(default_factory=dict)
    per_item: dict[str, dict[str, float]] = field(default_factory=dict)
    clip_statistics: ClipStatistics | None = None
    intervals: dict[str, Interval] = field(default_factory=dict)
    uncertainty: dict[str, Any] = field(default_factory=dict)
    alternatives: dict[str, EvalReport] = field(default_factory=dict)

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
        """The report as JSON-ready values. With intervals: `intervals` (each with its confidence, resamples and
        seed), `uncertainty` and the `clip_statistics` they were drawn from (what paired comparisons need);
        with alternatives: `other_protocols`, each the same layout without benchmark and split."""
        out: dict[str, Any] = {
            "benchmark": self.benchmark,
            "split": self.split,
            "metrics": {k: _json_number(v) for k, v in self.metrics.items()},
        }
        if self.uncertainty:
            out["intervals"] = {name: interval.to_dict() for name, interval in self.intervals.items()}
            out["uncertainty"] = self.uncertainty
        out |= {
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
        if self.uncertainty and self.clip_statistics is not None:
            out["clip_statistics"] = self.clip_statistics.to_dict()
        if self.alternatives:
            out["other_protocols"] = {
                name: {k: v for k, v in other.to_dict(max_messages, per_item).items() if k not in ("benchmark", "split")}
                for name, other in self.alternatives.items()}
        return out

    def _metric_lines(self, scale: float) -> list[str]:
        """One line per metric: its value and interval under this protocol, then under each alternative."""
        reports = {str(self.protocol.get("preset", "value")): self, **self.alternatives}
        width = max((len(k) for k in self.metrics), default=0)
        cells = {name: [_cell(r.metrics.get(name), r.intervals.get(name), scale) for r in reports.values()]
                 for name in self.metrics}
        column = max([len(c) for row in cells.values() for c in row] + [len(n) for n in reports], default=8)
        lines = []
        if len(reports) > 1 or self.intervals:
            confidence = next((i.confidence for r in reports.values() for i in r.intervals.values()), None)
            header = "  ".join(f"{name:>{column}}" for name in reports)
            lines.append(f"  {'':<{width}}  {header}" + (f"   ({100 * confidence:g}% intervals)" if confidence else ""))
        lines += [f"  {name:<{width}}  " + "  ".join(f"{c:>{column}}" for c in row) for name, row in cells.items()]
        return lines

    def summary_lines(self, percent: bool = True) -> list[str]:
        """Human-readable lines: metrics (x100 when `percent`), counts, first problems, unavailable metrics."""
        scale = 100.0 if percent else 1.0
        skipped = self.num_items - self.num_scored
        reasons = ", ".join(f"{kind}: {n}" for kind, n in self.skipped_by_reason.items())
        lines = [f"{self.benchmark} ({self.split}): {self.num_scored} of {self.num_items} items scored"]
        if skipped or reasons:
            lines.append(f"  left out: {skipped}" + (f" ({reasons})" if reasons else ""))
        lines += self._metric_lines(scale)
        for problem in self.problems[:20]:
            lines.append(f"  [{problem.severity}] {problem}")
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more problems (see --json)")
        lines += [f"  {name}: {reason}" for name, reason in self.unavailable.items()]
        return lines


def _cell(value: float | None, interval: Interval | None, scale: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value * scale:.3f}"
    return text if interval is None else f"{text} [{interval.low * scale:.3f}, {interval.high * scale:.3f}]"


def _json_number(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def mean(values: Any) -> float:
    """`np.mean`, but 0.0 for no values (the official scripts' `np.mean(x) if x else 0.0`)."""
    return float(np.mean(values)) if len(values) else 0.0
