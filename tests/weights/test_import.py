"""`grove weights import` end to end on a tiny official-layout GROVE assembled from the official module
fixtures (their real official key names and weights): every tensor mapped or dropped with a reason, the
imported model reproduces the official module outputs, runs `grove infer`, and bad sources fail clearly."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from grove.model.tokenizer import build_tiny_tokenizer
from grove.train import load_model, provenance_note, read_provenance
from grove.weights import official
from grove.weights.importer import WeightsImportError, import_checkpoint
from tests.weights.test_official_fixtures import ATOL, read_fixture

REPO = Path(__file__).resolve().parents[2]
FIXTURES = ("clip_tower", "llm", "sam_encoder", "grounding_decoder")


def official_state(vocab: int) -> dict[str, torch.Tensor]:
    """The union of the fixtures' official weights: a whole (tiny) GroveForCausalLM state dict."""
    state: dict[str, torch.Tensor] = {}
    for name in FIXTURES:
        state.update(read_fixture(name)[1])
    generator = torch.Generator().manual_seed(0)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):  # rows for the whole tokenizer
        rows = state[key]
        state[key] = torch.cat([rows, 0.02 * torch.randn(vocab - rows.shape[0], rows.shape[1], generator=generator)])
    state["model.region_encoder.mlvl_fuse.0.weight"] = torch.zeros(4, 4)  # what GLaMM carries and GROVE never uses
    return state


def write_release(folder: Path, state: dict[str, torch.Tensor], tokenizer, dtype=torch.float32) -> Path:
    """The grove_transformers save_pretrained layout: two safetensors shards + index, config.json, tokenizer."""
    folder.mkdir(parents=True)
    names = sorted(state)
    weight_map = {}
    for number, part in enumerate((names[::2], names[1::2]), start=1):
        file = f"model-{number:05d}-of-00002.safetensors"
        save_file({k: state[k].to(dtype).contiguous() for k in part}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    clip, _, _, _ = read_fixture("clip_tower")
    tower = folder.parent / "clip-tiny"
    tower.mkdir(exist_ok=True)
    (tower / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "num_attention_heads": clip["heads"]}))
    llm, _, _, _ = read_fixture("llm")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "grove", "hidden_size": llm["hidden"], "intermediate_size": llm["intermediate"],
        "num_hidden_layers": llm["layers"], "num_attention_heads": llm["heads"], "num_key_value_heads": llm["kv_heads"],
        "rms_norm_eps": llm["rms_eps"], "rope_theta": llm["rope_theta"], "max_position_embeddings": llm["max_pos"],
        "vocab_size": len(tokenizer), "mm_vision_tower": str(tower), "out_dim": 32, "num_frames": 8,
    }))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer(1024)


@pytest.fixture(scope="module")
def release(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("official")
    return write_release(root / "grove_release", official_state(len(tokenizer)), tokenizer)


@pytest.fixture(scope="module")
def imported(release, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "grove"
    report = import_checkpoint("grove", release, out, decoder_heads=2, max_shard_bytes=200_000)
    return out, report


def test_every_source_tensor_is_mapped_or_dropped_and_every_target_loaded(imported, release):
    out, report = imported
    summary = report.summary()
    sources = load_file(str(release / "model-00001-of-00002.safetensors")).keys() | load_file(str(release / "model-00002-of-00002.safetensors")).keys()
    assert {m["source"] for m in report.mapped} | {d["source"] for d in report.dropped} == set(sources)
    assert not report.fresh and summary["by_transform"] == {"copy": summary["mapped"]}
    reasons = {d["source"]: d["reason"] for d in report.dropped}
    assert "region encoder" in reasons["model.region_encoder.mlvl_fuse.0.weight"]
    assert "point" in reasons["model.grounding_encoder.prompt_encoder.point_embeddings.0.weight"]
    index = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(index.values())) > 3  # streamed into several small shards
    assert set(index) == {m["target"] for m in report.mapped}
    assert report.tokens["det"] == 2 + report.tokens["vid_start"] and report.adapter_gates  # tiny order; gates recorded
    provenance = read_provenance(out)
    assert provenance["origin"] == "imported" and provenance["format"] == "grove"
    assert all(len(f["sha256"]) == 64 for f in provenance["source_files"])
    assert json.loads((out / "config.json").read_text())["base_weights"] == "."
    assert provenance_note(out) is None


def test_the_imported_model_reproduces_the_official_modules(imported):
    out, _ = imported
    model = load_model(out)
    assert model.config.clip_adapters and model.config.clip_adapter_rows == 16 and model.config.video_pool == (8, 8, 9)
    _, _, clip_in, clip_out = read_fixture("clip_tower")
    _, _, sam_in, sam_out = read_fixture("sam_encoder")
    _, _, dec_in, dec_out = read_fixture("grounding_decoder")
    with torch.no_grad():
        video = model.encode_video(clip_in["pixels"][None])
        features = model.grounding_encoder(sam_in["pixels"].permute(0, 2, 1, 3, 4))
        boxes, logits = model.decode_boxes(dec_in["image_embeddings"][None], dec_in["queries"][None])
    torch.testing.assert_close(video, clip_out["projected"], rtol=0, atol=ATOL)
    torch.testing.assert_close(features[0], sam_out["image_embeddings"], rtol=0, atol=ATOL)
    torch.testing.assert_close(boxes[0].reshape(-1, 4), dec_out["bbox_pred"], rtol=0, atol=ATOL)
    torch.testing.assert_close(logits[0].reshape(-1), dec_out["objectness_logits"], rtol=0, atol=ATOL)


def test_grove_infer_runs_the_imported_model_on_a_video(imported, tmp_path):
    from tests.train.fixtures import write_video

    out, _ = imported
    video = tmp_path / "street.mp4"
    frames = np.random.default_rng(0).integers(0, 255, (20, 72, 128, 3), dtype=np.uint8)
    write_video(video, frames, 10.0)
    result = subprocess.run([sys.executable, "-m", "grove.cli", "infer", "--checkpoint", str(out), "--video", str(video),
                             "--out", str(tmp_path / "pred.json")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "caption:" in result.stdout and "note:" not in result.stderr  # imported weights: no warning
    payload = json.loads((tmp_path / "pred.json").read_text())
    assert len(payload["frames"]) == 10 and "note" not in payload


def test_a_bf16_release_imports_as_bf16(release, tokenizer, tmp_path):
    state = {k: v for k, v in load_file(str(release / "model-00001-of-00002.safetensors")).items()}
    state.update(load_file(str(release / "model-00002-of-00002.safetensors")))
    bf16 = write_release(tmp_path / "bf16" / "grove_release", state, tokenizer, torch.bfloat16)
    report = import_checkpoint("grove", bf16, tmp_path / "out", decoder_heads=2, hash_sources=False)
    assert report.dtype == "bfloat16" and {m["dtype"] for m in report.mapped} == {"bfloat16->bfloat16"}
    model = load_model(tmp_path / "out")
    assert model.box_head.mlp[0].weight.dtype == torch.bfloat16


def test_a_training_state_dict_loads_over_glamm_as_the_official_inference_does(release, imported, tmp_path):
    """grove-train: the .bin (here without the CLIP tower and the LLM) over --like (release layout stands in)."""
    state = {}
    for file in sorted(release.glob("model-*.safetensors")):
        state.update(load_file(str(file)))
    partial = {k: v for k, v in state.items() if not k.startswith((official.CLIP, "model.layers."))}
    torch.save(partial, tmp_path / "grove_ckpt.bin")
    report = import_checkpoint("grove-train", tmp_path / "grove_ckpt.bin", tmp_path / "out", like=str(release), decoder_heads=2)
    origins = {m["source"].split(":")[0] if ":" in m["source"] else "checkpoint" for m in report.mapped}
    assert origins == {"checkpoint", "like"}
    superseded = [d for d in report.dropped if d["reason"] == "superseded by the checkpoint tensor for the same weight"]
    assert len(superseded) == len([k for k in partial if not k.startswith(("model.region_encoder.", official.PROMPT + "point", official.PROMPT + "not_a", official.PROMPT + "mask_down"))])
    same = load_model(tmp_path / "out").state_dict()
    reference = load_model(imported[0]).state_dict()
    assert all(torch.equal(same[k], reference[k]) for k in reference)


def test_bad_sources_fail_clearly_and_leave_no_output(release, tokenizer, tmp_path):
    state = official_state(len(tokenizer))
    state["model.grounding_encoder.mask_decoder.mystery.weight"] = torch.zeros(2)
    strange = write_release(tmp_path / "a" / "grove_release", state, tokenizer)
    with pytest.raises(WeightsImportError, match=re.escape("mask_decoder.mystery.weight")):
        import_checkpoint("grove", strange, tmp_path / "out_a", decoder_heads=2)
    state = official_state(len(tokenizer))
    state[official.DECODER + "bbox_prediction_head.0.weight"] = torch.zeros(32, 31)
    wrong = write_release(tmp_path / "b" / "grove_release", state, tokenizer)
    with pytest.raises(WeightsImportError, match=r"bbox_prediction_head\.0\.weight: shape \(32, 31\) cannot fill box_head\.mlp\.0\.weight \(32, 32\)"):
        import_checkpoint("grove", wrong, tmp_path / "out_b", decoder_heads=2)
    state = official_state(len(tokenizer))
    del state[official.DECODER + "temporal_objectness_head.weight"]
    lacking = write_release(tmp_path / "c" / "grove_release", state, tokenizer)
    with pytest.raises(WeightsImportError, match="should hold every tensor; missing \\['objectness_head'\\]"):
        import_checkpoint("grove", lacking, tmp_path / "out_c", decoder_heads=2)
    shard = release / "model-00002-of-00002.safetensors"
    truncated = tmp_path / "d" / "grove_release"
    truncated.parent.mkdir()
    import shutil

    shutil.copytree(release, truncated)
    (truncated / shard.name).write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    from grove.weights.sources import CheckpointReadError

    with pytest.raises(CheckpointReadError, match="model-00002-of-00002.safetensors"):
        import_checkpoint("grove", truncated, tmp_path / "out_d", decoder_heads=2)
    assert not any((tmp_path / name).exists() for name in ("out_a", "out_b", "out_c", "out_d", ".tmp-out_a"))
    with pytest.raises(FileExistsError):
        import_checkpoint("grove", release, release, decoder_heads=2)
