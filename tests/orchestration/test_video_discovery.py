"""Incremental discovery of new videos (grove.data.discovery, behind the new-videos sensor): a tick over
an unchanged folder of thousands of files stats its directories and nothing else; a tick after a
change lists only the directories that changed, and ends with the index a full rescan gives; a file
rewritten in place is seen by the periodic (or on-demand) full rescan."""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from grove.data import discovery
from grove.data.catalog import find_videos
from grove.data.discovery import FolderIndex, scan_folder
from orchestration import sensors
from orchestration.resources import PipelinePaths

LONG_AGO_NS = 1_600_000_000 * 10**9  # far enough in the past that no directory is "racy"


def age(root: Path) -> None:
    """Give every file and directory under `root` an old modification time, as a folder at rest has."""
    for path in [root, *root.rglob("*")]:
        os.utime(path, ns=(LONG_AGO_NS, LONG_AGO_NS))


@pytest.fixture
def folder(tmp_path) -> Path:
    """3,000 videos in 30 folders of two levels (plus notes and hidden files that are not videos)."""
    root = tmp_path / "videos"
    for group in range(3):
        for part in range(10):
            sub = root / f"group{group}" / f"part{part:02d}"
            sub.mkdir(parents=True)
            for i in range(100):
                (sub / f"clip{i:03d}.mp4").write_bytes(b"")
    (root / "group0" / "notes.txt").write_text("not a video")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.mp4").write_bytes(b"")
    age(root)
    return root


def test_an_unchanged_tick_over_thousands_of_files_stats_only_directories(folder, monkeypatch):
    index = scan_folder(folder).index
    assert index.videos == 3000 == len(find_videos(folder))
    directories = 1 + 3 + 30
    statted, listed = [], []
    real_stat, real_scandir = os.stat, os.scandir
    monkeypatch.setattr(os, "stat", lambda path, *a, **k: statted.append(Path(path)) or real_stat(path, *a, **k))
    monkeypatch.setattr(os, "scandir", lambda path=".": listed.append(path) or real_scandir(path))
    tick = scan_folder(folder, index)
    monkeypatch.undo()
    assert len(statted) == directories and all(path.is_dir() for path in statted)
    assert listed == [] and tick.counts.files_statted == 0
    assert tick.index.fingerprint == index.fingerprint and not tick.full


def test_a_tick_lists_only_what_changed_and_ends_where_a_full_rescan_ends(folder):
    later = time.time() + 60  # every change below is older than the file system's time resolution by then
    index = scan_folder(folder, now=later).index

    def tick(expected_listed: set[str]) -> FolderIndex:
        nonlocal index
        step = scan_folder(folder, index, now=later)
        full = scan_folder(folder, now=later)
        assert set(step.changed_dirs) == expected_listed
        assert step.index.fingerprint == full.index.fingerprint and step.index.videos == len(find_videos(folder))
        assert step.index.dirs == full.index.dirs
        assert step.counts.files_statted == sum(full.index.dirs[rel].videos for rel in expected_listed if rel in full.index.dirs)
        previous, index = index, step.index
        return previous

    (folder / "group1" / "part03" / "new.mp4").write_bytes(b"new")
    before = tick({"group1/part03"})
    assert index.fingerprint != before.fingerprint and index.videos == 3001

    (folder / "group2" / "part09" / "clip000.mp4").unlink()
    (folder / "group0" / "part00" / "clip001.mp4").rename(folder / "group0" / "part00" / "renamed.mkv")
    tick({"group2/part09", "group0/part00"})

    (folder / "group0" / "fresh" / "deeper").mkdir(parents=True)  # a new subtree, walked whole
    (folder / "group0" / "fresh" / "deeper" / "a.webm").write_bytes(b"a")
    tick({"group0", "group0/fresh", "group0/fresh/deeper"})

    for video in (folder / "group2" / "part05").iterdir():
        video.unlink()
    (folder / "group2" / "part05").rmdir()
    before = tick({"group2"})
    assert "group2/part05" not in index.dirs and index.videos == before.videos - 100

    (folder / "group1" / "notes.txt").write_text("no video")  # no video came or went: same fingerprint
    (folder / "group1" / "empty").mkdir()
    before = tick({"group1", "group1/empty"})
    assert index.fingerprint == before.fingerprint


@pytest.mark.parametrize("seed", range(3))
def test_random_changes_give_the_index_of_a_full_rescan(tmp_path, seed):
    """Videos and folders created, removed and renamed at random, a tick after each few: the index
    (each directory's videos and digest) is always what a full rescan finds."""
    rng = random.Random(seed)
    root = tmp_path / "videos"
    root.mkdir()
    later = time.time() + 3600  # no directory counts as just changed: ticks rely on modification times alone
    index = scan_folder(root, now=later).index
    listed = statted = 0
    for _ in range(25):
        time.sleep(0.02)  # file system times are coarse (a clock tick): a later change must get a later time
        for _ in range(rng.randint(1, 3)):
            folders = [root, *(p for p in root.rglob("*") if p.is_dir())]
            files = [p for p in root.rglob("*") if p.is_file()]
            action = rng.choice(["video", "video", "other", "folder", "remove", "rename", "drop_folder", "move_folder"])
            if action in ("video", "other"):
                (rng.choice(folders) / f"f{rng.randint(0, 99)}{'.mp4' if action == 'video' else '.txt'}").write_bytes(b"x")
            elif action == "folder":
                (rng.choice(folders) / f"d{rng.randint(0, 9)}").mkdir(exist_ok=True)
            elif action == "remove" and files:
                rng.choice(files).unlink()
            elif action == "rename" and files:
                source = rng.choice(files)
                source.rename(rng.choice(folders) / f"r{rng.randint(0, 99)}{rng.choice(['.mkv', '.dat'])}")
            elif action in ("drop_folder", "move_folder") and len(folders) > 1:
                folder = rng.choice(folders[1:])
                target = root / f"moved{rng.randint(0, 99)}"
                if action == "drop_folder":
                    shutil.rmtree(folder)
                elif not target.exists():
                    folder.rename(target)
        step = scan_folder(root, index, now=later)
        index, listed, statted = step.index, listed + step.counts.dirs_listed, statted + step.counts.dirs_statted
        full = scan_folder(root, now=later).index
        assert {rel: (s.videos, s.digest) for rel, s in index.dirs.items()} == {
            rel: (s.videos, s.digest) for rel, s in full.dirs.items()}
        assert index.fingerprint == full.fingerprint and index.videos == len(find_videos(root))
    assert listed < statted  # ticks listed what changed, not every directory they statted


def test_a_file_rewritten_in_place_is_seen_by_a_full_rescan(folder):
    index = scan_folder(folder).index
    video = folder / "group0" / "part04" / "clip010.mp4"
    video.write_bytes(b"new content")  # same name: its directory does not change
    assert scan_folder(folder, index).index.fingerprint == index.fingerprint
    assert scan_folder(folder, index, full=True).index.fingerprint != index.fingerprint


def test_a_directory_changed_just_before_its_listing_is_listed_again(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"")
    first = scan_folder(tmp_path)
    assert first.index.dirs["."].mtime_ns is None  # changed within the file system's time resolution
    assert scan_folder(tmp_path, first.index).changed_dirs == (".",)
    age(tmp_path)
    settled = scan_folder(tmp_path, first.index)
    assert settled.index.dirs["."].mtime_ns == LONG_AGO_NS and scan_folder(tmp_path, settled.index).changed_dirs == ()


def test_links_are_treated_as_the_catalog_treats_them(tmp_path):
    """A linked root is followed ($GROVE_POOL_VIDEOS may be a link); linked folders below it are not,
    linked files count (a broken one too: the catalog rejects it); the same files find_videos finds."""
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "sub" / "a.mp4").write_bytes(b"a")
    (real / "linked_dir").symlink_to(real / "sub")
    (real / "linked.mp4").symlink_to(real / "sub" / "a.mp4")
    (real / "broken.mp4").symlink_to(tmp_path / "missing.mp4")
    (tmp_path / "link").symlink_to(real)
    index = scan_folder(tmp_path / "link").index
    assert index.videos == len(find_videos(tmp_path / "link")) == 3 and set(index.dirs) == {".", "sub"}
    with pytest.raises(FileNotFoundError, match="no such folder of videos"):
        scan_folder(tmp_path / "absent")


def new_videos_sensor(profile):
    return next(s for s in sensors.build(profile) if s.name == "new_videos_sensor")


def tick(sensor_def, instance, paths, cursor):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"paths": paths}) as context:
        return sensor_def(context)


def test_the_sensor_keeps_its_index_in_the_cursor_and_rescans_fully_when_due(tiny_profile, dagster_instance, tmp_path,
                                                                             monkeypatch):
    paths = PipelinePaths(root=str(tmp_path))
    videos = paths.path("synthetic") / "videos"
    videos.mkdir(parents=True)
    (videos / "a.mp4").write_bytes(b"a")
    age(paths.path("synthetic"))
    sensor_def = new_videos_sensor(tiny_profile)
    first = tick(sensor_def, dagster_instance, paths, None)
    cursor = json.loads(first.cursor)
    assert len(first.run_requests) == 1 and cursor["index"]["dirs"].keys() == {".", "videos"}

    scans = []
    real_scan = discovery.scan_folder
    monkeypatch.setattr(discovery, "scan_folder", lambda *a, **k: scans.append(k["full"]) or real_scan(*a, **k))
    unchanged = tick(sensor_def, dagster_instance, paths, first.cursor)
    assert not unchanged.run_requests and "unchanged" in unchanged.skip_reason.skip_message and scans == [False]

    # A folder that goes back to an earlier state still gets a run (run keys never repeat).
    (videos / "b.mp4").write_bytes(b"b")
    added = tick(sensor_def, dagster_instance, paths, unchanged.cursor)
    (videos / "b.mp4").unlink()
    removed = tick(sensor_def, dagster_instance, paths, added.cursor)
    keys = [first.run_requests[0].run_key, added.run_requests[0].run_key, removed.run_requests[0].run_key]
    assert len(set(keys)) == 3 and keys[0].split("-")[-1] == keys[2].split("-")[-1]  # same folder state

    # Due for a rescan (the index is older than orchestration.video_rescan_hours), and after a reset.
    stale = json.loads(removed.cursor)
    stale["index"]["rescanned_at"] -= 25 * 3600
    tick(sensor_def, dagster_instance, paths, json.dumps(stale))
    tick(sensor_def, dagster_instance, paths, None)
    tick(sensor_def, dagster_instance, paths, "0123456789abcdef")  # this sensor's cursor before the index
    assert scans[-3:] == [True, True, True]
