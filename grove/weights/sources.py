"""Read checkpoints written by other code, one shard at a time, without loading them whole.

Layouts (a folder, or the file itself):
- transformers `save_pretrained`: `model.safetensors` or `model.safetensors.index.json` + shards
  (the released GROVE checkpoint), `pytorch_model.bin` or `pytorch_model.bin.index.json` + shards
  (GLaMM's checkpoints);
- one state-dict file: `.bin` / `.pt` / `.pth` (torch.save, e.g. DeepSpeed's zero_to_fp32 output) or
  `.safetensors`.
Torch files are read with `torch.load(weights_only=True, mmap=True)` (tensors stay in the file until
used); safetensors through `safe_open`. Every error names the file (and the key where there is one).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open

from grove.io import UnsafePathError, contained_path, read_optional_json

logger = logging.getLogger(__name__)

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"
TORCH_SUFFIXES = (".bin", ".pt", ".pth")
# containers a state dict is sometimes saved inside (DeepSpeed engines, Lightning, plain dicts)
WRAPPER_KEYS = ("module", "state_dict", "model")


class CheckpointReadError(ValueError):
    """A source checkpoint cannot be read; the message names the file."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path


@dataclass
class SourceCheckpoint:
    """The tensors of a checkpoint by name, their shapes and files; `shards()` streams them."""

    path: Path
    files: list[Path]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    unwrapped: str | None = None  # the wrapper key a torch state dict was found under

    @property
    def folder(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def names(self, prefix: str = "") -> list[str]:
        return [n for n in self.tensors if n.startswith(prefix)]

    def shards(self) -> Iterator[tuple[Path, Iterator[tuple[str, torch.Tensor]]]]:
        """(file, its (name, tensor) pairs) for each file in turn; a file's tensors are released after it."""
        for file in self.files:
            yield file, _read_file(file, [n for n, info in self.tensors.items() if info.file == file], self.unwrapped)


def open_checkpoint(path: str | Path) -> SourceCheckpoint:
    """Find the checkpoint files at `path` and read their tensor names, shapes and dtypes."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    files = _checkpoint_files(path)
    source = SourceCheckpoint(path=path, files=files, config=_read_config(path))
    for file in files:
        for name, shape, dtype in _describe(file, source):
            if name in source.tensors:
                raise CheckpointReadError(f"{file}: tensor {name!r} is also in {source.tensors[name].file}")
            source.tensors[name] = TensorInfo(name, shape, dtype, file)
    if not source.tensors:
        raise CheckpointReadError(f"{path}: no tensors found")
    return source


def _checkpoint_files(path: Path) -> list[Path]:
    if path.is_file():
        if path.suffix in TORCH_SUFFIXES or path.suffix == ".safetensors":
            return [path]
        raise CheckpointReadError(f"{path}: not a checkpoint file (expected .safetensors, .bin, .pt or .pth)")
    for index_name in (SAFETENSORS_INDEX, BIN_INDEX):
        index = path / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise CheckpointReadError(f"{index}: not a transformers shard index ({exc})") from exc
            try:  # the index is input data: a shard named outside the checkpoint folder is refused
                files = [contained_path(path, name) for name in dict.fromkeys(weight_map.values())]
            except (UnsafePathError, TypeError) as exc:
                raise CheckpointReadError(f"{index}: {exc}") from exc
            missing = [f for f in files if not f.is_file()]
            if missing:
                lost = sorted(k for k, v in weight_map.items() if path / v in missing)
                raise CheckpointReadError(f"{index}: shard {missing[0].name} is missing (it holds {len(lost)} tensors, e.g. {lost[0]!r})")
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (path / single).is_file():
            return [path / single]
    candidates = sorted(p for p in path.iterdir() if p.suffix in TORCH_SUFFIXES + (".safetensors",))
    if len(candidates) == 1:
        return candidates
    raise CheckpointReadError(
        f"{path}: no checkpoint found (expected {SAFETENSORS_INDEX}, {BIN_INDEX}, model.safetensors, "
        f"pytorch_model.bin or one .bin/.pt/.safetensors file; found {[p.name for p in candidates]})"
    )


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        return read_optional_json((path if path.is_dir() else path.parent) / "config.json", "checkpoint config")
    except ValueError as exc:  # the message names the file
        raise CheckpointReadError(str(exc)) from exc


def _describe(file: Path, source: SourceCheckpoint) -> Iterator[tuple[str, tuple[int, ...], torch.dtype]]:
    if file.suffix == ".safetensors":
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in handle.keys():
                    piece = handle.get_slice(name)
                    yield name, tuple(piece.get_shape()), _SAFE_DTYPES.get(piece.get_dtype(), torch.float32)
        except SafetensorError as exc:
            raise CheckpointReadError(f"{file}: unreadable safetensors file ({exc}); truncated?") from exc
        return
    state, wrapper = _torch_state(file)
    if wrapper is not None:
        source.unwrapped = wrapper
    for name, tensor in state.items():
        yield name, tuple(tensor.shape), tensor.dtype


_SAFE_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
                "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def _torch_state(file: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """A torch file's state dict (memory-mapped where the file allows it) and the wrapper it sat in."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise CheckpointReadError(f"{file}: unreadable torch checkpoint ({exc}); truncated or not a state dict?") from exc
        logger.warning("%s: legacy (non-zip) torch file, loading it whole (no memory map)", file)
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors of a corrupt file come in many types
        raise CheckpointReadError(f"{file}: unreadable torch checkpoint ({type(exc).__name__}: {exc})") from exc
    wrapper = None
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in WRAPPER_KEYS:
            if isinstance(state.get(key), dict):
                state, wrapper = state[key], key
                break
    if not isinstance(state, dict):
        raise CheckpointReadError(f"{file}: holds a {type(state).__name__}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointReadError(f"{file}: entry {bad[0]!r} is a {type(state[bad[0]]).__name__}, not a tensor")
    return state, wrapper


def _read_file(file: Path, names: list[str], wrapper: str | None) -> Iterator[tuple[str, torch.Tensor]]:
    if file.suffix == ".safetensors":
        try:
            with safe_open(str(file), framework="pt") as handle:
                for name in names:
                    yield name, handle.get_tensor(name)
        except SafetensorError as exc:
            raise CheckpointReadError(f"{file}: cannot read its tensors ({exc}); truncated?") from exc
        return
    state, _ = _torch_state(file)
    for name in names:
        try:
            yield name, state[name]
        except RuntimeError as exc:  # a memory-mapped tensor past the end of a truncated file
            raise CheckpointReadError(f"{file}: cannot read {name!r} ({exc}); truncated?") from exc
    del state
