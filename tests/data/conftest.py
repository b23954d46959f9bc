"""Video fixtures written with PyAV. Every frame shows its own number as a row of black/white blocks,
so a test reads back which frame a backend returned, not just whether two backends agree."""

from __future__ import annotations

import os
import signal
import time

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from grove.data.video import PyAVReader

WIDTH, HEIGHT = 128, 96
CODE_BITS = 10
BLOCK, PITCH = 16, 24


def frame_image(number: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A frame whose blocks spell `number` in binary, over a background that changes every frame."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[..., 0] = (number * 37) % 256
    image[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
    image[..., 2] = np.linspace(255, 0, height, dtype=np.uint8)[:, None]
    for bit in range(CODE_BITS):
        row, col = divmod(bit, 5)
        top, left = 8 + row * PITCH, 8 + col * PITCH
        image[top : top + BLOCK, left : left + BLOCK] = 255 if (number >> bit) & 1 else 0
    return image


def read_frame_code(image: np.ndarray) -> int:
    number = 0
    for bit in range(CODE_BITS):
        row, col = divmod(bit, 5)
        top, left = 8 + row * PITCH + 4, 8 + col * PITCH + 4
        if image[top : top + BLOCK - 8, left : left + BLOCK - 8].mean() > 128:
            number |= 1 << bit
    return number


@dataclass(frozen=True)
class VideoSpec:
    """How a fixture video is encoded; `frame_ms` gives per-frame durations for variable frame rate."""

    name: str
    rate: Fraction
    num_frames: int
    codec: str = "libx264"
    bframes: int = 3
    gop: int = 12
    frame_ms: tuple[int, ...] = field(default=())
    faststart: bool = False

    @property
    def expected_fps(self) -> float:
        if self.frame_ms:
            return 1000.0 * self.num_frames / sum(self.frame_ms)
        return float(self.rate)

    @property
    def expected_duration_s(self) -> float:
        return sum(self.frame_ms) / 1000.0 if self.frame_ms else self.num_frames / float(self.rate)


def write_video(path: Path, spec: VideoSpec, width: int = WIDTH, height: int = HEIGHT) -> Path:
    options = {"movflags": "+faststart"} if spec.faststart else {}
    with av.open(str(path), "w", options=options) as container:
        stream = container.add_stream(spec.codec, rate=spec.rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if spec.codec == "libx264":
            stream.options = {
                "x264-params": f"bframes={spec.bframes}:keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0",
                "crf": "16",
                "preset": "fast",
            }
        else:
            stream.codec_context.gop_size = spec.gop
            stream.codec_context.max_b_frames = spec.bframes
            stream.codec_context.bit_rate = 2_000_000
        if spec.frame_ms:  # variable frame rate: millisecond clock, explicit timestamps
            stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for number in range(spec.num_frames):
            frame = av.VideoFrame.from_ndarray(frame_image(number, width, height), format="rgb24")
            if spec.frame_ms:
                frame.pts, frame.time_base = pts, Fraction(1, 1000)
                pts += spec.frame_ms[number]
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _vfr_durations(count: int, seed: int = 7) -> tuple[int, ...]:
    return tuple(int(d) for d in np.random.default_rng(seed).choice([20, 33, 50, 100], size=count))


VIDEO_SPECS = (
    VideoSpec("bframes_2997.mp4", Fraction(30000, 1001), 45),
    VideoSpec("bframes_23976.mkv", Fraction(24000, 1001), 45),
    VideoSpec("vfr.mp4", Fraction(30), 45, frame_ms=_vfr_durations(45)),
    VideoSpec("mpeg4_25.avi", Fraction(25), 40, codec="mpeg4", bframes=0),
)


@pytest.fixture(scope="session")
def fixture_videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, VideoSpec]]:
    folder = tmp_path_factory.mktemp("videos")
    return {spec.name: (write_video(folder / spec.name, spec), spec) for spec in VIDEO_SPECS}


# MPEG-4 Part 2 with B-frames: decord 0.6 returns wrong frames on random access here (asked for 37,
# got 39; decord #365), so it is checked against PyAV and torchcodec only.
MPEG4_BFRAMES = VideoSpec("mpeg4_bframes_25.mp4", Fraction(25), 40, codec="mpeg4", bframes=2)


@pytest.fixture(scope="session")
def mpeg4_bframes_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("mpeg4") / MPEG4_BFRAMES.name, MPEG4_BFRAMES)


# Test-only backends for the isolation tests. They live here, not in the test module, because the
# worker process imports them by name, and this module imports nothing slow.


class StallingReader:
    """Never returns from opening, like decord's native loop on a file that over-reports frames."""

    backend = "stalling"

    def __init__(self, path: Path, threads: int = 0) -> None:
        time.sleep(3600)


class StallOnFramesReader(PyAVReader):
    backend = "stall-on-frames"

    def get_frames(self, frame_ids):  # type: ignore[override]
        time.sleep(3600)


class CrashingReader:
    """Dies of a segmentation fault, as a native decoder can."""

    backend = "crashing"

    def __init__(self, path: Path, threads: int = 0) -> None:
        os.kill(os.getpid(), signal.SIGSEGV)


def worker_fail(state: dict, message: str) -> None:
    raise ValueError(message)


def worker_accumulate(state: dict, value: int) -> int:
    state["total"] = state.get("total", 0) + value
    return state["total"]


def worker_sleep(state: dict, seconds: float) -> None:
    time.sleep(seconds)


def stalling_probe(path: str, root: str, full_decode: bool) -> Any:
    """A catalog probe that hangs on stall.mp4 and aborts on crash.mp4, and probes anything else."""
    from grove.data.catalog import probe_file

    if path.endswith("stall.mp4"):
        time.sleep(3600)
    if path.endswith("crash.mp4"):
        os.abort()
    return probe_file(path, root, full_decode)
