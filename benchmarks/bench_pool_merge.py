"""The pool merge when one shard is added to a large pool: incremental (annotation.merge) vs whole.

    .venv/bin/python benchmarks/bench_pool_merge.py [--shards 100] [--clips 500] [--boxes 40] [--frames 40] [--repeats 3]

Writes `--shards` finished shards of `--clips` clips each (stage-3 clip and raw box tables with
`--boxes` boxes a clip, two boxes of a phrase in a frame so processed boxes really merge; a stage-1
table of `--frames` rows a clip of 200 incompressible bytes, standing in for the frame captions a
whole merge re-hashes; empty failure tables; done.json records as the shard runner writes them; no
annotator runs), merges them
once, then adds one shard and times merging the pool again: a whole merge (every shard read and
checked against its done.json, processed boxes merged over the whole pool) and an incremental one
(only the new shard read). Prints both medians and the ratio whole / incremental (> 1: the
incremental merge is faster), and checks that both wrote the same bytes.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from annotation.merge import POOL_TABLES, merge_pool  # noqa: E402
from annotation.records import FAILURE_SCHEMA  # noqa: E402
from annotation.shards import AnnotatorConfig, ShardSpec, _write_shard, stage_version  # noqa: E402
from grove.data.schema import BOX_SCHEMA, CLIP_SCHEMA, sort_boxes  # noqa: E402

CONFIG = AnnotatorConfig()


def shard_tables(index: int, clips: int, boxes: int) -> tuple[ShardSpec, pa.Table, pa.Table]:
    """A shard's keys, its stage-3 clip table and its raw boxes (pairs of boxes of one phrase in a frame)."""
    keys = [f"v{index:05d}{i:04d}_0" for i in range(clips)]
    clip_rows = {
        "key": keys, "dataset": ["auto"] * clips, "split": ["all"] * clips, "video_id": [k[:-2] for k in keys],
        "clip_id": ["0"] * clips, "video_path": [f"videos/{k[:-2]}.mp4" for k in keys], "fps": [30.0] * clips,
        "clip_start_frame": [0] * clips, "clip_end_frame": [239] * clips, "num_frames": [40] * clips,
        "width": [455] * clips, "height": [256] * clips, "caption": ["a person cuts an onion"] * clips,
        "tagged_caption": ["<p> a person </p> cuts <p> an onion </p>"] * clips,
        "phrases": [["a person", "an onion"]] * clips, "extra": ["{}"] * clips,
    }
    n = clips * boxes
    box_of = list(range(boxes))
    rows = {
        "key": [k for k in keys for _ in box_of],
        "frame_index": [b // 4 for _ in keys for b in box_of],
        "frame_id": [(b // 4) * 6 for _ in keys for b in box_of],
        "box_index": [b % 4 for _ in keys for b in box_of],
        "phrase_index": [(b % 4) // 2 for _ in keys for b in box_of],
        "phrase": [("a person", "an onion")[(b % 4) // 2] for _ in keys for b in box_of],
        "x1": [float(b % 7) for b in range(n)], "y1": [float(b % 5) for b in range(n)],
        "x2": [float(b % 7 + 20) for b in range(n)], "y2": [float(b % 5 + 30) for b in range(n)],
        "score": [0.5 + (b % 10) / 20 for b in range(n)],
    }
    return (ShardSpec(index, tuple(keys)), pa.table(clip_rows, schema=CLIP_SCHEMA),
            sort_boxes(pa.table(rows, schema=BOX_SCHEMA)))


def frame_table(index: int, rows: int) -> pa.Table:
    """Stand-in stage-1 rows: 200 random bytes each (a frame's caption, phrases and boxes, roughly)."""
    data = np.random.default_rng(index).bytes(rows * 200)
    return pa.table({"frame": pa.Array.from_buffers(pa.binary(200), rows, [None, pa.py_buffer(data)])})


def write_shard(out: Path, index: int, clips: int, boxes: int, frames: int) -> ShardSpec:
    shard, clip_table, raw = shard_tables(index, clips, boxes)
    empty = FAILURE_SCHEMA.empty_table()
    stage1 = {"frames.parquet": frame_table(index, clips * frames), "failures.parquet": empty}
    _write_shard(out, 1, shard, stage_version(CONFIG, 1), stage1, {})
    _write_shard(out, 2, shard, stage_version(CONFIG, 2), {"failures.parquet": empty}, {})
    tables = {"clips.parquet": clip_table, "boxes_raw.parquet": raw, "failures.parquet": empty}
    _write_shard(out, 3, shard, stage_version(CONFIG, 3), tables, {"boxes": raw.num_rows})
    return shard


def timed_merge(template: Path, work: Path, shards: list[ShardSpec], incremental: bool) -> tuple[float, dict[str, bytes]]:
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template, work, copy_function=shutil.copy2)  # copy2 keeps the stamps the state records
    started = time.perf_counter()
    result = merge_pool(work, shards, CONFIG, incremental=incremental)
    seconds = time.perf_counter() - started
    assert result.whole != incremental and (not incremental or len(result.read) == 1), result
    return seconds, {name: (work / name).read_bytes() for name in POOL_TABLES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--clips", type=int, default=500, help="clips a shard")
    parser.add_argument("--boxes", type=int, default=40, help="raw boxes a clip")
    parser.add_argument("--frames", type=int, default=40, help="stage-1 rows a clip")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="grove-bench-merge-") as tmp:
        template = Path(tmp) / "pool"
        shards = [write_shard(template, i, args.clips, args.boxes, args.frames) for i in range(args.shards)]
        merge_pool(template, shards, CONFIG)  # the pool before the new shard, with its merge state
        shards.append(write_shard(template, args.shards, args.clips, args.boxes, args.frames))
        times: dict[bool, list[float]] = {False: [], True: []}
        written: dict[bool, dict[str, bytes]] = {}
        for _ in range(args.repeats):
            for incremental in (False, True):
                seconds, written[incremental] = timed_merge(template, Path(tmp) / "work", shards, incremental)
                times[incremental].append(seconds)
    assert written[True] == written[False], "the incremental merge wrote other bytes than the whole merge"
    whole, incremental = statistics.median(times[False]), statistics.median(times[True])
    rows = (args.shards + 1) * args.clips
    print(f"pool of {args.shards + 1} shards ({rows:,} clips, {rows * args.boxes:,} raw boxes), one shard new "
          f"(medians of {args.repeats}):")
    print(f"  whole merge        {whole:.2f} s  (every shard read)")
    print(f"  incremental merge  {incremental:.2f} s  (1 shard read; the same bytes)")
    print(f"ratio whole / incremental = {whole / incremental:.2f} (> 1: incremental is faster)")


if __name__ == "__main__":
    main()
