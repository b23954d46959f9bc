"""A checkpoint written as a folder that needs nothing outside itself (what a logged MLflow model carries)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from grove.model import GroveConfig, GroveModel
from grove.model.store import copy_tokenizer_files, is_full_checkpoint, save_full_weights
from grove.standalone import external_sources, write_standalone_checkpoint
from grove.train import CONFIG_FILE, MODEL_FILE, STATE_FILE, load_model, save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_checkpoint_that_reads_a_base_folder_and_a_tokenizer_folder_is_written_whole(tmp_path):
    config = GroveConfig.tiny(freezing="paper")
    base = GroveModel.from_config(config)
    save_full_weights(base, tmp_path / "base")
    (tmp_path / "base" / CONFIG_FILE).write_text(config.replace(base_weights=".").to_json())
    tokenizer = copy_tokenizer_files(base.processor.tokenizer, tmp_path / "tok")
    trained_config = config.replace(base_weights=str(tmp_path / "base"), tokenizer_source=str(tokenizer))
    model = GroveModel.from_config(trained_config)
    trained, parameter = next((name, p) for name, p in model.named_parameters() if p.requires_grad)
    frozen = next(name for name, p in model.named_parameters() if not p.requires_grad)
    with torch.no_grad():
        parameter.add_(0.25)  # a trained weight that the base does not have
    (tmp_path / "ckpt").mkdir()
    save_model(tmp_path / "ckpt", model, trained_config, {"step": 3})
    assert set(external_sources(GroveConfig.from_json_file(tmp_path / "ckpt" / CONFIG_FILE))) == {"base_weights", "tokenizer_source"}
    expected = load_model(tmp_path / "ckpt").state_dict()  # its frozen weights from the base folder

    out = write_standalone_checkpoint(tmp_path / "ckpt", tmp_path / "standalone")
    shutil.rmtree(tmp_path / "base")
    shutil.rmtree(tmp_path / "tok")  # nothing outside the folder is read any more
    written = json.loads((out / CONFIG_FILE).read_text())
    assert is_full_checkpoint(out) and (written["base_weights"], written["tokenizer_source"]) == (".", "tokenizer")
    assert json.loads((out / STATE_FILE).read_text()) == {"step": 3}
    loaded = load_model(out)
    got = loaded.state_dict()
    assert set(expected) == set(got) and all(torch.equal(expected[name], got[name]) for name in expected)
    assert torch.equal(got[trained], parameter) and torch.equal(got[frozen], base.state_dict()[frozen])
    assert loaded.processor.tokenizer.get_vocab() == model.processor.tokenizer.get_vocab()
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_self_contained_checkpoint_keeps_its_files_and_a_written_folder_is_never_replaced(tmp_path):
    config = GroveConfig.tiny()
    model = GroveModel.from_config(config)
    (tmp_path / "ckpt").mkdir()
    save_model(tmp_path / "ckpt", model, config, {"step": 1})
    (tmp_path / "ckpt" / "trainer_state.pt").write_bytes(b"optimiser state")  # not part of a model
    assert external_sources(config) == {}

    out = write_standalone_checkpoint(tmp_path / "ckpt", tmp_path / "standalone")
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE, MODEL_FILE, STATE_FILE]
    assert all((out / name).read_bytes() == (tmp_path / "ckpt" / name).read_bytes() for name in (CONFIG_FILE, MODEL_FILE, STATE_FILE))
    with pytest.raises(FileExistsError, match="standalone: already exists"):
        write_standalone_checkpoint(tmp_path / "ckpt", out)
