"""Video readers: the frame-id definition, agreement between backends, and isolation of bad files."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from grove.data.frames import annotated_frame_ids, sample_segment_indices
from grove.data.video import (
    FRAME_TOLERANCE,
    BackendUnavailable,
    DecodeError,
    DecodeTimeout,
    IsolatedReader,
    PyAVReader,
    Worker,
    WorkerDied,
    WorkerTimeout,
    available_backends,
    backend_problems,
    open_video,
    read_clip_frames,
    resolve_backend,
)
from tests.data.conftest import (
    MPEG4_BFRAMES,
    VIDEO_SPECS,
    CrashingReader,
    StallingReader,
    StallOnFramesReader,
    read_frame_code,
    worker_accumulate,
    worker_fail,
    worker_sleep,
)

BACKENDS = available_backends()


def codes(frames: np.ndarray) -> list[int]:
    return [read_frame_code(frame) for frame in frames]


# --- backend availability ----------------------------------------------------------------------


def test_pyav_and_decord_are_available_and_every_backend_reports_its_status():
    problems = backend_problems()
    assert set(problems) == {"pyav", "decord", "torchcodec"}
    assert problems["pyav"] is None and problems["decord"] is None
    # torchcodec needs FFmpeg's shared libraries; where they are missing it says so instead of failing later
    assert problems["torchcodec"] is None or "FFmpeg" in problems["torchcodec"] or "install" in problems["torchcodec"]


def test_unavailable_torchcodec_is_reported_by_name_and_auto_still_works(monkeypatch, fixture_videos):
    path, _ = fixture_videos["bframes_2997.mp4"]
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # import torchcodec -> ImportError
    with pytest.raises(BackendUnavailable, match="torchcodec.*not installed"):
        open_video(path, "torchcodec")
    assert resolve_backend("auto") == "pyav"


def test_torchcodec_without_ffmpeg_libraries_says_how_to_get_them(monkeypatch):
    import types

    fake = types.SimpleNamespace(__version__="0.17.0", ffmpeg_major_version=None)  # what a failed FFmpeg load leaves
    monkeypatch.setitem(sys.modules, "torchcodec", fake)
    problem = backend_problems()["torchcodec"]
    assert problem is not None and "FFmpeg" in problem and "apt-get install ffmpeg" in problem


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown video backend 'opencv'"):
        resolve_backend("opencv")


# --- frame ids and agreement -------------------------------------------------------------------


@pytest.fixture(scope="module")
def open_reader(fixture_videos):
    """One open reader per (fixture video, backend) for the module: isolated decord readers cost a process each."""
    readers = {}

    def get(name: str, backend: str):
        if (name, backend) not in readers:
            readers[name, backend] = open_video(fixture_videos[name][0], backend)
        return readers[name, backend]

    yield get
    for reader in readers.values():
        reader.close()



@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [spec.name for spec in VIDEO_SPECS])
def test_metadata(fixture_videos, open_reader, name, backend):
    spec = fixture_videos[name][1]
    meta = open_reader(name, backend).metadata
    assert (meta.num_frames, meta.width, meta.height) == (spec.num_frames, 128, 96)
    assert meta.codec == ("h264" if spec.codec == "libx264" else spec.codec)
    if spec.frame_ms:  # VFR: FFmpeg's average rate leaves out the last frame's duration
        assert meta.fps == pytest.approx(spec.expected_fps, rel=0.05)
    else:
        assert meta.fps == pytest.approx(float(spec.rate), rel=1e-9)
    assert meta.duration_s == pytest.approx(spec.expected_duration_s, abs=2 * max(spec.frame_ms or (0,)) / 1000 + 0.01)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [spec.name for spec in VIDEO_SPECS])
def test_frame_id_is_the_nth_presented_frame(fixture_videos, open_reader, name, backend):
    spec = fixture_videos[name][1]
    reader = open_reader(name, backend)
    assert codes(reader.get_frames(range(spec.num_frames))) == list(range(spec.num_frames))
    # random access, any order, repeats: answered in the order asked
    asked = [37, 5, 5, 39, 0, 23, 12]
    assert codes(reader.get_frames(asked)) == asked


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "pyav"])
@pytest.mark.parametrize("name", [spec.name for spec in VIDEO_SPECS])
def test_backends_give_the_same_pixels_as_pyav(fixture_videos, open_reader, name, backend):
    ids = list(range(fixture_videos[name][1].num_frames))
    expected = open_reader(name, "pyav").get_frames(ids).astype(np.int16)
    got = open_reader(name, backend).get_frames(ids).astype(np.int16)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= FRAME_TOLERANCE


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "decord"])
def test_mpeg4_with_bframes_pyav_and_torchcodec(mpeg4_bframes_video, backend):
    with open_video(mpeg4_bframes_video, backend) as reader:
        assert reader.metadata.num_frames == MPEG4_BFRAMES.num_frames
        assert codes(reader.get_frames([37, 5, 39, 0])) == [37, 5, 39, 0]


def test_out_of_range_ids_raise_naming_the_file(fixture_videos):
    path, _ = fixture_videos["bframes_2997.mp4"]
    with open_video(path, "pyav") as reader:
        with pytest.raises(IndexError, match="bframes_2997.mp4.*45"):
            reader.get_frames([0, 45])
        with pytest.raises(IndexError):
            reader.get_frames([-1])
        assert reader.get_frames([]).shape == (0, 96, 128, 3)


def test_pyav_decodes_a_dense_grid_in_one_pass_and_seeks_only_for_far_frames(fixture_videos, monkeypatch):
    path, _ = fixture_videos["bframes_2997.mp4"]  # keyframes every 12 frames
    with PyAVReader(path) as reader:
        seeks: list[int] = []
        original = reader._seek
        monkeypatch.setattr(reader, "_seek", lambda keyframe: seeks.append(keyframe) or original(keyframe))
        grid = annotated_frame_ids(reader.metadata.fps, 0, 44)  # every 5th frame
        assert codes(reader.get_frames(grid)) == grid
        assert seeks == [0]
        seeks.clear()
        assert codes(reader.get_frames([1, 40])) == [1, 40]
        assert seeks == [0, 36]  # 40 lies past keyframe 36, far beyond frame 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_clip_frames_decodes_the_annotation_grid(open_reader, backend):
    reader = open_reader("bframes_2997.mp4", backend)
    clip = read_clip_frames(reader, clip_start_frame=3, clip_end_frame=40)
    assert clip.frame_ids == list(range(3, 41, 5)) and codes(clip.frames) == clip.frame_ids
    # the 8 evaluation samples (segment centres) of the grid, in the same single pass
    centres = sample_segment_indices(len(clip.frame_ids))
    sampled = read_clip_frames(reader, 3, 40, fps=29.97, positions=centres)
    assert sampled.frame_ids == [clip.frame_ids[i] for i in centres]
    assert codes(sampled.frames) == sampled.frame_ids


# --- bad files and isolation ------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, fixture_videos) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    good = fixture_videos["bframes_2997.mp4"][0].read_bytes()
    files = {
        "truncated": folder / "truncated.mp4",
        "garbage": folder / "garbage.mp4",
        "empty": folder / "empty.mp4",
    }
    files["truncated"].write_bytes(good[: len(good) // 2])
    files["garbage"].write_bytes(np.random.default_rng(0).bytes(4096))
    files["empty"].write_bytes(b"")
    return files


# in-process and isolated PyAV; decord only isolated; torchcodec in-process (an isolated worker
# would spend seconds importing torch, and isolation is backend-independent: see the fakes below)
BAD_FILE_CASES = [("pyav", False), ("pyav", True)] + [(b, b == "decord") for b in BACKENDS if b != "pyav"]


@pytest.mark.parametrize(("backend", "isolate"), BAD_FILE_CASES)
@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty"])
def test_bad_file_raises_decode_error_naming_file_and_backend(bad_files, kind, backend, isolate):
    path = bad_files[kind]
    with pytest.raises(DecodeError) as info:
        with open_video(path, backend, isolate=isolate, timeout_s=30) as reader:
            reader.get_frames(range(reader.metadata.num_frames))
    assert str(path) in str(info.value) and backend in str(info.value)


def test_decord_runs_isolated_by_default(open_reader):
    reader = open_reader("bframes_2997.mp4", "decord")
    assert isinstance(reader, IsolatedReader)
    assert codes(reader.get_frames([3, 30])) == [3, 30]


def test_stalled_backend_is_killed_and_the_run_goes_on(fixture_videos, bad_files):
    good, _ = fixture_videos["bframes_2997.mp4"]
    started = time.monotonic()
    with pytest.raises(DecodeTimeout, match=r"garbage\.mp4: stalling: stalled"):
        open_video(bad_files["garbage"], StallingReader, isolate=True, timeout_s=1.5)
    assert time.monotonic() - started < 20
    with open_video(good, "pyav", isolate=True) as reader:  # the next file decodes as usual
        assert codes(reader.get_frames([7])) == [7]


def test_stall_while_decoding_is_killed_and_the_reader_is_closed(fixture_videos):
    path, _ = fixture_videos["bframes_2997.mp4"]
    reader = open_video(path, StallOnFramesReader, isolate=True, timeout_s=3)
    assert reader.metadata.num_frames == 45
    with pytest.raises(DecodeTimeout, match="stall-on-frames"):
        reader.get_frames([1])
    with pytest.raises(DecodeError, match="closed"):
        reader.get_frames([1])
    reader.close()


def test_a_reused_worker_serves_reader_after_reader_until_it_is_killed(fixture_videos):
    worker = Worker()
    try:
        for name in ("bframes_2997.mp4", "vfr.mp4"):
            with open_video(fixture_videos[name][0], "decord", worker=worker) as reader:
                assert codes(reader.get_frames([2, 40])) == [2, 40]
            assert worker.alive  # closing the reader keeps the worker
        with pytest.raises(DecodeTimeout):
            open_video(fixture_videos["vfr.mp4"][0], StallingReader, worker=worker, timeout_s=2)
        assert not worker.alive
    finally:
        worker.close()


def test_crashing_backend_is_reported_not_fatal(fixture_videos):
    path, _ = fixture_videos["bframes_2997.mp4"]
    with pytest.raises(DecodeError, match=r"crashing: decoder process crashed: worker died from signal 11"):
        open_video(path, CrashingReader, isolate=True)


def test_worker_survives_errors_keeps_state_and_dies_on_timeout():
    worker = Worker()
    try:
        with pytest.raises(ValueError, match="boom"):
            worker.call(worker_fail, "boom")
        assert worker.call(worker_accumulate, 2) == 2 and worker.call(worker_accumulate, 3) == 5
        with pytest.raises(WorkerTimeout):
            worker.call(worker_sleep, 60, timeout_s=0.5)
        assert not worker.alive
        with pytest.raises(WorkerDied):
            worker.call(worker_accumulate, 1)
    finally:
        worker.close()


def test_module_import_loads_no_torch_and_no_decord():
    import subprocess

    probe = "import sys, grove.data.video; print(sorted({'torch', 'torchcodec', 'decord'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
