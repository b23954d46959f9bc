"""Full-weights checkpoints: every tensor of a GroveModel, in this project's names, as sharded safetensors.

A trainable-only checkpoint (grove/train.py) rebuilds its frozen weights from the config: component
sources or the seeded random initialisation. A model imported from outside (the released GROVE
checkpoint, GLaMM; grove/weights/) has no such sources, so it is stored whole:

    config.json                     GroveConfig; `base_weights: "."` (this folder), `tokenizer_source: "tokenizer"`
    model.safetensors.index.json    {"metadata": {"format": "grove-full", "total_size": N}, "weight_map": {name: shard}}
    model-00001-of-0000K.safetensors ...
    tokenizer/                      the tokenizer (save_pretrained layout)
    provenance.json                 where the weights came from (grove/weights/importer.py)

Every parameter and persistent buffer of the model is in the shards, and nothing else: loading is
strict and names the file and key of any mismatch. A model that names the folder as its
`base_weights` is built without initialising its weights (they are all loaded), in `config.dtype`, so
a 7B model needs its own size in memory once, not a float32 copy beside it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from grove.io import atomic_write_json

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from grove.model.config import GroveConfig
    from grove.model.grove import GroveModel

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
FULL_FORMAT = "grove-full"
DEFAULT_SHARD_BYTES = 2 * 1024**3


def is_full_checkpoint(folder: str | os.PathLike[str]) -> bool:
    return (Path(folder) / INDEX_FILE).is_file()


def tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class ShardWriter:
    """Writes tensors into safetensors shards of at most `max_shard_bytes` (one tensor may exceed it),
    then the index. Only the tensors of the shard being filled are held in memory."""

    def __init__(self, folder: str | os.PathLike[str], max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._pending or any(name in shard for shard in self._shards):
            raise ValueError(f"tensor {name!r} written twice")
        size = tensor_bytes(tensor)
        if self._pending and self._pending_bytes + size > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.detach().to("cpu").contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        if not self._pending:
            return
        number = len(self._shards) + 1
        save_file(self._pending, str(self.folder / f".shard-{number:05d}.safetensors"), metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending = {}
        self._pending_bytes = 0

    def close(self) -> dict[str, str]:
        """Name the shards `model-0000k-of-0000K.safetensors`, write the index; returns the weight map."""
        self._flush()
        count = len(self._shards)
        weight_map: dict[str, str] = {}
        for number, names in enumerate(self._shards, start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            os.replace(self.folder / f".shard-{number:05d}.safetensors", self.folder / final)
            weight_map.update({name: final for name in names})
        atomic_write_json(
            self.folder / INDEX_FILE,
            {"metadata": {"format": FULL_FORMAT, "total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))},
        )
        return weight_map


def read_index(folder: str | os.PathLike[str]) -> dict[str, str]:
    """The weight map of a full-weights checkpoint; a clear error for a missing or malformed index."""
    path = Path(folder) / INDEX_FILE
    try:
        index = json.loads(path.read_text())
        weight_map = index["weight_map"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing; {folder} is not a full-weights checkpoint") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a safetensors index ({exc})") from exc
    if index.get("metadata", {}).get("format") != FULL_FORMAT:
        raise ValueError(f"{path}: format {index.get('metadata', {}).get('format')!r}, expected {FULL_FORMAT!r} (import it with `grove weights import`)")
    return weight_map


def save_full_weights(model: torch.nn.Module, folder: str | os.PathLike[str], max_shard_bytes: int = DEFAULT_SHARD_BYTES) -> None:
    """Every parameter and persistent buffer of `model`, sharded."""
    writer = ShardWriter(folder, max_shard_bytes)
    for name, tensor in model.state_dict().items():
        writer.add(name, tensor)
    writer.close()


@torch.no_grad()
def load_full_weights(model: torch.nn.Module, folder: str | os.PathLike[str]) -> None:
    """Fill every parameter and persistent buffer of `model` from the shards (cast to the model's dtypes).

    Strict: a tensor the model lacks, a model tensor the checkpoint lacks, a wrong shape, a missing or
    truncated shard are errors naming the file and the key.
    """
    folder = Path(folder)
    weight_map = read_index(folder)
    targets = model.state_dict(keep_vars=True)
    missing = sorted(set(targets) - set(weight_map))
    unknown = sorted(set(weight_map) - set(targets))
    if missing or unknown:
        raise KeyError(
            f"{folder / INDEX_FILE}: does not fit the model: "
            + (f"{len(missing)} model tensors missing, e.g. {missing[:3]}; " if missing else "")
            + (f"{len(unknown)} unknown tensors, e.g. {unknown[:3]}" if unknown else "")
        )
    by_shard: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(name)
    for shard, names in sorted(by_shard.items()):
        with _open_shard(folder / shard) as handle:
            available = set(handle.keys())
            for name in names:
                if name not in available:
                    raise KeyError(f"{folder / shard}: lacks {name!r}, which the index places there")
                tensor = handle.get_tensor(name)
                target = targets[name]
                if tuple(tensor.shape) != tuple(target.shape):
                    raise ValueError(f"{folder / shard}: {name} has shape {tuple(tensor.shape)}, the model {tuple(target.shape)}")
                target.copy_(tensor)


@contextlib.contextmanager
def _open_shard(path: Path) -> Iterator:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard missing")
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except SafetensorError as exc:
        raise ValueError(f"{path}: unreadable safetensors shard ({exc}); truncated or not a safetensors file?") from exc


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def uninitialised_model(config: "GroveConfig", tokenizer: "PreTrainedTokenizerBase | None") -> "GroveModel":
    """The modules of `config` in its dtype, their weights allocated but not initialised (all get loaded)."""
    from transformers.initialization import no_init_weights

    from grove.model.components import torch_dtype
    from grove.model.grove import GroveModel

    with no_init_weights(), _default_dtype(torch_dtype(config.dtype)):
        return GroveModel(config, tokenizer, pretrained=False)


def model_from_base(
    config: "GroveConfig", tokenizer: "PreTrainedTokenizerBase", device: torch.device | str = "cpu"
) -> "GroveModel":
    """A GroveModel whose every weight comes from the full-weights folder `config.base_weights`."""
    if config.base_weights is None:
        raise ValueError("config.base_weights names no full-weights checkpoint")
    folder = Path(config.base_weights)
    model = uninitialised_model(config, tokenizer)
    load_full_weights(model, folder)
    logger.info("loaded %d tensors from %s", len(read_index(folder)), folder)
    return model.to(device=torch.device(device))


def copy_tokenizer_files(tokenizer: "PreTrainedTokenizerBase", folder: str | os.PathLike[str]) -> Path:
    """Save the tokenizer into `folder/tokenizer` (replacing what was there)."""
    target = Path(folder) / "tokenizer"
    shutil.rmtree(target, ignore_errors=True)
    tokenizer.save_pretrained(str(target))
    return target
