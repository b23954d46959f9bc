"""Atomic file writes (a killed run never leaves a half-written file that a later run trusts), and the
portable paths that outputs record instead of absolute ones."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


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
    finally:
        if tmp.exists():
            tmp.unlink()


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
