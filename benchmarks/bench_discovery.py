"""A new-videos sensor tick over a large folder: the directory index (grove.data.discovery) vs a stat of every file.

    .venv/bin/python benchmarks/bench_discovery.py [--files 100000] [--per-dir 1000] [--repeats 5]

Makes `--files` empty video files, `--per-dir` a folder (HowTo100M-like names), then times, as
medians of `--repeats`: the sensor's former tick (list every folder, stat every video file, hash
the listing), an index tick over the unchanged folder, an index tick after one new file, and a
full rescan (what the sensor does once a day or after a cursor reset). Prints each and the ratio
former / unchanged index tick (> 1: the index is cheaper). The file system's caches are warm
here; on a network file system every stat is a round trip, and the ratio is larger.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grove.data.catalog import find_videos  # noqa: E402
from grove.data.discovery import scan_folder  # noqa: E402


def stat_every_file(root: Path) -> str:
    """What the sensor did before the index: stat each video file and hash (path, size, mtime)."""
    digest = hashlib.sha256()
    for path in find_videos(root):
        info = os.stat(path)
        digest.update(f"{path.relative_to(root).as_posix()}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def make_folder(root: Path, files: int, per_dir: int) -> None:
    old = 1_600_000_000 * 10**9  # at rest: no folder changed within the file system's time resolution
    for start in range(0, files, per_dir):
        folder = root / f"part{start // per_dir:05d}"
        folder.mkdir(parents=True)
        for i in range(start, min(start + per_dir, files)):
            (folder / f"v{i:08d}.mp4").touch()
        os.utime(folder, ns=(old, old))
    os.utime(root, ns=(old, old))


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--per-dir", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="grove-bench-discovery-") as tmp:
        root = Path(tmp) / "videos"
        make_folder(root, args.files, args.per_dir)
        index = scan_folder(root).index
        assert index.videos == args.files
        former = median_seconds(lambda: stat_every_file(root), args.repeats)
        unchanged = median_seconds(lambda: scan_folder(root, index), args.repeats)
        full = median_seconds(lambda: scan_folder(root), args.repeats)
        (root / "part00000" / "new.mp4").touch()
        changed = median_seconds(lambda: scan_folder(root, index), args.repeats)
        step = scan_folder(root, index)
    dirs = len(index.dirs)
    print(f"{args.files:,} video files in {dirs - 1:,} folders (medians of {args.repeats}):")
    print(f"  former tick: stat every file       {former * 1000:8.1f} ms")
    print(f"  index tick, nothing changed        {unchanged * 1000:8.1f} ms  ({dirs} directory stats, no listing)")
    print(f"  index tick, one new file           {changed * 1000:8.1f} ms  ({step.summary()})")
    print(f"  full rescan (daily, or on reset)   {full * 1000:8.1f} ms")
    print(f"ratio former / unchanged index tick = {former / unchanged:.0f} (> 1: the index is cheaper)")


if __name__ == "__main__":
    main()
