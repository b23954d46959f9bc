"""Full-weights checkpoints: every tensor in sharded safetensors, loaded strictly."""

from __future__ import annotations

import json

import pytest
import torch

from grove.model import GroveConfig, GroveModel
from grove.model.store import INDEX_FILE, ShardWriter, load_full_weights, save_full_weights, uninitialised_model
from grove.model.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def small():
    config = GroveConfig.paper_small()
    return config, GroveModel.from_config(config)


def test_round_trip_through_several_shards_gives_every_tensor_back(small, tmp_path):
    config, model = small
    save_full_weights(model, tmp_path, max_shard_bytes=1_000_000)
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and shards[-1].endswith(f"-of-{len(shards):05d}.safetensors")
    fresh = uninitialised_model(config, model.processor.tokenizer)
    load_full_weights(fresh, tmp_path)
    expected, got = model.state_dict(), fresh.state_dict()
    assert set(expected) == set(got) and all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_model_named_by_base_weights_is_built_from_them(small, tmp_path):
    config, model = small
    save_full_weights(model, tmp_path)
    (tmp_path / "config.json").write_text(config.replace(base_weights=".").to_json())
    loaded = GroveModel.from_config(GroveConfig.from_json_file(tmp_path / "config.json"))
    assert loaded.config.base_weights == str(tmp_path.resolve())
    assert torch.equal(loaded.box_head.mlp[0].weight, model.box_head.mlp[0].weight)


def test_loading_is_strict_and_names_the_file_and_key(small, tmp_path):
    config, model = small
    state = model.state_dict()
    writer = ShardWriter(tmp_path)
    for name, tensor in state.items():
        if name != "box_head.mlp.0.bias":
            writer.add(name, tensor if name != "objectness_head.linear.weight" else tensor[:, :-1])
    writer.add("extra.weight", torch.zeros(1))
    writer.close()
    target = uninitialised_model(config, load_tokenizer(config.tokenizer_source))
    with pytest.raises(KeyError, match=r"1 model tensors missing, e\.g\. \['box_head\.mlp\.0\.bias'\].*1 unknown tensors, e\.g\. \['extra\.weight'\]"):
        load_full_weights(target, tmp_path)


def test_a_wrong_shape_or_a_truncated_shard_is_an_error_naming_the_shard(small, tmp_path):
    config, model = small
    state = dict(model.state_dict())
    state["objectness_head.linear.weight"] = torch.zeros(1, 7)
    writer = ShardWriter(tmp_path)
    for name, tensor in state.items():
        writer.add(name, tensor)
    writer.close()
    target = uninitialised_model(config, model.processor.tokenizer)
    with pytest.raises(ValueError, match=r"model-00001-of-00001\.safetensors: objectness_head\.linear\.weight has shape \(1, 7\)"):
        load_full_weights(target, tmp_path)
    shard = tmp_path / "model-00001-of-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(ValueError, match="model-00001-of-00001.safetensors: unreadable safetensors shard"):
        load_full_weights(target, tmp_path)
