"""Video decoding: one reader interface over PyAV, decord and torchcodec, isolable in a killable process.

    with open_video("clip.mp4") as reader:          # backend="auto" is PyAV (see resolve_backend)
        reader.metadata                             # fps, num_frames, width, height, duration_s, codec
        frames = reader.get_frames([0, 6, 12])      # (3, H, W, 3) uint8 RGB, in the order asked

Frame ids. A frame id is the 0-based position of a frame in presentation order: id n is the n-th
frame the video shows, counting every frame the container lists for its first video stream
(packets the demuxer marks as discarded by an edit list are not counted). Ids do not depend on
decode order, so B-frames change nothing, and they do not depend on timestamps: on a constant frame
rate file id n is shown at n / fps seconds; on a variable frame rate file it is still the n-th frame,
shown whenever its timestamp says (the GROVE 5 fps grid on a VFR file is uniform in frames, not in
time). `num_frames` is the count of such frames, `fps` the container's average frame rate.
decord and torchcodec ("exact" seek mode) index frames the same way.

Agreement. All three backends decode with libavcodec and convert to RGB with swscale (BT.601,
limited range), so the same ids give the same pixels: bit-exact on the H.264 test files (B-frames,
29.97 and 23.976 fps, VFR). `FRAME_TOLERANCE` states the bound the tests allow (max |difference|
per channel), for FFmpeg builds whose conversion rounds differently.

Known defects (found by the tests): decord 0.6 returns wrong frames on random access into MPEG-4
Part 2 video with B-frames (asked for frame 37, gave 39; decord #365), and torchcodec 0.17 fails on
MPEG-4 B-frames in AVI ("no more frames left to decode"); PyAV reads both right.

Isolation. decord can loop forever holding the GIL or leak memory on some files (mlops_anchors E.2),
which no signal interrupts. `open_video(..., isolate=True)` (the default for decord) runs the backend
in a child process: a call that crashes the child or takes longer than `timeout_s` kills it and
raises `DecodeError` / `DecodeTimeout` naming the file and backend, and the caller goes on.
`Worker` is that child process, reusable for any picklable function (the catalog probes with it).
"""

from __future__ import annotations

import json
import logging
import multiprocessing.connection
import socket
import subprocess
import sys
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, Union

import av
import numpy as np

from grove.data.frames import annotated_frame_ids

logger = logging.getLogger(__name__)

BACKENDS = ("pyav", "decord", "torchcodec")
FRAME_TOLERANCE = 2
DEFAULT_TIMEOUT_S = 60.0
# PyAV seeks ahead only past this many undecoded frames: a short gap decodes faster than a seek
# (which flushes the decoder's frame-thread pipeline), so a dense 5 fps grid is one sequential pass.
_MIN_FRAMES_SKIPPED_BY_SEEK = 8


class DecodeError(RuntimeError):
    """A video could not be opened or decoded; names the file, the backend and the problem."""

    def __init__(self, path: str | Path, backend: str, problem: str) -> None:
        self.path = str(path)
        self.backend = backend
        self.problem = problem
        super().__init__(f"{path}: {backend}: {problem}")

    def __reduce__(self) -> tuple[Any, ...]:  # so it crosses the worker pipe intact
        return (type(self), (self.path, self.backend, self.problem))


class DecodeTimeout(DecodeError):
    """A backend stalled past its timeout on a file; its process was killed."""


class ContainerError(DecodeError):
    """FFmpeg could not open the file as any container format it knows."""


class NoVideoStream(DecodeError):
    """The container opened but holds no video stream."""


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (not installed, or its native libraries do not load)."""


@dataclass(frozen=True)
class VideoMetadata:
    fps: float
    num_frames: int
    width: int
    height: int
    duration_s: float
    codec: str


class VideoReader(Protocol):
    path: Path
    backend: str
    metadata: VideoMetadata

    def get_frames(self, frame_ids: Sequence[int]) -> np.ndarray: ...

    def close(self) -> None: ...

    def __enter__(self) -> "VideoReader": ...

    def __exit__(self, *exc: object) -> None: ...


ReaderFactory = Callable[[Path, int], VideoReader]


class _Reader:
    """What every backend shares: id checks, empty results, context management."""

    path: Path
    backend: str
    metadata: VideoMetadata

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def _check_ids(self, frame_ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in frame_ids]
        bad = [i for i in ids if not 0 <= i < self.metadata.num_frames]
        if bad:
            raise IndexError(
                f"{self.path}: frame ids {bad[:5]} outside [0, {self.metadata.num_frames}) ({self.backend})"
            )
        return ids

    def _empty(self) -> np.ndarray:
        return np.empty((0, self.metadata.height, self.metadata.width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------------------------
# PyAV


@dataclass(frozen=True)
class _FrameIndex:
    """Presentation-ordered timestamps of a stream's frames and the positions of its keyframes."""

    pts: np.ndarray  # int64, sorted; empty when the stream has no timestamps
    keyframes: np.ndarray  # presentation positions of keyframes, sorted
    num_frames: int

    @property
    def seekable(self) -> bool:
        return len(self.pts) == self.num_frames and len(self.keyframes) > 0


def _index_stream(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> _FrameIndex:
    """Demux (no decoding) to learn every frame's timestamp; cheap next to decoding."""
    stamps: list[int | None] = []
    is_key: list[bool] = []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:
            continue
        stamps.append(packet.pts if packet.pts is not None else packet.dts)
        is_key.append(packet.is_keyframe)
    if not stamps or any(stamp is None for stamp in stamps):
        return _FrameIndex(np.empty(0, np.int64), np.empty(0, np.int64), len(stamps))
    pts = np.asarray(stamps, dtype=np.int64)
    order = np.argsort(pts, kind="stable")
    keyframes = np.flatnonzero(np.asarray(is_key)[order])
    return _FrameIndex(pts[order], keyframes, len(stamps))


def _stream_duration_s(stream: av.video.stream.VideoStream, container: av.container.InputContainer) -> float:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return 0.0


def _stream_fps(stream: av.video.stream.VideoStream, num_frames: int, duration_s: float) -> float:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate:
            return float(rate)
    return num_frames / duration_s if duration_s > 0 else 0.0


class PyAVReader(_Reader):
    """PyAV (FFmpeg bindings). One forward pass over the wanted frames: it seeks only when the next
    wanted frame lies past a keyframe not yet reached, so a dense grid decodes sequentially and a
    sparse one costs one seek per GOP it touches."""

    backend = "pyav"

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        self.path = Path(path)
        self._threads = threads
        self._container = self._open()
        try:
            stream = self._container.streams.video[0]
            self._index = _index_stream(self._container, stream)
            duration_s = _stream_duration_s(stream, self._container)
            self.declared_frames = int(stream.frames or 0)  # what the header claims (0: it does not say)
            self.container_format = self._container.format.name
            self.metadata = VideoMetadata(
                fps=_stream_fps(stream, self._index.num_frames, duration_s),
                num_frames=self._index.num_frames,
                width=int(stream.codec_context.width),
                height=int(stream.codec_context.height),
                duration_s=duration_s,
                codec=stream.codec_context.name,
            )
        except av.FFmpegError as exc:
            self._container.close()
            raise DecodeError(self.path, self.backend, f"cannot read the stream: {exc}") from exc
        self._position_of_pts = {int(pts): pos for pos, pts in enumerate(self._index.pts)}

    def _open(self) -> av.container.InputContainer:
        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as exc:
            raise ContainerError(self.path, self.backend, f"cannot open: {exc}") from exc
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            container.close()
            raise NoVideoStream(self.path, self.backend, f"no video stream (streams: {', '.join(kinds)})")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if self._threads != 1 else "SLICE"
        stream.codec_context.thread_count = self._threads
        return container

    def close(self) -> None:
        self._container.close()

    def get_frames(self, frame_ids: Sequence[int]) -> np.ndarray:
        ids = self._check_ids(frame_ids)
        if not ids:
            return self._empty()
        try:
            found = self._decode(sorted(set(ids)))
        except av.FFmpegError as exc:
            raise DecodeError(self.path, self.backend, f"decoding failed: {exc}") from exc
        return np.stack([found[i] for i in ids])

    def _decode(self, wanted: list[int]) -> dict[int, np.ndarray]:
        if not self._index.seekable:
            return self._decode_counting(wanted)
        wanted_set = set(wanted)
        found: dict[int, np.ndarray] = {}
        frames = None
        position = -1  # presentation position of the last frame decoded
        for target in wanted:
            if target in found:
                continue
            keyframe = self._keyframe_at_or_before(target)
            if frames is None or keyframe > position + _MIN_FRAMES_SKIPPED_BY_SEEK:
                frames = self._seek(keyframe)
            position = self._decode_up_to(frames, target, wanted_set, found)
            if target not in found:
                # the seek landed past the target (open GOP, or a demuxer that seeks by dts): restart
                frames = self._seek(0)
                position = self._decode_up_to(frames, target, wanted_set, found)
            if target not in found:
                raise DecodeError(self.path, self.backend, f"frame {target} was not produced by the decoder")
        return found

    def _keyframe_at_or_before(self, position: int) -> int:
        keyframes = self._index.keyframes
        return int(keyframes[max(0, np.searchsorted(keyframes, position, side="right") - 1)])

    def _seek(self, keyframe: int) -> Any:
        if keyframe == 0:  # a fresh container is the one start that is right for every file
            self._container.close()
            self._container = self._open()
        else:
            stream = self._container.streams.video[0]
            self._container.seek(int(self._index.pts[keyframe]), stream=stream, backward=True, any_frame=False)
        return self._container.decode(self._container.streams.video[0])

    def _decode_up_to(self, frames: Any, target: int, wanted: set[int], found: dict[int, np.ndarray]) -> int:
        position = -1
        for frame in frames:
            if frame.pts is None:
                continue
            position = self._position_of_pts.get(int(frame.pts), -1)
            if position in wanted and position not in found:
                found[position] = frame.to_ndarray(format="rgb24")
            if position >= target:
                break
        return position

    def _decode_counting(self, wanted: list[int]) -> dict[int, np.ndarray]:
        """Files without timestamps: decode from the start and count frames."""
        self._container.close()
        self._container = self._open()
        wanted_set = set(wanted)
        found: dict[int, np.ndarray] = {}
        for position, frame in enumerate(self._container.decode(self._container.streams.video[0])):
            if position in wanted_set:
                found[position] = frame.to_ndarray(format="rgb24")
            if position >= wanted[-1]:
                break
        missing = [i for i in wanted if i not in found]
        if missing:
            raise DecodeError(self.path, self.backend, f"frames {missing[:5]} were not produced by the decoder")
        return found


def _header_metadata(path: Path, num_frames: int) -> VideoMetadata:
    """Metadata from the container header (no decoding) with a backend's own frame count, so every
    backend reports fps, duration and size by the same definitions as PyAV."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise NoVideoStream(path, "pyav", "no video stream")
        stream = container.streams.video[0]
        duration_s = _stream_duration_s(stream, container)
        return VideoMetadata(
            fps=_stream_fps(stream, num_frames, duration_s),
            num_frames=num_frames,
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            duration_s=duration_s,
            codec=stream.codec_context.name,
        )


# ---------------------------------------------------------------------------------------------
# decord


class DecordReader(_Reader):
    """decord 0.6 (unmaintained since 2021; see the module note on isolation)."""

    backend = "decord"

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        import decord

        self.path = Path(path)
        try:
            self._reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=threads)
            self.metadata = _header_metadata(self.path, len(self._reader))
        except (decord.DECORDError, RuntimeError, av.FFmpegError, OSError) as exc:
            raise DecodeError(self.path, self.backend, f"cannot open: {exc}") from exc

    def get_frames(self, frame_ids: Sequence[int]) -> np.ndarray:
        import decord

        ids = self._check_ids(frame_ids)
        if not ids:
            return self._empty()
        try:
            frames = self._reader.get_batch(ids).asnumpy()
            self._reader.seek(0)  # decord #197/#208: get_batch holds its decode buffers until a seek
        except (decord.DECORDError, RuntimeError) as exc:
            raise DecodeError(self.path, self.backend, f"decoding failed: {exc}") from exc
        return frames

    def close(self) -> None:
        self._reader = None


# ---------------------------------------------------------------------------------------------
# torchcodec


def torchcodec_problem() -> str | None:
    """Why torchcodec cannot decode here, or None when it can."""
    try:
        import torchcodec
    except ImportError as exc:
        return f"torchcodec is not installed ({exc}); pip install 'torchcodec==0.17.0' (for torch 2.14)"
    except Exception as exc:  # a broken install fails in many ways; report it, do not crash the caller
        return f"torchcodec failed to import: {type(exc).__name__}: {exc}"
    if getattr(torchcodec, "ffmpeg_major_version", None) is None:
        return (
            f"torchcodec {getattr(torchcodec, '__version__', '?')} is installed but cannot load FFmpeg's shared "
            "libraries (libavcodec, libavformat, ...; FFmpeg 4 to 8). On Debian/Ubuntu: apt-get install ffmpeg "
            "(scripts/setup.sh does this when run as root)"
        )
    return None


class TorchcodecReader(_Reader):
    """torchcodec's CPU VideoDecoder in exact seek mode (it scans the file once to index frames)."""

    backend = "torchcodec"

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        problem = torchcodec_problem()
        if problem is not None:
            raise BackendUnavailable(f"torchcodec backend unavailable: {problem}")
        from torchcodec.decoders import VideoDecoder

        self.path = Path(path)
        try:
            self._decoder = VideoDecoder(
                str(self.path), seek_mode="exact", num_ffmpeg_threads=threads, dimension_order="NHWC"
            )
            # torchcodec's own fps and duration are derived differently (and disagree on VFR files)
            self.metadata = _header_metadata(self.path, int(self._decoder.metadata.num_frames or 0))
        except (RuntimeError, ValueError, OSError, av.FFmpegError) as exc:
            raise DecodeError(self.path, self.backend, f"cannot open: {exc}") from exc

    def get_frames(self, frame_ids: Sequence[int]) -> np.ndarray:
        ids = self._check_ids(frame_ids)
        if not ids:
            return self._empty()
        try:
            return self._decoder.get_frames_at(indices=ids).data.numpy()
        except (RuntimeError, ValueError) as exc:
            raise DecodeError(self.path, self.backend, f"decoding failed: {exc}") from exc

    def close(self) -> None:
        self._decoder = None


_READERS: dict[str, ReaderFactory] = {"pyav": PyAVReader, "decord": DecordReader, "torchcodec": TorchcodecReader}


def _decord_problem() -> str | None:
    try:
        import decord  # noqa: F401
    except ImportError as exc:
        return f"decord is not installed ({exc})"
    return None


_PROBLEM_CHECKS: dict[str, Callable[[], str | None]] = {
    "pyav": lambda: None, "decord": _decord_problem, "torchcodec": torchcodec_problem,
}


def backend_problems() -> dict[str, str | None]:
    """Per backend: None when it can decode here, else why not."""
    return {name: _PROBLEM_CHECKS[name]() for name in BACKENDS}


def available_backends() -> list[str]:
    return [name for name, problem in backend_problems().items() if problem is None]


def resolve_backend(backend: str) -> str:
    """"auto" is PyAV: the fastest here on GROVE's access patterns (benchmarks/bench_decode.py: the
    5 fps grid of 8 s 456x256 B-frame clips at ~500 frames/s against decord ~330, torchcodec ~40, whose
    get_frames_at re-seeks on such files), with FFmpeg bundled. A named backend must be usable."""
    if backend == "auto":
        return "pyav"
    if backend not in _READERS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of auto, {', '.join(BACKENDS)}")
    problem = _PROBLEM_CHECKS[backend]()  # only this backend's: checking torchcodec imports torch
    if problem is not None:
        raise BackendUnavailable(f"{backend} backend unavailable: {problem}")
    return backend


def open_video(
    path: str | Path,
    backend: Union[str, ReaderFactory] = "auto",
    *,
    isolate: bool | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    threads: int = 0,
    worker: Worker | None = None,
) -> VideoReader:
    """Open a video with one backend ("auto", "pyav", "decord", "torchcodec", or a reader factory).

    `isolate` runs the backend in a killable child process (default: only for decord); each call then
    has `timeout_s`. `worker` (implies isolation) reuses a live `Worker` instead of starting one per
    file. `threads` is the decoder's thread count (0: FFmpeg decides; 1 when many readers run in
    parallel).
    """
    path = Path(path)
    factory = _READERS[resolve_backend(backend)] if isinstance(backend, str) else backend
    name = backend if isinstance(backend, str) and backend != "auto" else getattr(factory, "backend", str(factory))
    if isolate is None:
        isolate = name == "decord" or worker is not None
    elif worker is not None and not isolate:
        raise ValueError("a worker runs the reader isolated: drop isolate=False or the worker")
    if isolate:
        return IsolatedReader(path, factory, name, timeout_s=timeout_s, threads=threads, worker=worker)
    return factory(path, threads)


# ---------------------------------------------------------------------------------------------
# Isolation: a child process that runs functions on request and can be killed when it stalls


class WorkerTimeout(TimeoutError):
    """The worker did not answer within the timeout; it has been killed."""


class WorkerDied(RuntimeError):
    """The worker process ended (crash, kill, out of memory) before answering."""


# The child runs this; it is started with `python -c`, not multiprocessing's spawn, so the caller's
# __main__ is never re-imported (scripts without a main guard, notebooks and Dagster all work).
_BOOTSTRAP = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[2]); "
    "from grove.data.video import _worker_main; _worker_main(int(sys.argv[1]))"
)


def _worker_main(fd: int) -> None:
    _die_with_parent()
    conn = multiprocessing.connection.Connection(fd)
    conn.send("ready")
    state: dict[str, Any] = {}  # what a function leaves for the next call (an open reader)
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if request is None:
            return
        fn, args = request
        try:
            reply: tuple[str, Any] = ("ok", fn(state, *args))
        except Exception as exc:
            reply = ("error", exc)
        try:
            conn.send(reply)
        except Exception as exc:  # an unpicklable result or exception
            conn.send(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


def _die_with_parent() -> None:
    """Linux: a worker stuck in native code must not outlive a parent that was killed."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.kill()
    process.wait()


class Worker:
    """One child Python process; `call(fn, *args)` runs `fn(state, *args)` there (fn importable by name).

    A call that does not answer within its timeout kills the child (SIGKILL: native code holding the
    GIL ignores everything else) and raises `WorkerTimeout`; a child that dies raises `WorkerDied`.
    """

    def __init__(self, startup_timeout_s: float = 120.0) -> None:
        parent_sock, child_sock = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-c", _BOOTSTRAP, str(child_sock.fileno()), json.dumps(sys.path)],
            pass_fds=(child_sock.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        child_sock.close()
        self._conn = multiprocessing.connection.Connection(parent_sock.detach())
        self._finalizer = weakref.finalize(self, _kill, self._process)
        # call timeouts start after the interpreter is up: a slow start is not a stalled decoder
        try:
            ready = self._conn.poll(startup_timeout_s) and self._conn.recv() == "ready"
        except (EOFError, ConnectionError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise WorkerDied(f"worker did not start within {startup_timeout_s:g} s")

    @property
    def alive(self) -> bool:
        return self._process.poll() is None

    def call(self, fn: Callable[..., Any], *args: Any, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Any:
        if not self.alive:
            raise WorkerDied(_exit_description(self._process.returncode))
        try:
            self._conn.send((fn, args))
        except (BrokenPipeError, ConnectionError, OSError) as exc:
            raise WorkerDied(_exit_description(self._wait_exit())) from exc
        if not self._conn.poll(timeout_s):
            self.kill()
            raise WorkerTimeout(f"no answer within {timeout_s:g} s; worker killed")
        try:
            status, value = self._conn.recv()
        except (EOFError, ConnectionError, OSError) as exc:
            raise WorkerDied(_exit_description(self._wait_exit())) from exc
        if status == "error":
            raise value
        return value

    def _wait_exit(self) -> int | None:
        try:
            return self._process.wait(5)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        self._finalizer()
        self._conn.close()

    def close(self) -> None:
        if self.alive:
            try:
                self._conn.send(None)
                self._process.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()


def _exit_description(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        return f"worker died from signal {-exitcode}"
    return f"worker ended with exit code {exitcode}"


def _remote_open(state: dict[str, Any], path: str, factory: ReaderFactory, threads: int) -> VideoMetadata:
    state["reader"] = factory(Path(path), threads)
    return state["reader"].metadata


def _remote_frames(state: dict[str, Any], frame_ids: list[int]) -> np.ndarray:
    return state["reader"].get_frames(frame_ids)


def _remote_close(state: dict[str, Any]) -> None:
    reader = state.pop("reader", None)
    if reader is not None:
        reader.close()


class IsolatedReader(_Reader):
    """A backend running in a `Worker`: a crash or a stall past `timeout_s` on any call raises
    `DecodeError`/`DecodeTimeout` naming the file and backend; the child is gone, the caller is not.

    With `worker`, the reader runs in that (caller-owned) worker and closing it leaves the worker up
    for the next file: one process per data-loader worker instead of one per clip.
    """

    def __init__(
        self,
        path: Path,
        factory: ReaderFactory,
        backend: str,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        threads: int = 0,
        worker: Worker | None = None,
    ) -> None:
        self.path = Path(path)
        self.backend = backend
        self.timeout_s = timeout_s
        self._owns_worker = worker is None
        self._worker: Worker | None = Worker() if worker is None else worker
        try:
            self.metadata = self._call(_remote_open, str(self.path), factory, threads)
        except BaseException:
            self.close()
            raise

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._worker is None:
            raise DecodeError(self.path, self.backend, "reader is closed")
        try:
            return self._worker.call(fn, *args, timeout_s=self.timeout_s)
        except WorkerTimeout as exc:
            self._worker = None
            raise DecodeTimeout(self.path, self.backend, f"stalled: {exc}") from exc
        except WorkerDied as exc:
            self._worker = None
            raise DecodeError(self.path, self.backend, f"decoder process crashed: {exc}") from exc

    def get_frames(self, frame_ids: Sequence[int]) -> np.ndarray:
        ids = self._check_ids(frame_ids)
        return self._call(_remote_frames, ids) if ids else self._empty()

    def close(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        if self._owns_worker:
            worker.close()
        elif worker.alive:
            try:
                worker.call(_remote_close, timeout_s=self.timeout_s)
            except (WorkerTimeout, WorkerDied):
                pass  # the worker is gone; its owner sees `alive` False


# ---------------------------------------------------------------------------------------------
# The GROVE protocol on top of a reader


@dataclass(frozen=True)
class ClipFrames:
    frame_ids: list[int]  # native frame ids
    frames: np.ndarray  # (N, H, W, 3) uint8


def read_clip_frames(
    reader: VideoReader,
    clip_start_frame: int,
    clip_end_frame: int,
    fps: float | None = None,
    num_annotated: int | None = None,
    positions: Sequence[int] | None = None,
) -> ClipFrames:
    """Decode a clip's annotated 5 fps grid in one pass (the official code runs one ffmpeg per frame).

    `fps` is the clip table's (the grid's) frame rate, default the video's. `positions` picks grid
    positions (e.g. the 8 TSN samples from grove.data.frames), decoded in the same single pass.
    """
    grid = annotated_frame_ids(fps or reader.metadata.fps, clip_start_frame, clip_end_frame, num_annotated)
    frame_ids = grid if positions is None else [grid[p] for p in positions]
    return ClipFrames(frame_ids, reader.get_frames(frame_ids))
