"""Catalog queries at HowTo100M scale: DuckDB subset and statistics queries on a 1M-row catalog Parquet.

    .venv/bin/python benchmarks/bench_catalog.py [--rows 1000000] [--repeats 5] [--out catalog.parquet]

Generates `--rows` catalog rows (grove.data.catalog.CATALOG_SCHEMA, HowTo100M-like values: mostly
H.264 at 455x256 or so, ~8 s, a few duplicate hashes), writes them as the catalog does (zstd Parquet),
then times each query from a fresh DuckDB connection reading the Parquet file (median of
`--repeats`, results fetched to Arrow). Goal: every query under 1 s; the ratio is time / goal.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grove.data.catalog import CATALOG_SCHEMA  # noqa: E402
from grove.data.schema import write_table  # noqa: E402

GOAL_S = 1.0


def catalog_rows(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    ids = [f"v{i:07d}" for i in range(rows)]
    relative = [f"videos/{video_id[:5]}/{video_id}.mp4" for video_id in ids]  # 10k folders of 100
    fps = rng.choice([23.976, 25.0, 29.97, 30.0, 59.94], size=rows, p=[0.1, 0.15, 0.5, 0.2, 0.05])
    duration = np.clip(rng.normal(8.0, 1.5, rows), 0.5, 60.0)
    sizes = rng.choice([(455, 256), (456, 256), (640, 360), (1280, 720), (256, 256)], size=rows,
                       p=[0.6, 0.1, 0.15, 0.1, 0.05])
    hashes = rng.integers(0, 2**63, size=rows, dtype=np.int64)
    hashes[rng.choice(rows, rows // 1000, replace=False)] = hashes[0]  # some duplicate content
    columns = {
        "video_id": ids,
        "video_path": [f"/data/howto100m/{path}" for path in relative],
        "relative_path": relative,
        "size_bytes": (duration * rng.uniform(40_000, 160_000, rows)).astype(np.int64),
        "mtime_ns": rng.integers(1.6e18, 1.7e18, rows, dtype=np.int64),
        "content_hash": [f"{h:032x}" for h in hashes.tolist()],
        "duration_s": duration,
        "fps": fps,
        "num_frames": np.round(duration * fps).astype(np.int64),
        "width": sizes[:, 0].astype(np.int32),
        "height": sizes[:, 1].astype(np.int32),
        "codec": rng.choice(["h264", "vp9", "av1", "hevc"], size=rows, p=[0.8, 0.12, 0.05, 0.03]),
        "container": rng.choice(["mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"], size=rows, p=[0.85, 0.15]),
    }
    return pa.table({name: pa.array(values) for name, values in columns.items()}).cast(CATALOG_SCHEMA)


QUERIES = {
    "subset: h264 ~30 fps 6-10 s >=256p": """
        SELECT video_id, video_path, num_frames FROM catalog
        WHERE codec = 'h264' AND fps BETWEEN 29 AND 31 AND duration_s BETWEEN 6 AND 10 AND height >= 256""",
    "subset: 10k ids (a scaling subset)": """
        SELECT c.* FROM catalog c JOIN (SELECT video_id FROM catalog USING SAMPLE 10000 ROWS (reservoir, 1)) s
        USING (video_id)""",
    "stats: per codec count/hours/quantiles": """
        SELECT codec, count(*) AS videos, sum(duration_s) / 3600 AS hours, sum(size_bytes) / 1e9 AS gigabytes,
               quantile_cont(duration_s, [0.1, 0.5, 0.9]) AS duration_q, avg(fps) AS mean_fps
        FROM catalog GROUP BY codec ORDER BY videos DESC""",
    "stats: resolution x fps histogram": """
        SELECT width, height, round(fps, 2) AS fps, count(*) AS videos, sum(num_frames) AS frames
        FROM catalog GROUP BY ALL ORDER BY videos DESC""",
    "duplicates: content hashes seen twice": """
        SELECT content_hash, count(*) AS copies, min(relative_path) AS kept FROM catalog
        GROUP BY content_hash HAVING count(*) > 1""",
}


def time_query(path: Path, sql: str, repeats: int) -> tuple[float, int]:
    times, rows = [], 0
    for _ in range(repeats):
        started = time.perf_counter()
        con = duckdb.connect()
        con.execute(f"CREATE VIEW catalog AS SELECT * FROM read_parquet('{path}')")
        rows = con.sql(sql).arrow().read_all().num_rows
        con.close()
        times.append(time.perf_counter() - started)
    return statistics.median(times), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="keep the Parquet here (default: temporary)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        path = args.out or Path(tmp) / "catalog.parquet"
        started = time.perf_counter()
        write_table(catalog_rows(args.rows), path, CATALOG_SCHEMA)
        made = time.perf_counter() - started
        print(f"catalog: {args.rows:,} rows, {path.stat().st_size / 1e6:.1f} MB Parquet (zstd), generated and "
              f"written in {made:.1f} s; DuckDB {duckdb.__version__}, median of {args.repeats}, goal {GOAL_S:g} s")
        print(f"{'query':<42}{'seconds':>9}{'rows':>10}{'x goal':>8}")
        worst = 0.0
        for name, sql in QUERIES.items():
            seconds, rows = time_query(path, sql, args.repeats)
            worst = max(worst, seconds)
            print(f"{name:<42}{seconds:>9.3f}{rows:>10,}{seconds / GOAL_S:>8.2f}")
    print(f"slowest query {worst:.3f} s: {'meets' if worst < GOAL_S else 'misses'} the {GOAL_S:g} s goal")


if __name__ == "__main__":
    main()
