"""Video catalog: probe, hash and vet every video under a folder; bad files land in a rejects table.

    build_catalog("raw_videos/", "catalog/")          # `grove data ingest --videos raw_videos/ --out catalog/`

```
OUT/
  catalog.parquet   one row per accepted video (CATALOG_SCHEMA), sorted by relative path
  rejects.parquet   path, reason, detail (REJECT_SCHEMA): every file that did not make it, and why
  clips.parquet     canonical clip table (grove.data.schema) over the accepted videos
  catalog_stamps.parquet  each accepted file's size and modification time when probed: a cache
                    for re-runs, not data (.dvcignore keeps it out of the folder's DVC hash)
  catalog.json      videos root, source, counts, frame_objects (written last: its presence means done)
```
Paths in the catalog are portable (grove.io.portable_path): catalog.json's videos root, annotation
file and frame records, and catalog.parquet's `video_path`, are relative to OUT; `relative_path`,
the clips' `video_path` and the rejects' `path` are relative to the videos root. Nothing in OUT
but the stamps cache depends on where the folders lie or when the files were written, so the
same videos give a byte-identical catalog in any checkout.

Which files: every file under the videos root whose name ends in one of `VIDEO_EXTENSIONS`, plus
every file an annotation names (annotation video paths are relative to the videos root, as in the
official formats); names starting with "." and the output folder are skipped.

Probe: the file is hashed (blake2b-128, streamed), opened with PyAV, its packets indexed (frame count,
no decoding) and its first and last frames decoded (`full_decode` decodes all). Frame counts, fps
and duration follow grove.data.video's definitions, so a reader of any backend agrees with the
catalog. Each file is probed in a worker process with a timeout: a file that hangs or crashes the
decoder becomes a reject, and the scan goes on.

Reject reasons: zero_length (0 bytes); unreadable (cannot be opened or read: permissions, a broken
or looping link, not a regular file); not_video (FFmpeg recognises no container, or no video
stream); truncated (the container's own index or header promises more than the file holds, or an
MP4 lacks its moov index because its writer was cut off); corrupt (the container opens but frames
do not decode); duplicate (same content hash as an accepted file earlier in path order); missing
(named by an annotation, absent on disk); timeout, crashed (the probe stalled or killed its worker);
error (anything else, with the exception in `detail`).

Re-runs reuse the accepted rows of the previous catalog in OUT whose file has the same size and
modification time (catalog_stamps.parquet), so adding videos to a large folder probes only the new ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import stat
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import av
import pyarrow as pa
import pyarrow.compute as pc

from grove.data.dataset import DatasetPaths, read_manifest
from grove.data.frames import annotated_frame_ids
from grove.data.schema import clip_table, read_clips, read_table, write_clips, write_table
from grove.data.video import (
    ContainerError,
    DecodeError,
    NoVideoStream,
    PyAVReader,
    VideoMetadata,
    Worker,
    WorkerDied,
    WorkerTimeout,
)
from grove.io import atomic_write_json, portable_path, resolve_recorded

logger = logging.getLogger(__name__)

CATALOG = "catalog.parquet"
REJECTS = "rejects.parquet"
CLIPS = "clips.parquet"
MANIFEST = "catalog.json"
STAMPS = "catalog_stamps.parquet"

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".flv", ".wmv", ".3gp")

ZERO_LENGTH = "zero_length"
UNREADABLE = "unreadable"
NOT_VIDEO = "not_video"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
DUPLICATE = "duplicate"
MISSING = "missing"
TIMEOUT = "timeout"
CRASHED = "crashed"
ERROR = "error"

CATALOG_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("video_path", pa.string(), nullable=False),  # relative to the catalog folder
        pa.field("relative_path", pa.string(), nullable=False),  # to the videos root; clip tables use this
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("content_hash", pa.string(), nullable=False),  # blake2b-128 of the file's bytes, hex
        pa.field("duration_s", pa.float64(), nullable=False),
        pa.field("fps", pa.float64(), nullable=False),
        pa.field("num_frames", pa.int64(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("codec", pa.string(), nullable=False),
        pa.field("container", pa.string(), nullable=False),
    ]
)

REJECT_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),  # relative to the videos root (as an annotation names it)
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ]
)

# When each accepted file was probed: size and modification time, the re-run's test for "unchanged".
STAMP_SCHEMA = pa.schema(
    [
        pa.field("relative_path", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
        pa.field("mtime_ns", pa.int64(), nullable=False),
    ]
)

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class Probe:
    """What probing one file found: its metadata, or why it is rejected."""

    path: str  # absolute
    relative_path: str
    size_bytes: int = 0
    mtime_ns: int = 0
    content_hash: str = ""
    metadata: VideoMetadata | None = None
    container: str = ""
    reason: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class CatalogSummary:
    out: Path
    videos: int
    rejects: dict[str, int]  # reason -> count
    clips: int
    reused: int  # accepted rows taken from the previous catalog unprobed
    seconds: float


# ---------------------------------------------------------------------------------------------
# Probing one file


def hash_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def probe_file(path: str | os.PathLike[str], root: str | os.PathLike[str], full_decode: bool = False) -> Probe:
    """Stat, hash and decode-check one file; never raises for a bad file (the Probe says why)."""
    path = Path(path)
    base = Probe(path=str(path), relative_path=path.relative_to(root).as_posix())
    try:
        info = os.stat(path)
    except OSError as exc:  # a broken or looping link
        return replace(base, reason=UNREADABLE, detail=f"cannot stat: {exc.strerror or exc}")
    base = replace(base, size_bytes=info.st_size, mtime_ns=info.st_mtime_ns)
    if not stat.S_ISREG(info.st_mode):
        return replace(base, reason=UNREADABLE, detail=f"not a regular file ({_file_kind(info.st_mode)})")
    if info.st_size == 0:
        return replace(base, reason=ZERO_LENGTH, detail="0 bytes")
    try:
        base = replace(base, content_hash=hash_file(path))
    except OSError as exc:
        return replace(base, reason=UNREADABLE, detail=f"cannot read: {exc.strerror or exc}")
    try:
        with PyAVReader(path, threads=1) as reader:
            problem = _truncation(reader)
            if problem:
                return replace(base, reason=TRUNCATED, detail=problem)
            if reader.metadata.num_frames == 0:
                return replace(base, reason=CORRUPT, detail="the video stream has no frames")
            _check_decodes(reader, path, full_decode)
            return replace(base, metadata=reader.metadata, container=reader.container_format)
    except NoVideoStream as exc:
        return replace(base, reason=NOT_VIDEO, detail=exc.problem)
    except ContainerError as exc:
        reason, why = _unopenable(path)
        return replace(base, reason=reason, detail=f"{why}; {exc.problem}")
    except DecodeError as exc:
        return replace(base, reason=CORRUPT, detail=exc.problem)


def _file_kind(mode: int) -> str:
    kinds = {stat.S_ISDIR: "directory", stat.S_ISFIFO: "fifo", stat.S_ISSOCK: "socket", stat.S_ISCHR: "device"}
    return next((name for test, name in kinds.items() if test(mode)), "special file")


def _truncation(reader: PyAVReader) -> str | None:
    declared, present = reader.declared_frames, reader.metadata.num_frames
    if declared > present:
        return f"the container lists {declared} frames, the file holds {present}"
    return None


def _check_decodes(reader: PyAVReader, path: Path, full_decode: bool) -> None:
    last = reader.metadata.num_frames - 1
    reader.get_frames(sorted({0, last}))
    if full_decode:
        decoded = _count_decoded_frames(path)
        if decoded < reader.metadata.num_frames:
            raise DecodeError(path, "pyav", f"only {decoded} of {reader.metadata.num_frames} frames decode")


def _count_decoded_frames(path: Path) -> int:
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            return sum(1 for _ in container.decode(stream))
    except av.FFmpegError as exc:
        raise DecodeError(path, "pyav", f"decoding failed: {exc}") from exc


def _unopenable(path: Path) -> tuple[str, str]:
    """A file FFmpeg cannot open: truncated when it is an MP4 whose boxes stop short, else not a video."""
    with open(path, "rb") as handle:
        head = handle.read(12)
    if head[4:8] != b"ftyp":
        return NOT_VIDEO, "no known container format"
    boxes, overrun = _iso_top_level_boxes(path)
    if overrun:
        return TRUNCATED, f"MP4 box '{overrun}' runs past the end of the file"
    if "moov" not in boxes:
        return TRUNCATED, "MP4 without its moov index (the writer stopped before finishing the file)"
    return CORRUPT, "MP4 boxes are complete but FFmpeg cannot read them"


def _iso_top_level_boxes(path: Path) -> tuple[list[str], str | None]:
    """Top-level ISO-BMFF box types, and the type of a box that claims more bytes than the file has."""
    size = path.stat().st_size
    boxes: list[str] = []
    with open(path, "rb") as handle:
        offset = 0
        while offset + 8 <= size:
            handle.seek(offset)
            header = handle.read(16)
            box_size, kind = int.from_bytes(header[:4], "big"), header[4:8].decode("latin-1")
            if box_size == 1 and len(header) == 16:
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:
                box_size = size - offset
            if box_size < 8:
                return boxes, kind
            boxes.append(kind)
            if offset + box_size > size:
                return boxes, kind
            offset += box_size
    return boxes, None


# ---------------------------------------------------------------------------------------------
# Probing many files, in parallel worker processes with a timeout each


def _probe_in_worker(state: dict[str, Any], probe: Callable[..., Probe], path: str, root: str, full: bool) -> Probe:
    return probe(path, root, full)


def probe_files(
    paths: Sequence[Path],
    root: Path,
    workers: int | None = None,
    timeout_s: float = 60.0,
    full_decode: bool = False,
    progress: ProgressFn | None = None,
    probe: Callable[..., Probe] = probe_file,
) -> list[Probe]:
    """Probe files in `workers` processes (default: one per CPU); a probe that stalls past `timeout_s`
    or kills its process becomes a reject and the process is replaced. Results keep `paths` order."""
    if not paths:
        return []
    count = max(1, min(len(paths), workers or os.cpu_count() or 1))
    results: list[Probe | None] = [None] * len(paths)
    idle: queue.Queue[Worker] = queue.Queue()

    def run(index: int) -> None:
        path = paths[index]
        worker = idle.get()
        try:
            results[index] = worker.call(_probe_in_worker, probe, str(path), str(root), full_decode, timeout_s=timeout_s)
        except (WorkerTimeout, WorkerDied) as exc:
            reason = TIMEOUT if isinstance(exc, WorkerTimeout) else CRASHED
            results[index] = Probe(str(path), path.relative_to(root).as_posix(), reason=reason, detail=f"probe: {exc}")
            worker = Worker()
        except Exception as exc:  # a bug or an unforeseen failure must not end a long scan
            results[index] = Probe(
                str(path), path.relative_to(root).as_posix(), reason=ERROR, detail=f"{type(exc).__name__}: {exc}"
            )
        finally:
            idle.put(worker)

    with ThreadPoolExecutor(count) as pool:
        for worker in pool.map(lambda _: Worker(), range(count)):
            idle.put(worker)
        try:
            futures = [pool.submit(run, index) for index in range(len(paths))]
            report = progress or _log_progress(len(paths))
            for done, future in enumerate(as_completed(futures), start=1):
                future.result()
                report(done, len(paths))
        finally:
            while not idle.empty():
                idle.get().close()
    return [result for result in results if result is not None]


def _log_progress(total: int, every_s: float = 10.0) -> ProgressFn:
    """A progress line every `every_s` seconds with rate and ETA, for logs (CI, Dagster)."""
    started = last = time.monotonic()

    def report(done: int, _total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= every_s or done == total:
            rate = done / max(now - started, 1e-9)
            logger.info("probed %d/%d files (%.1f/s, ETA %.0f s)", done, total, rate, (total - done) / rate)
            last = now

    return report


# ---------------------------------------------------------------------------------------------
# The catalog of a folder


def find_videos(root: Path, extensions: Iterable[str] = VIDEO_EXTENSIONS, exclude: Path | None = None) -> list[Path]:
    """Files under `root` with a video extension, sorted; hidden names and `exclude` are skipped."""
    suffixes = {ext.lower() for ext in extensions}
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(folder, d) != exclude)
        found += [Path(folder, f) for f in files if not f.startswith(".") and Path(f).suffix.lower() in suffixes]
    return sorted(found)


@dataclass(frozen=True)
class _Source:
    kind: str  # "annotations", "synthetic" or "directory"
    clips: pa.Table | None
    description: dict[str, Any]
    frame_objects: str | None = None


def _read_source(
    root: Path, annotations: Path | None, fmt: str | None, split: str | None, split_ids: Path | None
) -> _Source:
    if annotations is not None:
        from grove.data.convert import FORMATS, infer_split, read_format

        if fmt not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)} with --annotations (got {fmt!r})")
        split = split or infer_split(annotations) or "all"
        clips, _ = read_format(fmt, annotations, fmt, split, split_ids)
        return _Source("annotations", clips, {"path": str(annotations), "format": fmt, "split": split})
    manifest = read_manifest(root)
    paths = DatasetPaths(root)
    if manifest.get("kind") == "synthetic" and paths.clips.exists():
        frame_objects = str(paths.frame_objects) if paths.frame_objects.exists() else None
        return _Source("synthetic", read_clips(paths.clips), {"path": str(paths.clips)}, frame_objects)
    return _Source("directory", None, {})


def _previous_rows(out: Path, root: Path) -> dict[str, dict[str, Any]]:
    """Accepted rows of an earlier catalog of the same folder, by relative path, with their stamps
    (rows without a stamp, e.g. a catalog checked out by DVC without its cache, are probed again)."""
    manifest_path, catalog_path, stamps_path = out / MANIFEST, out / CATALOG, out / STAMPS
    if not (manifest_path.exists() and catalog_path.exists() and stamps_path.exists()):
        return {}
    try:
        recorded = json.loads(manifest_path.read_text()).get("videos_root")
        if recorded is None or resolve_recorded(recorded, out).resolve() != root:
            return {}
        table = read_table(catalog_path, CATALOG_SCHEMA)
        stamps = {row["relative_path"]: row for row in read_table(stamps_path, STAMP_SCHEMA).to_pylist()}
    except (ValueError, OSError) as exc:  # an unreadable old catalog is just not reused
        logger.warning("%s: not reusing the previous catalog: %s", out, exc)
        return {}
    return {
        row["relative_path"]: row | {"mtime_ns": stamps[row["relative_path"]]["mtime_ns"]}
        for row in table.to_pylist()
        if row["relative_path"] in stamps and stamps[row["relative_path"]]["size_bytes"] == row["size_bytes"]
    }


def _reusable(path: Path, row: dict[str, Any] | None) -> Probe | None:
    if row is None:
        return None
    try:
        info = os.stat(path)
    except OSError:
        return None
    if (info.st_size, info.st_mtime_ns) != (row["size_bytes"], row["mtime_ns"]):
        return None
    metadata = VideoMetadata(
        row["fps"], row["num_frames"], row["width"], row["height"], row["duration_s"], row["codec"]
    )
    return Probe(
        str(path), row["relative_path"], row["size_bytes"], row["mtime_ns"], row["content_hash"],
        metadata, row["container"],
    )


def _mark_duplicates(probes: list[Probe]) -> list[Probe]:
    first_with_hash: dict[str, str] = {}
    marked = []
    for probe in sorted(probes, key=lambda p: p.relative_path):
        if probe.reason is None:
            original = first_with_hash.setdefault(probe.content_hash, probe.relative_path)
            if original != probe.relative_path:
                probe = replace(probe, reason=DUPLICATE, detail=f"same content as {original}")
        marked.append(probe)
    return marked


def _video_ids(clips: pa.Table | None) -> dict[str, str]:
    if clips is None:
        return {}
    return dict(zip(clips["video_path"].to_pylist(), clips["video_id"].to_pylist()))


def _catalog_table(accepted: list[Probe], video_ids: dict[str, str], out: Path) -> pa.Table:
    rows = []
    for probe in accepted:
        meta = probe.metadata
        assert meta is not None  # accepted probes carry metadata
        rows.append({
            "video_id": video_ids.get(probe.relative_path, str(Path(probe.relative_path).with_suffix("").as_posix())),
            "video_path": portable_path(probe.path, out), "relative_path": probe.relative_path,
            "size_bytes": probe.size_bytes, "content_hash": probe.content_hash, "duration_s": meta.duration_s,
            "fps": meta.fps, "num_frames": meta.num_frames, "width": meta.width, "height": meta.height,
            "codec": meta.codec, "container": probe.container,
        })
    return pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA)


def _stamp_table(accepted: list[Probe]) -> pa.Table:
    rows = [{"relative_path": p.relative_path, "size_bytes": p.size_bytes, "mtime_ns": p.mtime_ns} for p in accepted]
    return pa.Table.from_pylist(rows, schema=STAMP_SCHEMA)


def _whole_video_clips(catalog: pa.Table, dataset: str) -> pa.Table:
    """One clip per video spanning all its frames, caption empty: the input of automatic annotation."""
    rows = []
    for video in catalog.to_pylist():
        last = video["num_frames"] - 1
        rows.append({
            "key": f"{video['video_id']}_0", "dataset": dataset, "split": "all", "video_id": video["video_id"],
            "clip_id": "0", "video_path": video["relative_path"], "fps": video["fps"], "clip_start_frame": 0,
            "clip_end_frame": last, "num_frames": len(annotated_frame_ids(video["fps"], 0, last)),
            "width": video["width"], "height": video["height"], "caption": "", "tagged_caption": "",
            "phrases": [], "extra": {},
        })
    return clip_table(rows)


def _missing_rejects(root: Path, clips: pa.Table, present: set[str]) -> list[Probe]:
    by_video: dict[str, list[str]] = {}
    for video_path, key in zip(clips["video_path"].to_pylist(), clips["key"].to_pylist()):
        if video_path not in present:
            by_video.setdefault(video_path, []).append(key)
    return [
        Probe(str(root / video_path), video_path, reason=MISSING,
              detail=f"annotated by {len(keys)} clip(s), e.g. {', '.join(keys[:3])}; no such file")
        for video_path, keys in sorted(by_video.items())
    ]


def _reject_table(rejects: list[Probe], root: Path) -> pa.Table:
    """Paths relative to the videos root, in the details too (FFmpeg's messages quote the file's full path)."""
    rejects = sorted(rejects, key=lambda p: p.relative_path)
    rows = [
        {"path": p.relative_path, "reason": p.reason,
         "detail": p.detail.replace(p.path, p.relative_path).replace(f"{root}/", "")}
        for p in rejects
    ]
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)


def build_catalog(
    videos: str | os.PathLike[str],
    out: str | os.PathLike[str],
    annotations: str | os.PathLike[str] | None = None,
    fmt: str | None = None,
    split: str | None = None,
    split_ids: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    timeout_s: float = 60.0,
    full_decode: bool = False,
    extensions: Iterable[str] = VIDEO_EXTENSIONS,
    progress: ProgressFn | None = None,
    probe: Callable[..., Probe] = probe_file,
) -> CatalogSummary:
    """Catalog the videos under `videos` into the folder `out` (layout in the module docstring).

    Clips come from `annotations` (converted with grove.data.convert.read_format: `fmt` howtoground,
    vidstg or anet; `split` defaults to the one the file name says), else from the dataset's own
    clips.parquet when `videos` is a synthetic dataset folder, else one clip per video.
    """
    started = time.monotonic()
    root, out = Path(videos).resolve(), Path(out).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of videos")
    source = _read_source(
        root, Path(annotations) if annotations else None, fmt, split, Path(split_ids) if split_ids else None
    )
    files = find_videos(root, extensions, exclude=out)
    annotated = set(source.clips["video_path"].to_pylist()) if source.clips is not None else set()
    known = {f.relative_to(root).as_posix() for f in files}
    # annotated files with other extensions are probed too; paths are relative to the videos root
    # (absolute ones outside it cannot be cataloged and are reported missing)
    files += sorted(
        root / p for p in annotated - known
        if not Path(p).is_absolute() and ((root / p).exists() or (root / p).is_symlink())
    )
    present = {f.relative_to(root).as_posix() for f in files}

    previous = _previous_rows(out, root)
    reused = {f: kept for f in files if (kept := _reusable(f, previous.get(f.relative_to(root).as_posix())))}
    to_probe = [f for f in files if f not in reused]
    logger.info("%s: %d files (%d unchanged since the last catalog), probing %d", root, len(files), len(reused),
                len(to_probe))
    probes = list(reused.values()) + probe_files(to_probe, root, workers, timeout_s, full_decode, progress, probe)
    probes = _mark_duplicates(probes)
    accepted = [p for p in probes if p.reason is None]
    rejects = [p for p in probes if p.reason is not None]
    if source.clips is not None:
        rejects += _missing_rejects(root, source.clips, present)

    catalog = _catalog_table(accepted, _video_ids(source.clips), out)
    clips, clip_counts = _clips_of(source, catalog, root)
    reasons = pc.value_counts(pa.array([p.reason for p in rejects], pa.string())).to_pylist()
    by_reason = {item["values"]: item["counts"] for item in sorted(reasons, key=lambda r: r["values"])}

    write_table(catalog, out / CATALOG, CATALOG_SCHEMA)
    write_table(_reject_table(rejects, root), out / REJECTS, REJECT_SCHEMA)
    write_clips(clips, out / CLIPS)
    write_table(_stamp_table(accepted), out / STAMPS, STAMP_SCHEMA)
    atomic_write_json(out / MANIFEST, {
        "videos_root": portable_path(root, out),
        "source": source.kind,
        "annotations": {**source.description, "path": portable_path(source.description["path"], out)}
        if source.description else None,
        "frame_objects": portable_path(source.frame_objects, out) if source.frame_objects else None,
        "counts": {"files": len(files), "videos": catalog.num_rows, "rejects": len(rejects),
                   "rejects_by_reason": by_reason, **clip_counts},
        "options": {"full_decode": full_decode, "timeout_s": timeout_s, "extensions": sorted(extensions)},
        "creator": "grove data ingest",
    })
    seconds = time.monotonic() - started
    logger.info("%s: %d videos, %d rejects %s, %d clips (%.1f s)", out, catalog.num_rows, len(rejects), by_reason,
                clips.num_rows, seconds)
    return CatalogSummary(out, catalog.num_rows, by_reason, clips.num_rows, len(reused), seconds)


def _clips_of(source: _Source, catalog: pa.Table, root: Path) -> tuple[pa.Table, dict[str, int]]:
    """The clip table over accepted videos; clips whose video was rejected or is missing are dropped."""
    if source.clips is None:
        clips = _whole_video_clips(catalog, dataset=root.name)
        return clips, {"clips": clips.num_rows, "clips_dropped": 0}
    accepted = catalog["relative_path"].combine_chunks() if catalog.num_rows else pa.array([], pa.string())
    keep = pc.is_in(source.clips["video_path"], value_set=accepted)
    clips = source.clips.filter(keep)
    dropped = source.clips.num_rows - clips.num_rows
    if dropped:
        logger.warning("%d clip(s) dropped: their video is missing or rejected (see %s)", dropped, REJECTS)
    return clips, {"clips": clips.num_rows, "clips_dropped": dropped}
