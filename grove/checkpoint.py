"""Sharded training checkpoints (torch.distributed.checkpoint), and their weights read back whole.

A sharded step checkpoint (`strategy: fsdp`) keeps the trainable weights and the optimiser state
where they live, one file per rank, in `SHARDED_DIR/` (DCP's layout: `__<rank>_0.distcp` and a
`.metadata` index), written and read by every rank at once; a resumed run may have another
number of ranks for the weights and optimiser (DCP reshards). Frozen weights are never written:
the config rebuilds them, as for the project's single-file checkpoints.
`read_sharded_weights` reads its trainable weights whole without a process group, on any machine
that can hold them; `grove.train.convert_sharded_checkpoint` (`grove convert-checkpoint`) writes them
as the project's single-file format.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

SHARDED_DIR = "sharded"
MODEL_KEY = "model"
OPTIM_KEY = "optim"


def _state_dict_options(**changes):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, **changes)


def trainable_names(model: nn.Module) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


def _training_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, dict]:
    """The trainable weights (buffers too are left to the config) and the optimiser state, as this rank's shards."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, optim = get_state_dict(model, optimizer, options=_state_dict_options())
    keep = trainable_names(model)
    return {MODEL_KEY: {name: value for name, value in weights.items() if name in keep}, OPTIM_KEY: optim}


def is_sharded(folder: str | Path) -> bool:
    return (Path(folder) / SHARDED_DIR / ".metadata").is_file()


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every rank writes its shards into `folder/SHARDED_DIR` (a collective)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_training_state(model, optimizer), checkpoint_id=str(folder / SHARDED_DIR))


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read a sharded checkpoint into the (sharded) model and optimiser of every rank (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    path = folder / SHARDED_DIR
    if not is_sharded(folder):
        raise FileNotFoundError(f"{path}: no sharded checkpoint (missing .metadata)")
    state = _training_state(model, optimizer)
    try:
        dcp.load(state, checkpoint_id=str(path))
    except Exception as exc:  # DCP raises CheckpointException / RuntimeError for missing or foreign keys
        raise ValueError(f"{path}: cannot be read into this model and optimiser: {exc}") from exc
    set_state_dict(model, optimizer, model_state_dict=state[MODEL_KEY], optim_state_dict=state[OPTIM_KEY],
                   options=_state_dict_options(strict=False))


def full_trainable_weights(model: nn.Module, gather: bool) -> dict[str, torch.Tensor]:
    """The trainable weights, whole, on the CPU. With `gather` (a sharded model) every rank must call
    it and only rank 0 gets them (the others an empty dict)."""
    if not gather:
        return {name: p.detach().to("cpu").contiguous().clone() for name, p in model.named_parameters() if p.requires_grad}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    keep = trainable_names(model)
    weights = get_model_state_dict(model, options=_state_dict_options(full_state_dict=True, cpu_offload=True))
    return {name: value.contiguous().clone() for name, value in weights.items() if name in keep}


def read_sharded_weights(folder: str | Path) -> dict[str, torch.Tensor]:
    """The trainable weights of a sharded checkpoint, whole, read without a process group."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    path = Path(folder) / SHARDED_DIR
    if not is_sharded(folder):
        raise FileNotFoundError(f"{path}: no sharded checkpoint (missing .metadata)")
    prefix = f"{MODEL_KEY}."
    entries = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    weights = {
        key[len(prefix):]: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in entries.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }
    if not weights:
        raise ValueError(f"{path}: holds no model weights")
    with warnings.catch_warnings():  # DCP warns on every load without a process group, which is the point here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load({MODEL_KEY: weights}, checkpoint_id=str(path), no_dist=True)
    return weights
