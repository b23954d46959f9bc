"""Reading checkpoints of other code: every layout, lazily, and a clear error naming the file."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from grove.weights.sources import CheckpointReadError, open_checkpoint


def _state(n: int = 3) -> dict[str, torch.Tensor]:
    return {f"model.layers.{i}.weight": torch.full((2, 3), float(i)) for i in range(n)}


def _read_all(path) -> dict[str, torch.Tensor]:
    source = open_checkpoint(path)
    return {name: tensor.clone() for _, tensors in source.shards() for name, tensor in tensors}


def _sharded(folder, state, suffix: str) -> None:
    names = list(state)
    weight_map = {}
    for number, chunk in enumerate((names[:2], names[2:]), start=1):
        file = f"model-{number:05d}-of-00002.{suffix}"
        part = {k: state[k] for k in chunk}
        if suffix == "safetensors":
            save_file(part, str(folder / file))
        else:
            torch.save(part, folder / file)
        weight_map.update({k: file for k in chunk})
    index = "model.safetensors.index.json" if suffix == "safetensors" else "pytorch_model.bin.index.json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("suffix", ["safetensors", "bin"])
def test_sharded_folders_read_back_every_tensor(tmp_path, suffix):
    state = _state()
    _sharded(tmp_path, state, suffix)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 3}))
    source = open_checkpoint(tmp_path)
    assert source.config == {"hidden_size": 3}
    assert [f.name for f in source.files] == [f"model-0000{i}-of-00002.{suffix}" for i in (1, 2)]
    assert source.shape("model.layers.2.weight") == (2, 3)
    read = _read_all(tmp_path)
    assert set(read) == set(state) and all(torch.equal(read[k], state[k]) for k in state)


def test_single_state_dict_file_and_a_deepspeed_wrapper(tmp_path):
    state = _state()
    torch.save(state, tmp_path / "grove_ckpt.bin")
    assert set(_read_all(tmp_path / "grove_ckpt.bin")) == set(state)
    torch.save({"module": state}, tmp_path / "wrapped.pt")
    source = open_checkpoint(tmp_path / "wrapped.pt")
    assert source.unwrapped == "module" and set(source.tensors) == set(state)


def test_a_missing_shard_names_the_shard_and_a_tensor(tmp_path):
    _sharded(tmp_path, _state(), "safetensors")
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointReadError, match="model-00002-of-00002.safetensors is missing.*model.layers.2.weight"):
        open_checkpoint(tmp_path)


@pytest.mark.parametrize("suffix", ["safetensors", "bin"])
def test_a_truncated_file_is_a_clear_error_naming_it(tmp_path, suffix):
    path = tmp_path / f"model.{suffix}"
    state = {"a": torch.randn(64, 64)}
    save_file(state, str(path)) if suffix == "safetensors" else torch.save(state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointReadError, match=str(path.name)):
        _read_all(path)


def test_not_a_state_dict(tmp_path):
    torch.save({"weights": [1, 2, 3]}, tmp_path / "x.pt")
    with pytest.raises(CheckpointReadError, match="x.pt: entry 'weights' is a list"):
        open_checkpoint(tmp_path / "x.pt")
    with pytest.raises(CheckpointReadError, match="no checkpoint found"):
        open_checkpoint(tmp_path.joinpath("empty").mkdir() or tmp_path / "empty")
