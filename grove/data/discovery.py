"""Which videos a folder holds, found incrementally: directory modification times, not a stat of every file.

    index = scan_folder(root).index                       # a full scan: lists and stats everything
    step = scan_folder(root, index)                       # later: stats each directory, lists changed ones
    step.index.fingerprint != index.fingerprint           # the folder's videos changed

Adding, removing or renaming an entry changes its directory's modification time (POSIX); rewriting a
file in place does not. So the index records, per directory (not per file), its modification time
and a digest of its video files (name, size, modification time). A scan with a previous index stats
every known directory and lists again only those whose modification time changed (statting the
video files in them); new subdirectories show up in their parent's listing and are scanned whole,
removed ones disappear from it. A scan of an unchanged tree is one stat per directory, whatever the
number of files; a change costs the listing of the directories it touched.

What a scan with an index cannot see is a file rewritten in place under the same name. A full scan
(`full=True`: no index yet, a reset, or a periodic rescan) lists and stats everything and sees it.

Modification times are coarse on some file systems (1 s, 2 s; network file systems cache them), so a
directory that changed within `RACY_NS` of its listing may change again with the same time: its
time is not recorded, and the next scan lists it again (git's "racy" index entries, same cure).

Which files count: those `grove.data.catalog.find_videos` finds (a video extension, no hidden names,
symlinked directories not followed), so the index agrees with what a catalog run will scan.
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from grove.data.catalog import VIDEO_EXTENSIONS

RACY_NS = 2_000_000_000  # a directory changed less than this before its listing is listed again next time
INDEX_FORMAT = 1
ROOT = "."


@dataclass(frozen=True)
class DirState:
    """One directory of the index: what its last listing found."""

    mtime_ns: int | None  # None: changed too recently to trust, list again
    videos: int  # video files directly in it
    digest: str  # of those files' names, sizes and modification times ("" when there are none)


@dataclass(frozen=True)
class FolderIndex:
    """The directories under a root (relative POSIX paths, "." for the root) and their states."""

    dirs: Mapping[str, DirState]
    rescanned_at: float  # time.time() of the last full scan

    @property
    def videos(self) -> int:
        return sum(state.videos for state in self.dirs.values())

    @property
    def fingerprint(self) -> str:
        """Changes when a video file appears, disappears, or (as a scan last saw it) changes size or time."""
        digest = hashlib.sha256()
        for rel in sorted(self.dirs):
            if self.dirs[rel].videos:  # an empty directory coming or going changes no video
                digest.update(f"{rel}\0{self.dirs[rel].digest}\n".encode())
        return digest.hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        return {"format": INDEX_FORMAT, "rescanned_at": self.rescanned_at,
                "dirs": {rel: [s.mtime_ns, s.videos, s.digest] for rel, s in sorted(self.dirs.items())}}

    @classmethod
    def from_json(cls, value: Any) -> FolderIndex | None:
        """The index `to_json` wrote; None for anything else (no index, an older format)."""
        if not isinstance(value, Mapping) or value.get("format") != INDEX_FORMAT:
            return None
        try:
            dirs = {str(rel): DirState(None if m is None else int(m), int(n), str(d))
                    for rel, (m, n, d) in value["dirs"].items()}
            return cls(dirs, float(value["rescanned_at"]))
        except (KeyError, TypeError, ValueError):
            return None


@dataclass
class ScanCounts:
    """The file-system calls a scan made (what makes it cheap or not)."""

    dirs_statted: int = 0
    dirs_listed: int = 0
    files_statted: int = 0


@dataclass(frozen=True)
class FolderScan:
    index: FolderIndex
    full: bool
    counts: ScanCounts
    changed_dirs: tuple[str, ...] = field(default=())  # listed again (new, changed, or racy)

    def summary(self) -> str:
        kind = "full scan" if self.full else "incremental scan"
        c = self.counts
        return (f"{kind}: {c.dirs_statted} directories statted, {c.dirs_listed} listed, "
                f"{c.files_statted} files statted")


def scan_folder(root: str | os.PathLike[str], previous: FolderIndex | None = None, full: bool = False,
                extensions: Iterable[str] = VIDEO_EXTENSIONS, now: float | None = None) -> FolderScan:
    """The index of the videos under `root`: from `previous`, listing only changed directories, or
    (`full`, or no `previous`) a full scan. Raises FileNotFoundError naming `root` when it is no folder."""
    root = Path(root)
    now = time.time() if now is None else now
    scanner = _Scanner(root, {ext.lower() for ext in extensions}, int(now * 1e9))
    whole = previous is None or full
    if whole:
        scanner.walk(ROOT)
    else:
        scanner.update(previous)
    if ROOT not in scanner.dirs:  # checked here, not before: the root's stat is the scan's first
        raise FileNotFoundError(f"{root}: no such folder of videos")
    index = FolderIndex(scanner.dirs, now if whole else previous.rescanned_at)  # type: ignore[union-attr]
    return FolderScan(index, whole, scanner.counts, tuple(scanner.listed))


class _Scanner:
    def __init__(self, root: Path, suffixes: set[str], now_ns: int) -> None:
        self.root, self.suffixes, self.now_ns = root, suffixes, now_ns
        self.dirs: dict[str, DirState] = {}
        self.listed: list[str] = []
        self.counts = ScanCounts()

    def update(self, previous: FolderIndex) -> None:
        """Stat every known directory (parents first); list the changed ones, walk new subdirectories."""
        gone: set[str] = set()
        children: dict[str, set[str]] = {}
        for rel in previous.dirs:
            if rel != ROOT:
                children.setdefault(_parent(rel), set()).add(rel)
        for rel in sorted(previous.dirs, key=_depth_first):
            if rel != ROOT and _parent(rel) in gone:
                gone.add(rel)  # its parent disappeared or no longer lists it
                continue
            mtime = self._dir_mtime(rel)
            known = previous.dirs[rel]
            if mtime is None:
                gone.add(rel)
            elif known.mtime_ns is not None and mtime == known.mtime_ns:
                self.dirs[rel] = known
            else:
                subdirs = self._list(rel, mtime)
                gone |= children.get(rel, set()) - set(subdirs)
                for sub in subdirs:
                    if sub not in previous.dirs:
                        self.walk(sub)

    def walk(self, rel: str) -> None:
        """List `rel` and everything under it."""
        mtime = self._dir_mtime(rel)
        if mtime is None:
            return
        for sub in self._list(rel, mtime):
            self.walk(sub)

    def _dir_mtime(self, rel: str) -> int | None:
        self.counts.dirs_statted += 1
        try:  # the root may be a link (as $GROVE_POOL_VIDEOS often is); below it, links are not followed
            info = os.stat(self.root / rel, follow_symlinks=rel == ROOT)
        except OSError:
            return None
        return info.st_mtime_ns if stat.S_ISDIR(info.st_mode) else None

    def _list(self, rel: str, mtime_ns: int | None) -> list[str]:
        """Record the directory's videos (stat taken before the listing); return its subdirectories."""
        self.counts.dirs_listed += 1
        self.listed.append(rel)
        subdirs, videos = [], []
        try:
            with os.scandir(self.root / rel) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if _is_dir(entry):
                        if not entry.is_symlink():  # as os.walk: a linked directory is not followed
                            subdirs.append(entry.name if rel == ROOT else f"{rel}/{entry.name}")
                    elif os.path.splitext(entry.name)[1].lower() in self.suffixes:
                        videos.append((entry.name, *self._file_stamp(entry)))
        except OSError:  # vanished or unreadable since its stat: list it again next time
            mtime_ns = None
        racy = mtime_ns is not None and self.now_ns - mtime_ns < RACY_NS
        self.dirs[rel] = DirState(None if racy else mtime_ns, len(videos), _digest(sorted(videos)))
        return sorted(subdirs)

    def _file_stamp(self, entry: os.DirEntry) -> tuple[int, int]:
        self.counts.files_statted += 1
        try:
            info = entry.stat()
        except OSError:  # a broken link: present, unreadable; the catalog rejects it
            return -1, -1
        return info.st_size, info.st_mtime_ns


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _parent(rel: str) -> str:
    return rel.rsplit("/", 1)[0] if "/" in rel else ROOT


def _depth_first(rel: str) -> tuple[int, str]:
    """Parents before their children: the root, then by depth, then by name."""
    return (-1, "") if rel == ROOT else (rel.count("/"), rel)


def _digest(videos: list[tuple[str, int, int]]) -> str:
    if not videos:
        return ""
    text = "".join(f"{name}\0{size}\0{mtime}\n" for name, size, mtime in videos)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
