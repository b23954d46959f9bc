"""Names read from input data cannot make the project write (or read) outside the folder they belong
to: `../` and absolute names are refused with an error naming the folder, and a symlink planted at
an output's name is replaced, never written through.

Where names from input data meet the file system (audited): clip keys of the official one-pickle-
per-clip layout (written by `grove data convert --per-clip`, read with a key list), the shard names
of a checkpoint's index (`grove weights import`). The project extracts no archives; video paths of
clip tables and catalogs are only read (and may legitimately hold `..`: a subset's videos live in
the pool's folder); shard, plan and output names are made by the code, not read from data.
"""

from __future__ import annotations

import json
import pickle
import re

import pyarrow as pa
import pytest
import torch
from safetensors.torch import save_file

from grove.data.howtoground import read_records, write_per_clip
from grove.data.predictions import write_predictions
from grove.data.schema import write_table
from grove.io import FolderWriteError, UnsafePathError, atomic_write_json, contained_path, folder_written_via
from grove.weights.sources import CheckpointReadError, open_checkpoint

RECORD = {"caption": "a cup moves"}


def everything_under(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.mark.parametrize("name", ["../outside.pkl", "a/../../outside.pkl", "/tmp/outside.pkl", "..", "", "a\0b"])
def test_contained_path_refuses_names_leaving_the_folder(tmp_path, name):
    with pytest.raises(UnsafePathError, match="not a name inside this folder"):
        contained_path(tmp_path / "out", name)


def test_contained_path_keeps_names_inside(tmp_path):
    assert contained_path(tmp_path, "vid_0.pkl") == tmp_path / "vid_0.pkl"
    assert contained_path(tmp_path, "sub/vid_0.pkl") == tmp_path / "sub" / "vid_0.pkl"


@pytest.mark.parametrize("key", ["../escaped", "../../escaped", "/tmp/escaped", "sub/../../escaped"])
def test_per_clip_export_refuses_clip_keys_that_leave_the_folder(tmp_path, key):
    out = tmp_path / "deep" / "clips"
    before = everything_under(tmp_path)
    with pytest.raises(ValueError, match="cannot be file names in"):
        write_per_clip({"fine_0": RECORD, key: RECORD}, out)
    assert everything_under(tmp_path) == before  # nothing written, not even the fine clip


def test_per_clip_read_refuses_keys_of_a_key_list_that_leave_the_folder(tmp_path):
    folder = tmp_path / "clips"
    write_per_clip({"vid_0": RECORD}, folder)
    (tmp_path / "secret.pkl").write_bytes(pickle.dumps(RECORD))
    assert read_records(folder, keys=["vid_0"]) == {"vid_0": RECORD}
    with pytest.raises(UnsafePathError, match=re.escape(str(folder))):
        read_records(folder, keys=["vid_0", "../secret"])


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/outside.safetensors"])
def test_a_checkpoint_index_naming_a_shard_outside_its_folder_is_refused(tmp_path, shard):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    save_file({"w": torch.zeros(2)}, str(tmp_path / "outside.safetensors"))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {"w": shard}}))
    with pytest.raises(CheckpointReadError, match=r"model\.safetensors\.index\.json.*not a name inside this folder"):
        open_checkpoint(folder)


WRITERS = {
    "json": lambda path: atomic_write_json(path, {"a": 1}),
    "parquet": lambda path: write_table(pa.table({"a": [1, 2]}), path),
    "predictions": lambda path: write_predictions(path, {}),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_symlink_planted_at_an_output_name_is_replaced_not_written_through(tmp_path, writer):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    target = out / f"result.{ 'parquet' if writer == 'parquet' else 'json'}"
    target.symlink_to(outside)
    WRITERS[writer](target)
    assert outside.read_text() == "keep me"
    assert target.is_file() and not target.is_symlink()


def test_a_symlink_planted_at_a_clip_pickle_is_replaced_not_written_through(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "vid_0.pkl").symlink_to(outside)
    write_per_clip({"vid_0": RECORD}, folder)
    assert outside.read_text() == "keep me"
    assert not (folder / "vid_0.pkl").is_symlink() and pickle.loads((folder / "vid_0.pkl").read_bytes()) == RECORD


@pytest.mark.parametrize("raised, cause", [
    (RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 64 vs 0"), "RuntimeError: [enforce fail"),
    (OSError(27, "File too large"), "(File too large)"),
])
def test_a_failed_folder_write_names_the_folder_and_leaves_no_half_folder(tmp_path, raised, cause):
    target, tmp = tmp_path / "checkpoints" / "step_00000001", tmp_path / "checkpoints" / ".tmp-step_00000001"
    tmp.mkdir(parents=True)
    with pytest.raises(FolderWriteError, match=re.escape(f"{target}: could not be written ")) as failure:
        with folder_written_via(target, tmp):
            (tmp / "model.safetensors").write_bytes(b"half")
            raise raised
    assert cause in str(failure.value)
    assert not tmp.exists() and not target.exists()
