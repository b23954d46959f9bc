"""Cost of the bootstrap intervals over test clips (evaluation.bootstrap), per metric.

Split: generated iGround-like clips (tests/evaluation/iground_fixtures.make_split; 24 clips is the demo's
test split size, 1,000 an iGround-sized one), scored once under the official and the corrected protocol
with captions (Java: PTB tokenizer and METEOR 1.5) and Recall (a hashed bag-of-words stand-in embedder).
Ours: every metric's replicates from the per-clip statistics the evaluation kept (means: a [B, n] matrix
product; BLEU and METEOR: summed sufficient statistics and the metric's own formula), then percentiles.
Baseline: re-running the evaluation on each resample (B x the evaluation's own time, Java included),
which is what a bootstrap without per-clip statistics costs.

Prints, per split size: the evaluation time, the time of each metric's replicates, all intervals of
both protocols (`add_intervals`), the JSON bytes the clip statistics add, and the ratio baseline / ours.

    .venv/bin/python benchmarks/bench_bootstrap.py [--clips 24 1000] [--resamples 1000] [--frames 40]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.bootstrap import (  # noqa: E402
    BootstrapSettings,
    POOLED_METRICS,
    POOLED_REPLICATES,
    add_intervals,
    mean_replicates,
    percentile_interval,
    resample_counts,
)
from evaluation.captions import MeteorScorer  # noqa: E402
from evaluation.iground import evaluate_iground_protocols, gt_from_tables, protocols_side_by_side  # noqa: E402
from grove.data.howtoground import records_to_tables  # noqa: E402
from grove.data.predictions import clip_prediction  # noqa: E402
from tests.evaluation.iground_fixtures import hashed_bag_of_words, make_split  # noqa: E402


def _timed(function, repeat: int = 3) -> float:
    """Best of `repeat` wall times (the machine is shared)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def bench(clips: int, frames: int, resamples: int, meteor: MeteorScorer) -> None:
    gt_records, pred_records = make_split(num_clips=clips, frames=frames, seed=0, all_query=True)
    table, boxes = records_to_tables(gt_records, "iground", "test")
    gt, predictions = gt_from_tables(table, boxes), {k: clip_prediction(k, v) for k, v in pred_records.items()}
    start = time.perf_counter()
    report = evaluate_iground_protocols(gt, predictions, hashed_bag_of_words, protocols_side_by_side("official", "auto", 0.5),
                                        meteor=meteor)
    evaluation = time.perf_counter() - start
    stats = report.clip_statistics
    settings = BootstrapSettings(resamples)
    print(f"\n{report.num_scored} clips scored, {resamples} resamples; evaluation (both protocols, Java) {evaluation:.2f} s")
    counts_time = _timed(lambda: resample_counts(stats.keys, resamples, settings.seed).astype(float))
    counts = resample_counts(stats.keys, resamples, settings.seed).astype(float)
    print(f"  resample counts [{resamples}, {len(stats.keys)}]: {1000 * counts_time:8.2f} ms (shared by every metric)")
    for name, (values, included) in stats.means.items():
        seconds = _timed(lambda: percentile_interval(mean_replicates(counts, values, included), settings.confidence))
        print(f"  {name:<8} per-clip mean            {1000 * seconds:8.2f} ms")
    for kind, rows in stats.pooled.items():
        seconds = _timed(lambda: [percentile_interval(r, settings.confidence)
                                  for r in POOLED_REPLICATES[kind](counts, rows).values()])
        names = "/".join(POOLED_METRICS[kind]) if kind == "meteor" else "Bleu_1..4"
        print(f"  {names:<10} summed statistics    {1000 * seconds:8.2f} ms")
    total = _timed(lambda: add_intervals(report, settings))
    official = len(json.dumps(stats.to_dict()))
    others = sum(len(json.dumps(a.clip_statistics.to_dict())) for a in report.alternatives.values())
    print(f"  all intervals, both protocols (add_intervals): {1000 * total:.1f} ms; clip statistics add "
          f"{official / 1024:.0f} + {others / 1024:.0f} KiB (official + corrected) to the JSON")
    print(f"  ratio baseline / ours: {resamples * evaluation / total:,.0f}x "
          f"(re-evaluating {resamples} resamples: ~{resamples * evaluation / 60:.0f} min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, nargs="+", default=[24, 1000])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args()
    with MeteorScorer() as meteor:
        for clips in args.clips:
            bench(clips, args.frames, args.resamples, meteor)


if __name__ == "__main__":
    main()
