"""Video catalog: probed metadata, every reject reason with such a file, clip tables, re-runs, CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from grove.data.catalog import (
    CATALOG_SCHEMA,
    REJECT_SCHEMA,
    STAMPS,
    build_catalog,
    probe_file,
    probe_files,
)
from grove.data.schema import clip_table, read_clips, write_clips
from grove.data.video import open_video
from tests.data.conftest import VideoSpec, stalling_probe, write_video

GOOD = VideoSpec("good.mp4", Fraction(30000, 1001), 30)


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def _corrupt_payload(source: Path, target: Path) -> Path:
    """Keep the MP4's boxes, replace the coded frames with noise: it opens, it does not decode."""
    data = bytearray(source.read_bytes())
    start = data.index(b"mdat") + 4 + 64
    data[start:] = np.random.default_rng(1).bytes(len(data) - start)
    target.write_bytes(bytes(data))
    return target


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> tuple[Path, Path]:
    """One folder with a good video and one file for each reject reason, cataloged once."""
    root = tmp_path_factory.mktemp("scan")
    videos, out = root / "videos", root / "out"
    (videos / "nested").mkdir(parents=True)
    good = write_video(videos / "good.mp4", GOOD)
    write_video(videos / "nested" / "vfr.mp4", VideoSpec("vfr.mp4", Fraction(30), 30, frame_ms=(20, 50) * 15))
    shutil.copyfile(good, videos / "nested" / "copy_of_good.mp4")
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (videos / "notes.avi").write_text("not a video\n" * 50)
    _audio_only(videos / "audio_only.mp4")
    cut = good.read_bytes()
    (videos / "truncated.mp4").write_bytes(cut[: len(cut) // 2])  # moov (at the end) is lost
    faststart = write_video(root / "faststart.mp4", VideoSpec("f.mp4", Fraction(25), 30, faststart=True))
    cut = faststart.read_bytes()
    (videos / "truncated_faststart.mp4").write_bytes(cut[: len(cut) // 2])  # index intact, frames gone
    _corrupt_payload(faststart, videos / "corrupt.mp4")
    (videos / "broken_link.mp4").symlink_to(videos / "nowhere.mp4")
    os.mkfifo(videos / "fifo.mp4")  # opening it would block forever
    (videos / "README.txt").write_text("not scanned: no video extension")
    build_catalog(videos, out, workers=2, timeout_s=60)
    return videos, out


def _rejects(out: Path) -> dict[str, tuple[str, str]]:
    return {Path(r["path"]).name: (r["reason"], r["detail"]) for r in pq.read_table(out / "rejects.parquet").to_pylist()}


def test_catalog_rows_match_what_a_reader_sees_and_duckdb_queries_them(scanned):
    videos, out = scanned
    table = pq.read_table(out / "catalog.parquet")
    assert table.schema.equals(CATALOG_SCHEMA, check_metadata=False)
    rows = {row["relative_path"]: row for row in table.to_pylist()}
    assert sorted(rows) == ["good.mp4", "nested/vfr.mp4"]
    good = rows["good.mp4"]
    with open_video(videos / "good.mp4", "pyav") as reader:
        meta = reader.metadata
    assert (good["num_frames"], good["fps"], good["duration_s"]) == (meta.num_frames, meta.fps, meta.duration_s)
    assert (good["width"], good["height"], good["codec"], good["video_id"]) == (128, 96, "h264", "good")
    # paths are relative to the catalog folder, so the catalog's bytes do not depend on where it lies
    assert not Path(good["video_path"]).is_absolute() and (out / good["video_path"]).resolve() == (videos / "good.mp4").resolve()
    assert good["size_bytes"] == (videos / "good.mp4").stat().st_size and len(good["content_hash"]) == 32
    assert rows["nested/vfr.mp4"]["video_id"] == "nested/vfr"
    [(count, frames)] = duckdb.sql(
        f"SELECT count(*), sum(num_frames) FROM '{out / 'catalog.parquet'}' WHERE codec = 'h264'"
    ).fetchall()
    assert (count, frames) == (2, 60)


def test_zero_length_file_is_rejected(scanned):
    assert _rejects(scanned[1])["empty.mp4"] == ("zero_length", "0 bytes")


def test_garbage_text_and_audio_only_files_are_not_video(scanned):
    rejects = _rejects(scanned[1])
    assert rejects["garbage.mp4"][0] == "not_video" and "no known container" in rejects["garbage.mp4"][1]
    assert rejects["notes.avi"][0] == "not_video"
    assert rejects["audio_only.mp4"] == ("not_video", "no video stream (streams: audio)")


def test_truncated_files_are_rejected_with_what_is_missing(scanned):
    rejects = _rejects(scanned[1])
    assert rejects["truncated.mp4"][0] == "truncated" and "mdat" in rejects["truncated.mp4"][1]
    reason, detail = rejects["truncated_faststart.mp4"]
    assert reason == "truncated" and detail.startswith("the container lists 30 frames, the file holds")


def test_corrupt_file_is_rejected(scanned):
    reason, detail = _rejects(scanned[1])["corrupt.mp4"]
    assert reason == "corrupt" and "decod" in detail


def test_duplicate_content_is_rejected_naming_the_kept_file(scanned):
    assert _rejects(scanned[1])["copy_of_good.mp4"] == ("duplicate", "same content as good.mp4")


def test_links_and_special_files_are_unreadable(scanned):
    rejects = _rejects(scanned[1])
    assert rejects["broken_link.mp4"] == ("unreadable", "cannot stat: No such file or directory")
    assert rejects["fifo.mp4"] == ("unreadable", "not a regular file (fifo)")


def test_rejects_table_and_manifest(scanned):
    videos, out = scanned
    assert pq.read_table(out / "rejects.parquet").schema.equals(REJECT_SCHEMA, check_metadata=False)
    manifest = json.loads((out / "catalog.json").read_text())
    assert manifest["videos_root"] == "../videos" and manifest["source"] == "directory"
    assert manifest["frame_objects"] is None
    assert manifest["counts"]["files"] == 12 and manifest["counts"]["videos"] == 2
    assert sum(manifest["counts"]["rejects_by_reason"].values()) == manifest["counts"]["rejects"] == 10


def test_without_annotations_each_video_is_one_whole_clip(scanned):
    clips = read_clips(scanned[1] / "clips.parquet").to_pylist()
    good = next(c for c in clips if c["video_path"] == "good.mp4")
    assert (good["key"], good["clip_start_frame"], good["clip_end_frame"], good["caption"]) == ("good_0", 0, 29, "")
    assert good["num_frames"] == 6  # the 5 fps grid over 30 frames at 29.97 fps: every 5th frame
    assert len(clips) == 2


LOCKED_SCRIPT = "import sys; from grove.data.catalog import build_catalog; build_catalog(sys.argv[1], sys.argv[2], workers=1)"
# Root reads any file whatever its mode. Dropping CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the
# bounding set before exec gives a root process (and its probe workers) ordinary permission checks.
DROP_DAC_THEN_EXEC = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
    if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
        sys.exit(f"cannot drop capability {capability}: errno {ctypes.get_errno()}")
os.execv(sys.executable, [sys.executable, "-c"] + sys.argv[1:])
"""


def test_file_without_read_permission_is_unreadable(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    write_video(videos / "good.mp4", GOOD)
    locked = write_video(videos / "locked.mp4", VideoSpec("locked.mp4", Fraction(25), 10))
    locked.chmod(0)
    launcher = ["-c", DROP_DAC_THEN_EXEC] if os.geteuid() == 0 else ["-c"]
    command = [sys.executable, *launcher, LOCKED_SCRIPT, str(videos), str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    assert _rejects(out)["locked.mp4"] == ("unreadable", "cannot read: Permission denied")
    assert pq.read_table(out / "catalog.parquet")["relative_path"].to_pylist() == ["good.mp4"]


def test_annotated_clips_keep_their_videos_and_missing_videos_are_rejected(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "present.mp4", GOOD)
    sentence = {"original_video_id": "v1", "video_id": 0, "video_path": "present.mp4", "caption": "a dog runs",
                "qtype": "declar", "fps": 29.97, "width": 128, "height": 96, "target_id": 1,
                "tube_start_frame": 0, "tube_end_frame": 20}
    missing = {**sentence, "original_video_id": "v2", "video_path": "absent.mp4"}
    track = {"1": {str(f): {"bbox": [1, 2, 30, 40]} for f in range(20)}}
    annotation = tmp_path / "test.json"
    annotation.write_text(json.dumps({"videos": [sentence, missing], "trajectories": {"v1": track, "v2": track}}))
    summary = build_catalog(videos, tmp_path / "out", annotations=annotation, fmt="vidstg", workers=1)
    assert summary.rejects == {"missing": 1} and summary.clips == 1
    reason, detail = _rejects(tmp_path / "out")["absent.mp4"]
    assert reason == "missing" and "v2_0" in detail
    clips = read_clips(tmp_path / "out" / "clips.parquet")
    assert clips["key"].to_pylist() == ["v1_0"] and clips["split"].to_pylist() == ["test"]  # split from the file name
    catalog = pq.read_table(tmp_path / "out" / "catalog.parquet")
    assert catalog["video_id"].to_pylist() == ["v1"]  # the annotation's video id
    manifest = json.loads((tmp_path / "out" / "catalog.json").read_text())
    assert manifest["source"] == "annotations" and manifest["counts"]["clips_dropped"] == 1


def test_synthetic_dataset_folder_gives_its_clips_and_frame_objects(tmp_path):
    root = tmp_path / "synthetic"
    (root / "videos").mkdir(parents=True)
    write_video(root / "videos" / "clip_a.mp4", GOOD)
    (root / "dataset.json").write_text(json.dumps({"name": "synthetic", "kind": "synthetic"}))
    pq.write_table(pa.table({"key": ["a_0"]}), root / "frame_objects.parquet")
    (root / "official").mkdir()
    (root / "official" / "train_raw.pkl").write_bytes(b"not scanned")
    row = {"key": "a_0", "dataset": "synthetic", "split": "train", "video_id": "a", "clip_id": "0",
           "video_path": "videos/clip_a.mp4", "fps": 29.97, "clip_start_frame": 0, "clip_end_frame": 29,
           "num_frames": 6, "width": 128, "height": 96, "caption": "a red ball", "tagged_caption": "<p>a red ball</p>",
           "phrases": ["a red ball"], "extra": {}}
    write_clips(clip_table([row]), root / "clips.parquet")
    build_catalog(root, tmp_path / "out", workers=1)
    manifest = json.loads((tmp_path / "out" / "catalog.json").read_text())
    assert manifest["source"] == "synthetic" and manifest["frame_objects"] == "../synthetic/frame_objects.parquet"
    assert manifest["annotations"] == {"path": "../synthetic/clips.parquet"}
    assert read_clips(tmp_path / "out" / "clips.parquet").to_pylist() == read_clips(root / "clips.parquet").to_pylist()
    catalog = pq.read_table(tmp_path / "out" / "catalog.parquet").to_pylist()
    assert [(c["relative_path"], c["video_id"]) for c in catalog] == [("videos/clip_a.mp4", "a")]


def test_rerun_reuses_unchanged_videos_and_probes_changed_ones(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    write_video(videos / "a.mp4", GOOD)
    write_video(videos / "b.mp4", VideoSpec("b.mp4", Fraction(25), 20))
    first = build_catalog(videos, out, workers=1)
    assert (first.videos, first.reused) == (2, 0)
    write_video(videos / "b.mp4", VideoSpec("b.mp4", Fraction(25), 25))  # changed: new size and time
    second = build_catalog(videos, out, workers=1)
    assert (second.videos, second.reused) == (2, 1)
    rows = {r["relative_path"]: r for r in pq.read_table(out / "catalog.parquet").to_pylist()}
    assert rows["b.mp4"]["num_frames"] == 25


def test_a_probe_that_stalls_or_crashes_is_a_reject_and_the_scan_goes_on(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("a.mp4", "crash.mp4", "stall.mp4", "z.mp4"):
        write_video(videos / name, VideoSpec(name, Fraction(25), 10 + len(name)))
    progress: list[tuple[int, int]] = []
    paths = sorted(videos.iterdir())
    probes = probe_files(paths, videos, workers=2, timeout_s=2, probe=stalling_probe,
                         progress=lambda done, total: progress.append((done, total)))
    by_name = {Path(p.path).name: p for p in probes}
    assert by_name["stall.mp4"].reason == "timeout" and "2 s" in by_name["stall.mp4"].detail
    assert by_name["crash.mp4"].reason == "crashed" and "signal 6" in by_name["crash.mp4"].detail
    assert by_name["a.mp4"].reason is None and by_name["z.mp4"].metadata.num_frames == 15
    assert progress[-1] == (4, 4) and len(progress) == 4


def test_full_decode_finds_frames_that_do_not_decode(tmp_path):
    faststart = write_video(tmp_path / "f.mp4", VideoSpec("f.mp4", Fraction(25), 30, faststart=True))
    data = bytearray(faststart.read_bytes())
    middle = data.index(b"mdat") + len(data) // 2 - 200  # noise in the middle: first and last frames still decode
    data[middle : middle + 400] = np.random.default_rng(2).bytes(400)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    assert probe_file(damaged, tmp_path).reason is None
    probe = probe_file(damaged, tmp_path, full_decode=True)
    assert probe.reason == "corrupt" and "decod" in probe.detail


def test_ingest_command(tmp_path):
    from orchestration.cli import app

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "a.mp4", GOOD)
    (videos / "bad.mp4").write_bytes(b"\0" * 100)
    result = CliRunner().invoke(app, ["data", "ingest", "--videos", str(videos), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "1 videos, 1 clips; rejects: not_video 1" in result.output
    missing = CliRunner().invoke(app, ["data", "ingest", "--videos", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert missing.exit_code == 1 and "no such folder of videos" in missing.output


def test_catalog_outputs_hold_no_absolute_path_and_match_in_another_folder(tmp_path, scanned):
    """The same videos cataloged in two folders, written at different times, give byte-identical
    catalog files (what DVC versions); only the stamps cache (in .dvcignore) differs."""
    from orchestration.resources import dvc_ignore_patterns, dvc_md5

    videos, out = scanned
    for name in ("catalog.parquet", "rejects.parquet", "clips.parquet", "catalog.json"):
        assert str(videos.parent).encode() not in (out / name).read_bytes(), name
    elsewhere = tmp_path / "deeper" / "clone"
    for root in (videos.parent, elsewhere):  # a second copy, written later: other paths, other mtimes
        (root / "v").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(videos / "good.mp4", root / "v" / "good.mp4")
        (root / "v" / "empty.mp4").write_bytes(b"")
        build_catalog(root / "v", root / "cat", workers=1)
    first, second = videos.parent / "cat", elsewhere / "cat"
    for name in ("catalog.parquet", "rejects.parquet", "clips.parquet", "catalog.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / STAMPS).read_bytes() != (second / STAMPS).read_bytes()  # mtimes: a cache, not data
    assert "catalog_stamps.parquet" in dvc_ignore_patterns()
    assert dvc_md5(first) == dvc_md5(second)


def test_rerun_without_the_stamps_cache_probes_again(tmp_path):
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    write_video(videos / "a.mp4", GOOD)
    build_catalog(videos, out, workers=1)
    catalog = (out / "catalog.parquet").read_bytes()
    assert build_catalog(videos, out, workers=1).reused == 1
    (out / STAMPS).unlink()  # e.g. a catalog that `dvc checkout` restored: DVC does not keep the cache
    assert build_catalog(videos, out, workers=1).reused == 0
    assert (out / "catalog.parquet").read_bytes() == catalog
