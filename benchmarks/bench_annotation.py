"""Throughput of the annotator's CPU backends: clips/s per stage on the demo-size synthetic dataset.

    .venv/bin/python benchmarks/bench_annotation.py [--clips 240] [--work DIR] [--llm-clips 12]

Makes (or reuses) a synthetic dataset and its catalog with `grove data synth` / `grove data ingest`'s
functions, then annotates it with the CPU defaults (simulated + consensus + lexical), runs stage 3
again with `embedding`, and stage 2 with `transformers` on a tiny random-weight Llama (it measures the
engine's batching and the repair/fallback path, not a real LLM's speed). Prints clips/s per stage,
wall and CPU time (the machine may be shared), and the ratio against the goal: the demo annotates a
few hundred clips "in well under a minute"; goal = 240 clips in 30 s end to end (ratio > 1 is better).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL_SECONDS_PER_240 = 30.0


def prepare(work: Path, clips: int) -> Path:
    from grove.data.catalog import build_catalog
    from grove.data.synthetic import SynthConfig, generate_dataset

    synth, catalog = work / "synth", work / "catalog"
    generate_dataset(synth, SynthConfig(pool_clips=clips, train_clips=0, val_clips=0, test_clips=0))
    if not (catalog / "catalog.json").exists():
        build_catalog(synth, catalog)
    return catalog


def timed_stage(annotator, stage: int, shards) -> tuple[float, float, int]:
    wall, cpu = time.perf_counter(), time.process_time()
    clips = sum(annotator.run_stage(stage, shard, force=True).clips for shard in shards)
    return time.perf_counter() - wall, time.process_time() - cpu, clips


def report(name: str, wall: float, cpu: float, clips: int) -> None:
    print(f"{name:<34} {clips:>5} clips  {clips / wall:8.1f} clips/s wall  {clips / max(cpu, 1e-9):8.1f} clips/s CPU"
          f"  ({wall:.1f} s wall, {cpu:.1f} s CPU)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--work", type=Path, default=None, help="Keep data here (default: a temporary folder).")
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--llm-clips", type=int, default=12, help="Clips for the tiny transformers engine (0: skip).")
    args = parser.parse_args()

    from annotation.shards import AnnotatorConfig, Annotator, merge_shards, shards_of

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-annotation-"))
    catalog = prepare(work, args.clips)
    out = work / "auto"
    shutil.rmtree(out, ignore_errors=True)
    config = AnnotatorConfig()
    annotator = Annotator(config, catalog, out)
    shards = shards_of(annotator.catalog.clips["key"].to_pylist(), args.shard_size)
    annotator.parser.svos(["Warm-up: a cup moves."])  # model loading is not throughput

    print(f"annotation throughput, {annotator.catalog.clips.num_rows} clips, shard size {args.shard_size}")
    totals = [0.0, 0.0]
    for stage, name in ((1, "stage 1 simulated (moderate noise)"), (2, "stage 2 consensus"), (3, "stage 3 lexical")):
        wall, cpu, clips = timed_stage(annotator, stage, shards)
        totals[0] += wall
        totals[1] += cpu
        report(name, wall, cpu, clips)
    merge_shards(out, shards, config)

    embedding = Annotator(AnnotatorConfig(stage3="embedding"), catalog, out)
    embedding.engine(3).embed(["warm-up"])
    report("stage 3 embedding (MiniLM)", *timed_stage(embedding, 3, shards))

    if args.llm_clips:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "annotation"))
        from conftest import make_tiny_causal_lm

        model = make_tiny_causal_lm(work / "tiny-llama")
        llm = Annotator(AnnotatorConfig(stage2="transformers", stage2_options={"model": str(model), "max_new_tokens": 32}),
                        catalog, work / "auto-llm")
        few = shards_of(llm.catalog.clips["key"].to_pylist()[: args.llm_clips], args.llm_clips)
        llm.run_stage(1, few[0])
        report("stage 2 transformers (tiny random)", *timed_stage(llm, 2, few))

    per_240 = totals[0] * 240 / annotator.catalog.clips.num_rows
    cpu_240 = totals[1] * 240 / annotator.catalog.clips.num_rows
    print(f"default CPU engines end to end: {per_240:.1f} s wall, {cpu_240:.1f} s CPU per 240 clips; "
          f"goal {GOAL_SECONDS_PER_240:.0f} s; ratio {GOAL_SECONDS_PER_240 / per_240:.2f} on wall time, "
          f"{GOAL_SECONDS_PER_240 / cpu_240:.2f} on CPU time (wall time counts other processes on a shared machine)")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
