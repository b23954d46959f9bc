"""Atomic file writes (a killed run never leaves a half-written file that a later run trusts), and the
portable paths that outputs record instead of absolute ones."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Iterator


# a full disk, a quota, a file-size limit, a read-only or failing disk
_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO}


def _errno(exc: OSError) -> int | None:
    """The error number of an OSError; pyarrow's carry it in their message only ("[errno 28] ...")."""
    if exc.errno is not None:
        return exc.errno
    found = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
    return int(found.group(1)) if found else None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it over `path` only if the block succeeds."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        code = _errno(exc)
        if code not in _FULL:
            raise
        # the writer's own message (pyarrow's, pickle's) does not say which output it was writing
        raise OSError(code, f"{target}: could not be written ({os.strerror(code)}); it is left as it was") from exc
    finally:
        if tmp.exists():
            tmp.unlink()


class FolderWriteError(RuntimeError):
    """A folder of files (a checkpoint) could not be written; the message names the folder."""


@contextlib.contextmanager
def folder_written_via(target: str | os.PathLike[str], tmp: str | os.PathLike[str]) -> Iterator[None]:
    """Files of `target` are written into `tmp` in the block: on an error `tmp` goes and the error names
    `target`. torch's writer reports a full disk as "[enforce fail at inline_container.cc] unexpected
    pos ...", which names no file and no cause."""
    try:
        yield
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        code = next((_errno(e) for e in _chain(exc) if isinstance(e, OSError) and _errno(e) is not None), None)
        cause = os.strerror(code) if code is not None else f"{type(exc).__name__}: {exc}"
        hint = "" if code is not None else " (a full disk shows this way too)"
        raise FolderWriteError(f"{target}: could not be written ({cause}){hint}; nothing was kept of it") from exc


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON with sorted keys, so equal objects give byte-identical files."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class UnsafePathError(ValueError):
    """A name read from input data would lead outside the folder it names a file in."""


def read_optional_json(path: str | os.PathLike[str], what: str) -> Any | None:
    """The JSON in `path`, or None when there is no such file; ValueError naming the file and `what` it is
    when it cannot be parsed."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: unreadable {what} ({exc})") from exc


def contained_path(folder: str | os.PathLike[str], name: str) -> Path:
    """`folder / name` for a `name` read from input data (a clip key, a shard file of an index), refused
    when it is empty, absolute or has a `..` part: such a name would reach outside `folder`.

    Symlinks are not refused here: a link in a checkpoint folder (the Hugging Face cache's layout) is
    the user's, and the atomic writers replace a link at the target instead of writing through it.
    """
    pure = PurePosixPath(name)
    if not name or "\0" in name or pure.is_absolute() or Path(name).is_absolute() or ".." in pure.parts:
        raise UnsafePathError(f"{folder}: {name!r} is not a name inside this folder (absolute, empty or with '..')")
    return Path(folder) / name


# Paths inside outputs. A file that an output folder holds (and DVC versions) never records an
# absolute path: it names other files relative to a stated folder (the folder that holds the file,
# unless its docstring says otherwise), so the folder's bytes, and its DVC hash, do not depend on
# where the checkout or the runs root lies. Readers join the recorded path onto that folder.


def portable_path(target: str | os.PathLike[str], start: str | os.PathLike[str]) -> str:
    """`target` relative to the folder `start` (POSIX separators; both resolved first, so links and
    `..` do not matter): what an output records instead of an absolute path."""
    return Path(os.path.relpath(Path(target).resolve(), Path(start).resolve())).as_posix()


def resolve_recorded(recorded: str | os.PathLike[str], start: str | os.PathLike[str]) -> Path:
    """The path a `portable_path` names, seen from `start` (an absolute path, as older outputs hold, is kept)."""
    path = Path(recorded)
    return path if path.is_absolute() else Path(start) / path


@contextlib.contextmanager
def exclusive_lock(lock_path: str | os.PathLike[str]) -> Iterator[None]:
    """A cross-process exclusive lock on a file (POSIX flock), created with its folder if missing;
    concurrent holders wait for each other."""
    import fcntl

    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
