"""A restricted unpickler for pickles from outside (official annotation files, downloaded splits).

`pickle.load` on an untrusted file runs whatever callable the file names (`os.system`,
`builtins.eval`, any class's `__reduce__`). The only way a pickle reaches a callable is through a
global lookup, so this module admits a short allow-list of globals: the builtin containers and
scalars, and, when `allow_numpy`, what numpy needs to rebuild arrays, scalars and dtypes (the
official GROVE pickles may hold them). Anything else is refused with `UnsafePickleError`, naming
the file and the `module.name` the pickle tried to load.
"""

from __future__ import annotations

import _compat_pickle
import collections
import functools
import io
import os
import pickle
from pathlib import Path
from typing import Any, BinaryIO


class UnsafePickleError(Exception):
    """The pickle names a global outside the allow-list; nothing from it was executed."""

    def __init__(self, source: str, global_name: str, allow_numpy: bool = True) -> None:
        allowed = "builtin containers and scalars" + (" and numpy arrays/scalars/dtypes" if allow_numpy else "")
        super().__init__(f"{source}: refused to load global '{global_name}' (untrusted pickles may only hold {allowed})")
        self.source = source
        self.global_name = global_name


class PickleReadError(ValueError):
    """The file is not a readable pickle (not a pickle at all, truncated, or malformed)."""


def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol-2 pickles use it for bytes and array buffers: latin-1 only.

    The real `_codecs.encode` accepts any registered codec; a pickle has no reason to ask for one.
    """
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return obj.encode("latin-1", errors)


_BUILTIN_NAMES = (
    "list", "dict", "tuple", "set", "frozenset", "bytearray", "bytes", "str", "int", "float",
    "complex", "bool", "slice", "range",
)


@functools.cache
def _builtin_globals() -> dict[tuple[str, str], Any]:
    import builtins

    allowed: dict[tuple[str, str], Any] = {}
    for name in _BUILTIN_NAMES:
        allowed[("builtins", name)] = getattr(builtins, name)
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("collections", "defaultdict")] = collections.defaultdict
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


@functools.cache
def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        import numpy as np
    except ImportError:  # numpy globals are then refused like any other
        return {}
    core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core to numpy._core
    reconstruct = core.multiarray._reconstruct
    scalar = core.multiarray.scalar
    frombuffer = core.numeric._frombuffer
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    # pickles written by numpy 1.x name numpy.core, those by numpy 2 name numpy._core
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: str, allow_numpy: bool) -> None:
        super().__init__(file)
        self._source = source
        self._allow_numpy = allow_numpy
        self._allowed = {**_builtin_globals(), **(_numpy_globals() if allow_numpy else {})}

    def find_class(self, module: str, name: str) -> Any:
        # protocols 0-2 spell builtins the Python 2 way (__builtin__.xrange is range): map as pickle does
        python3_name = _compat_pickle.NAME_MAPPING.get((module, name))
        if python3_name is None:
            python3_name = (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
        try:
            return self._allowed[python3_name]
        except KeyError:
            raise UnsafePickleError(self._source, f"{module}.{name}", self._allow_numpy) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def _load(file: BinaryIO, source: str, allow_numpy: bool) -> Any:
    try:
        return _RestrictedUnpickler(file, source, allow_numpy).load()
    except UnsafePickleError:
        raise
    except Exception as exc:  # every other failure means the bytes are not a sound pickle
        raise PickleReadError(f"{source}: not a readable pickle ({type(exc).__name__}: {exc})") from exc


def safe_load(path: str | os.PathLike[str], allow_numpy: bool = True) -> Any:
    """Unpickle an untrusted file, admitting only builtin containers/scalars (and numpy when `allow_numpy`).

    Raises `UnsafePickleError` when the file names any other global, `PickleReadError` when it is not
    a pickle, `FileNotFoundError` when it does not exist; each message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as handle:
        return _load(handle, str(path), allow_numpy)


def safe_loads(data: bytes, allow_numpy: bool = True, source: str = "<bytes>") -> Any:
    """`safe_load` for bytes already in memory; `source` names them in errors."""
    return _load(io.BytesIO(data), source, allow_numpy)

