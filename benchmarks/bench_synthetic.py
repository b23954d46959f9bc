"""Synthetic-dataset generation rate: clips per second, against the goal of 1,000 clips in 60 s on 2 cores.

    .venv/bin/python benchmarks/bench_synthetic.py [--clips 1000] [--workers 2] [--out DIR]

Renders a fresh dataset (demo parameters: 160x96, 10 fps, 8 s) into a temporary folder, then times
a re-run into the finished folder. Besides wall-clock time it prints the CPU seconds per clip (all
processes), so a figure taken on a busy machine can be told apart from a slow generator: the
"CPU-bound rate" is what the same work gives on `workers` otherwise idle cores.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grove.data.synthetic import SynthConfig, generate_dataset, split_counts_for_total, with_split_counts  # noqa: E402

GOAL_CLIPS, GOAL_SECONDS = 1000, 60.0


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=GOAL_CLIPS)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="keep the dataset here (default: a temporary folder)")
    args = parser.parse_args()

    config = with_split_counts(SynthConfig(), split_counts_for_total(args.clips))
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        out = args.out or Path(tmp) / "synthetic"
        cpu0, wall0 = cpu_seconds(), time.perf_counter()
        summary = generate_dataset(out, config, workers=args.workers)
        wall = time.perf_counter() - wall0
        cpu = cpu_seconds() - cpu0
        rerun = generate_dataset(out, config, workers=args.workers)

    rate = args.clips / wall
    goal_rate = GOAL_CLIPS / GOAL_SECONDS
    cpu_bound_rate = args.clips * args.workers / cpu
    print(f"synthetic generation: {args.clips} clips ({summary.encoded} encoded) with {args.workers} workers "
          f"in {wall:.1f} s = {rate:.1f} clips/s")
    print(f"  goal {GOAL_CLIPS} clips in {GOAL_SECONDS:.0f} s = {goal_rate:.1f} clips/s; ratio rate/goal = {rate / goal_rate:.2f}"
          f" ({'meets' if rate >= goal_rate else 'misses'} the goal)")
    print(f"  CPU {cpu:.1f} s = {1000 * cpu / args.clips:.1f} ms/clip; CPU-bound rate on {args.workers} idle cores "
          f"{cpu_bound_rate:.1f} clips/s, ratio {cpu_bound_rate / goal_rate:.2f}")
    print(f"  re-run into the finished folder: {rerun.seconds:.3f} s (up to date: {rerun.up_to_date})")


if __name__ == "__main__":
    main()
