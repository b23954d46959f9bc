"""Decode speed of each video backend on the same clips, in frames per second, side by side.

    .venv/bin/python benchmarks/bench_decode.py [--clips 4] [--seconds 8] [--repeats 3] [--threads 0]

Clips are made like HowTo100M's: 456x256 H.264 at 29.97 fps with B-frames and a 2 s GOP, `--seconds`
long. Two tasks, each timed from opening the file to holding the RGB frames (median of `--repeats`):
  grid    the GROVE 5 fps annotation grid over the whole clip (every int(29.97/5) = 5th frame, 48 per 8 s);
  random  10 random frame ids per clip, unsorted.
The baseline is the official GROVE code's decoding: one `ffmpeg -ss t -frames:v 1` process per
frame (when ffmpeg is on PATH; timed once, it is slow); "pyav seek/frame" is the same idea
in-process. Ratios are each backend's frames/s over the baseline's. decord runs in-process here (its
raw speed); "decord isolated" is what `open_video(path, "decord")` costs by default (a worker process
per reader), "decord reused worker" one long-lived worker for all clips (`worker=`).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grove.data.frames import annotated_frame_ids  # noqa: E402
from grove.data.video import Worker, available_backends, open_video  # noqa: E402

WIDTH, HEIGHT, RATE, GOP = 456, 256, Fraction(30000, 1001), 60
RANDOM_FRAMES = 10

Decode = Callable[[Path, list[int]], np.ndarray]


def make_clip(path: Path, seconds: float, seed: int) -> Path:
    """Moving shapes over a drifting gradient: enough motion that P/B-frames carry real residuals."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    centres = rng.uniform([0, 0], [WIDTH, HEIGHT], size=(5, 2))
    speeds = rng.uniform(-4, 4, size=(5, 2))
    colours = rng.integers(0, 256, size=(5, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=RATE)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"x264-params": f"keyint={GOP}:bframes=3", "crf": "23", "preset": "veryfast"}
        for index in range(round(seconds * float(RATE))):
            image = np.stack([(xx + 2 * index) % 256, (yy + index) % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
            for centre, speed, colour in zip(centres, speeds, colours):
                cx, cy = (centre + speed * index) % (WIDTH, HEIGHT)
                image[(xx - cx) ** 2 + (yy - cy) ** 2 < 600] = colour
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def with_backend(backend: str, threads: int, isolate: bool = False, worker: Worker | None = None) -> Decode:
    def decode(path: Path, ids: list[int]) -> np.ndarray:
        with open_video(path, backend, isolate=isolate or worker is not None, threads=threads, worker=worker) as reader:
            return reader.get_frames(ids)

    return decode


def pyav_seek_per_frame(path: Path, ids: list[int]) -> np.ndarray:
    """One accurate seek per frame: the official per-frame access pattern, without process start-up."""
    frames = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame_id in ids:
            target = int(frame_id / float(stream.average_rate) / stream.time_base)
            container.seek(target, stream=stream, backward=True)
            frame = next(f for f in container.decode(stream) if f.pts is not None and f.pts >= target - 1)
            frames.append(frame.to_ndarray(format="rgb24"))
    return np.stack(frames)


def ffmpeg_per_frame(path: Path, ids: list[int]) -> np.ndarray:
    """The official GROVE decoding: `ffmpeg -ss t -i video -frames:v 1` to raw RGB, one process per frame."""
    frames = []
    for frame_id in ids:
        command = ["ffmpeg", "-v", "error", "-ss", f"{frame_id / float(RATE):.6f}", "-i", str(path),
                   "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        raw = subprocess.run(command, capture_output=True, check=True).stdout
        frames.append(np.frombuffer(raw, np.uint8).reshape(HEIGHT, WIDTH, 3))
    return np.stack(frames)


def frames_per_second(decode: Decode, jobs: list[tuple[Path, list[int]]], repeats: int) -> float:
    total = sum(len(ids) for _, ids in jobs)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for path, ids in jobs:
            decode(path, ids)
        times.append(time.perf_counter() - started)
    return total / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="decoder threads (0: FFmpeg decides)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        clips = [make_clip(Path(tmp) / f"clip{i}.mp4", args.seconds, seed=i) for i in range(args.clips)]
        num_frames = round(args.seconds * float(RATE))
        rng = np.random.default_rng(0)
        tasks = {
            "grid": [(clip, annotated_frame_ids(float(RATE), 0, num_frames - 1)) for clip in clips],
            "random": [(clip, rng.integers(0, num_frames, RANDOM_FRAMES).tolist()) for clip in clips],
        }
        decoders: dict[str, Decode] = {}
        if shutil.which("ffmpeg"):
            decoders["ffmpeg/frame (official)"] = ffmpeg_per_frame
        decoders["pyav seek/frame"] = pyav_seek_per_frame
        for backend in available_backends():
            decoders[backend] = with_backend(backend, args.threads)
        worker = Worker()
        if "decord" in decoders:
            decoders["decord isolated"] = with_backend("decord", args.threads, isolate=True)
            decoders["decord reused worker"] = with_backend("decord", args.threads, worker=worker)
        baseline = next(iter(decoders))

        rates = {
            name: {task: frames_per_second(decode, jobs, 1 if decode is ffmpeg_per_frame else args.repeats)
                   for task, jobs in tasks.items()}
            for name, decode in decoders.items()
        }
        worker.close()

    grid_ids = len(tasks["grid"][0][1])
    print(f"decode frames/s: {args.clips} clips, {WIDTH}x{HEIGHT} H.264 {float(RATE):.3f} fps, B-frames, "
          f"GOP {GOP}, {args.seconds:g} s; grid = {grid_ids} frames/clip, random = {RANDOM_FRAMES} frames/clip; "
          f"threads {args.threads}; median of {args.repeats}")
    print(f"{'decoder':<24}{'grid f/s':>10}{'x base':>8}{'random f/s':>12}{'x base':>8}")
    for name, rate in rates.items():
        print(f"{name:<24}{rate['grid']:>10.1f}{rate['grid'] / rates[baseline]['grid']:>8.2f}"
              f"{rate['random']:>12.1f}{rate['random'] / rates[baseline]['random']:>8.2f}")
    print(f"baseline: {baseline}")


if __name__ == "__main__":
    main()
