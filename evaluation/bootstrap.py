"""Uncertainty over test clips: percentile bootstrap intervals of every metric, and paired differences.

A resample draws n clips with replacement from the n scored clips; `resample_counts` gives, for each
of B resamples, how many times each clip is drawn. A metric is never recomputed from raw input on a
resample: each evaluation keeps per-clip quantities once (`ClipStatistics`) and every metric is a
cheap function of the counts (a [B, n] matrix product plus the metric's own aggregation):

- per-clip means (`means`): the metric is the mean of a per-clip value over the clips it includes,
  so a resample's value is sum(count * value) / sum(count) over those clips. iGround AP50 (GROVE's
  `--evaluation_mode per_video`: COCOeval per video, then the mean; metrics_spec.md 7), mIoU and Recall
  (per-video averages; the `empty_gt_videos` option decides which clips they include), ROUGE-L (mean of
  per-caption scores) and CIDEr-D (see below).
- pooled metrics (`pooled`): the corpus value comes from summed per-clip sufficient statistics, so a
  resample sums the drawn clips' statistics and applies the metric's own formula: BLEU-1..4
  (pycocoevalcap's totals of n-gram matches and lengths, then the brevity penalty) and METEOR (the
  jar's per-segment statistics lines, summed as `MeteorStats.addStats` does, then
  `computeMetrics`; bit-for-bit the JVM's corpus score, so Java runs once, not once per resample).
- CIDEr-D's document frequencies are kept FIXED at the whole test split's reference corpus: a
  resample averages the clips' per-clip CIDEr-D computed with the split's IDF. Recomputing the IDF on a
  resample would count a clip drawn twice as two documents holding its n-grams, which lowers those
  n-grams' weights and biases every replicate below the point estimate; the IDF of a split of hundreds
  of clips is also a property of the benchmark, not of the model, so it stays what the paper's number
  used. The interval therefore describes the variability of the clips' scores given the split's IDF.

Clips are drawn over their keys in sorted order, so a seed gives the same resamples for any model
scored on the same clips, whatever order its evaluation lists them in: intervals of two such models
are computed on the same resamples, and their paired difference (`paired_differences`) is the
difference of their replicates, resample by resample; the clip sets must be equal (else ValueError).
Point estimates are never re-derived here: they stay the evaluator's (official) numbers; only the
interval around each comes from the replicates (95% percentile interval by default).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from evaluation.captions import BLEU, bleu_from_statistics, meteor_aggregable, meteor_from_statistics

if TYPE_CHECKING:
    from evaluation.report import EvalReport

METHOD = "percentile bootstrap over test clips"
CIDER_IDF = ("fixed: per-clip CIDEr-D with the whole split's reference document frequencies, averaged over each "
             "resample (recomputing the IDF on a resample would count a clip drawn twice as two documents)")
POOLED = {"bleu": "BLEU-1..4 from summed per-clip n-gram statistics", "meteor": (
    "METEOR from summed per-clip METEOR 1.5 statistics (MeteorStats.addStats, then computeMetrics)")}


@dataclass(frozen=True)
class BootstrapSettings:
    """How intervals are drawn: `resamples` resamples of the clips (0: no intervals), `seed`, and the
    two-sided `confidence` of the percentile interval. The profile option `evaluation.bootstrap`."""

    resamples: int = 1000
    seed: int = 0
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if self.resamples < 0:
            raise ValueError(f"bootstrap resamples must be >= 0, got {self.resamples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"bootstrap confidence must be in (0, 1), got {self.confidence}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "BootstrapSettings":
        """From a profile's `evaluation.bootstrap` mapping (missing keys take the defaults)."""
        values = dict(values or {})
        unknown = set(values) - {"resamples", "seed", "confidence"}
        if unknown:
            raise ValueError(f"evaluation.bootstrap: unknown key(s) {sorted(unknown)}; known: resamples, seed, confidence")
        defaults = cls()
        return cls(int(values.get("resamples", defaults.resamples)), int(values.get("seed", defaults.seed)),
                   float(values.get("confidence", defaults.confidence)))

    def to_dict(self) -> dict[str, Any]:
        return {"method": METHOD, "resamples": self.resamples, "seed": self.seed, "confidence": self.confidence}


@dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile interval, with what drew it (recorded next to every interval)."""

    value: float
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int

    @property
    def separates(self) -> bool:
        """For a difference: whether the interval excludes 0 (the two models are told apart)."""
        return self.low > 0.0 or self.high < 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "confidence": self.confidence, "resamples": self.resamples,
                "seed": self.seed}

    @classmethod
    def from_dict(cls, value: float, record: Mapping[str, Any]) -> "Interval":
        return cls(float(value), float(record["low"]), float(record["high"]), float(record["confidence"]),
                   int(record["resamples"]), int(record["seed"]))


def resample_counts(keys: Sequence[str], resamples: int, seed: int) -> np.ndarray:
    """[resamples, len(keys)]: how many times each clip is drawn in each resample of len(keys) draws.

    The draws index the keys in sorted order, then map back to `keys`' order: the same seed resamples
    the same clips for every model scored on these keys (which is what makes differences paired).
    """
    n = len(keys)
    if len(set(keys)) != n:
        raise ValueError("clip keys must be unique to be resampled")
    if n == 0 or resamples == 0:
        return np.zeros((resamples, n), np.int64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    counts_sorted = np.bincount((draws + n * np.arange(resamples)[:, None]).ravel(), minlength=resamples * n)
    counts_sorted = counts_sorted.reshape(resamples, n)
    rank = np.empty(n, np.int64)
    rank[np.argsort(np.asarray(keys, dtype=object), kind="stable")] = np.arange(n)
    return counts_sorted[:, rank]


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    """The two-sided percentile interval of bootstrap replicates (numpy's linear quantiles)."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(replicates, np.float64), [tail, 1.0 - tail])
    return float(low), float(high)


def mean_replicates(counts: np.ndarray, values: np.ndarray, included: np.ndarray | None = None) -> np.ndarray:
    """[B]: the mean of per-clip `values` over the included clips of each resample (0 when none is drawn,
    as the evaluators' `mean` of nothing)."""
    counts = np.asarray(counts, np.float64)  # float counts: two BLAS matrix-vector products (exact for integer sums)
    mask = np.ones(counts.shape[1]) if included is None else np.asarray(included, np.float64)
    total = counts @ (np.asarray(values, np.float64) * mask)
    drawn = counts @ mask
    return np.divide(total, drawn, out=np.zeros(len(counts)), where=drawn > 0)


def bleu_replicates(counts: np.ndarray, stats: np.ndarray) -> dict[str, np.ndarray]:
    """BLEU-1..4 of each resample from per-clip statistics [n, 10] (`evaluation.captions.bleu_statistics`)."""
    scores = bleu_from_statistics(counts @ np.asarray(stats, np.float64))
    return {name: scores[:, k] for k, name in enumerate(BLEU)}


def meteor_replicates(counts: np.ndarray, stats: np.ndarray) -> dict[str, np.ndarray]:
    """METEOR of each resample from per-clip METEOR 1.5 statistics [n, 23]."""
    return {"METEOR": meteor_from_statistics(counts @ meteor_aggregable(stats))}


POOLED_REPLICATES: dict[str, Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]]] = {
    "bleu": bleu_replicates, "meteor": meteor_replicates}
POOLED_METRICS = {"bleu": BLEU, "meteor": ("METEOR",)}


@dataclass
class ClipStatistics:
    """Per-clip quantities from which every metric of one evaluation is recomputed on a resample of its clips.

    `means[metric]` = (per-clip value, which clips the mean includes or None for all); `pooled[kind]` =
    per-clip sufficient statistics of the pooled metrics ("bleu" [n, 10], "meteor" [n, 23]); rows follow `keys`.
    """

    keys: list[str]
    means: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    pooled: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.keys)
        for name, (values, included) in self.means.items():
            if len(values) != n or (included is not None and len(included) != n):
                raise ValueError(f"clip statistics of {name}: {len(values)} values for {n} clips")
        for kind, stats in self.pooled.items():
            if kind not in POOLED_REPLICATES:
                raise ValueError(f"unknown pooled statistics {kind!r}; known: {sorted(POOLED_REPLICATES)}")
            if len(stats) != n:
                raise ValueError(f"clip statistics of {kind}: {len(stats)} rows for {n} clips")

    @property
    def metrics(self) -> list[str]:
        return [*self.means, *(name for kind in self.pooled for name in POOLED_METRICS[kind])]

    def replicates(self, counts: np.ndarray) -> dict[str, np.ndarray]:
        """Every metric's value on each resample ([B] per metric) for counts [B, n] (`resample_counts`)."""
        counts = np.asarray(counts, np.float64)
        out = {name: mean_replicates(counts, values, included) for name, (values, included) in self.means.items()}
        for kind, stats in self.pooled.items():
            out.update(POOLED_REPLICATES[kind](counts, stats))
        return out

    def aligned(self, keys: Sequence[str]) -> "ClipStatistics":
        """The same statistics with rows in `keys`' order; ValueError if the clip sets differ."""
        if list(keys) == self.keys:
            return self
        require_same_clips(self.keys, keys)
        row = {key: i for i, key in enumerate(self.keys)}
        order = np.array([row[key] for key in keys], np.int64)
        return ClipStatistics(list(keys), {name: (values[order], None if included is None else included[order])
                                           for name, (values, included) in self.means.items()},
                              {kind: stats[order] for kind, stats in self.pooled.items()})

    def to_dict(self) -> dict[str, Any]:
        return {"keys": list(self.keys),
                "means": {name: {"values": values.tolist(), **({} if included is None else {"included": included.tolist()})}
                          for name, (values, included) in self.means.items()},
                "pooled": {kind: stats.tolist() for kind, stats in self.pooled.items()}}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> "ClipStatistics":
        means = {name: (np.asarray(m["values"], np.float64), None if "included" not in m else np.asarray(m["included"], bool))
                 for name, m in record.get("means", {}).items()}
        pooled = {kind: np.asarray(rows, np.float64).reshape(len(rows), -1) for kind, rows in record.get("pooled", {}).items()}
        return cls(list(record["keys"]), means, pooled)


def require_same_clips(keys_a: Sequence[str], keys_b: Sequence[str]) -> None:
    """Paired comparisons need the same clips on both sides: a clear error naming the difference otherwise."""
    a, b = set(keys_a), set(keys_b)
    if a == b and len(a) == len(keys_a) == len(keys_b):
        return
    only_a, only_b = sorted(a - b), sorted(b - a)
    raise ValueError(
        f"paired comparison needs the same clips on both sides: {len(a)} vs {len(b)} clips, "
        f"{len(only_a)} only in the first (e.g. {only_a[:3]}), {len(only_b)} only in the second (e.g. {only_b[:3]})"
        + ("" if len(a) == len(keys_a) and len(b) == len(keys_b) else "; a clip key is repeated"))


def intervals(stats: ClipStatistics, points: Mapping[str, float | None], settings: BootstrapSettings) -> dict[str, Interval]:
    """An interval around each point estimate in `points` that `stats` can recompute (others are left out)."""
    if settings.resamples == 0:
        return {}
    counts = resample_counts(stats.keys, settings.resamples, settings.seed)
    replicates = stats.replicates(counts)
    return {name: Interval(float(value), *percentile_interval(replicates[name], settings.confidence),
                           settings.confidence, settings.resamples, settings.seed)
            for name, value in points.items() if name in replicates and _finite(value)}


def paired_differences(
    stats_a: ClipStatistics, points_a: Mapping[str, float | None],
    stats_b: ClipStatistics, points_b: Mapping[str, float | None], settings: BootstrapSettings,
) -> dict[str, Interval]:
    """Metric of A minus metric of B with its interval: both recomputed on the same resamples of the
    clips (A and B must have been scored on the same clips), the difference taken resample by resample."""
    if settings.resamples == 0:
        raise ValueError("paired differences need bootstrap resamples > 0")
    require_same_clips(stats_a.keys, stats_b.keys)
    stats_b = stats_b.aligned(stats_a.keys)
    counts = resample_counts(stats_a.keys, settings.resamples, settings.seed)
    replicates_a, replicates_b = stats_a.replicates(counts), stats_b.replicates(counts)
    out = {}
    for name in points_a:
        if name in replicates_a and name in replicates_b and _finite(points_a[name]) and _finite(points_b.get(name)):
            low, high = percentile_interval(replicates_a[name] - replicates_b[name], settings.confidence)
            out[name] = Interval(float(points_a[name]) - float(points_b[name]), low, high, settings.confidence,
                                 settings.resamples, settings.seed)
    return out


def _finite(value: Any) -> bool:
    return value is not None and not isinstance(value, bool) and math.isfinite(float(value))


def add_intervals(report: EvalReport, settings: BootstrapSettings) -> EvalReport:
    """Set `intervals` and `uncertainty` of a report and of its alternatives, from their clip statistics.

    Reports without clip statistics, or `settings.resamples == 0`, get none (and their JSON no
    intervals). Returns the report.
    """
    for report_ in (report, *report.alternatives.values()):
        stats = report_.clip_statistics
        if stats is None or settings.resamples == 0:
            continue
        report_.intervals = intervals(stats, report_.metrics, settings)
        notes = {name: "mean of per-clip values over the included clips" for name in stats.means}
        if "CIDEr" in stats.means:
            notes["CIDEr"] = CIDER_IDF
        notes |= {name: POOLED[kind] for kind in stats.pooled for name in POOLED_METRICS[kind]}
        report_.uncertainty = {**settings.to_dict(), "clips": len(stats.keys), "metrics": notes}
    return report
