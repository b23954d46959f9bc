"""The paper's code path on a CPU: the `paper-small` profile (paper options, reduced widths) trains,
resumes exactly, records where it came from; and the paper recipe equals the official one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grove.model import GroveConfig
from grove.train import TrainConfig, latest_checkpoint, provenance_note, read_provenance, train
from tests.train.fixtures import make_dataset

REPO = Path(__file__).resolve().parents[2]
STEPS = 4


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("paper_data"), {"train": 4, "val": 1, "test": 2}, seed=3)


def paper_config(dataset_dir, out, **changes) -> TrainConfig:
    base = dict(train_data=str(dataset_dir), out_dir=str(out), model="paper-small", max_steps=STEPS, batch_size=2,
                lr=1e-3, warmup_steps=1, log_every=1, eval_every=STEPS, save_every=2, num_workers=0, seed=5)
    return TrainConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def paper_run(dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("paper_run")
    return out, train(paper_config(dataset_dir, out))


def test_paper_small_differs_from_paper_only_in_widths_depths_and_weights():
    paper, small = GroveConfig.paper().to_dict(), GroveConfig.paper_small().to_dict()
    differing = {k for k in paper if paper[k] != small[k]}
    # the component sizes; random weights instead of hub sources and the download-free tokenizer
    # (offline), float32 (a CPU); the profile's name
    assert differing == {"llm", "clip", "sam", "sam_decoder", "llm_source", "clip_source", "sam_source",
                         "tokenizer_source", "dtype", "profile"}
    for part in ("llm", "clip", "sam", "sam_decoder"):
        assert set(small[part]) == set(paper[part])
    for key in ("image_size", "patch_size"):  # the grids (24x24 CLIP, 32x32 SAM) and so the reshapes
        assert small["clip"][key] == paper["clip"][key] and small["sam"][key] == paper["sam"][key]


def test_paper_small_trains_and_records_its_provenance(paper_run, dataset_dir):
    out, result = paper_run
    assert result.steps == STEPS
    step = latest_checkpoint(out)
    provenance = read_provenance(step)
    assert provenance["origin"] == "trained" and provenance["model_profile"] == "paper-small"
    assert provenance["train_datasets"] == {"fixture": 4} and provenance["step"] == STEPS
    assert provenance["started_from"] is None
    # the paper's freezing: the LLM layers and both backbones stay as initialised
    weights = load_file(str(step / "model.safetensors"))
    frozen = ("llm.model.layers.", "global_encoder.clip.", "grounding_encoder.vision.")
    # ...but SAM's position embeddings, which the official code re-creates (interpolated) as trainable
    positions = {"grounding_encoder.vision.pos_embed"} | {f"grounding_encoder.vision.layers.{b}.attn.rel_pos_{a}" for b in (1, 3) for a in "hw"}
    assert {k for k in weights if k.startswith(frozen)} == positions
    assert not any(k.startswith("global_encoder.adapters.") for k in weights)  # under no_grad, as the official
    assert {"llm.model.embed_tokens.weight", "llm.lm_head.weight", "grounding_encoder.vision.pos_embed"} <= set(weights)
    note = provenance_note(step)
    assert "started from random weights" in note and "trained on fixture (4 clips)" in note and "grove weights import" in note


def test_paper_small_resumes_to_the_same_weights(paper_run, dataset_dir, tmp_path):
    ref_out, _ = paper_run
    out = tmp_path / "resumed"
    shutil.copytree(ref_out, out)
    # as if killed after the step-2 checkpoint: drop what came later
    shutil.rmtree(out / "checkpoints" / "step_00000004")
    shutil.rmtree(out / "best", ignore_errors=True)
    (out / "checkpoints" / "last.json").write_text(json.dumps({"path": "step_00000002", "step": 2}))
    result = train(paper_config(dataset_dir, out))
    assert result.resumed_from_step == 2 and result.steps == STEPS
    resumed = load_file(str(out / "checkpoints" / "step_00000004" / "model.safetensors"))
    uninterrupted = load_file(str(ref_out / "checkpoints" / "step_00000004" / "model.safetensors"))
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=1e-5, atol=1e-7)


def test_the_paper_recipe_is_the_official_one():
    """Official train.py + train_scripts: AdamW (0.9, 0.95), wd 0, lr 5e-5, 100 linear warm-up steps then
    linear decay, clip 1.0, 1 clip per GPU x 8 GPUs x 16 nodes = global batch 128, 20 epochs of fine-tuning,
    loss weights ce 1, giou 2 (also on L1), tobj 2; GROVE's trainable set with the CLIP adapters frozen."""
    import yaml

    paper = yaml.safe_load((REPO / "params.yaml").read_text())["paper"]["model"]
    defaults = TrainConfig(train_data="x", out_dir="y")
    for phase in ("pretrain", "finetune"):
        settings = {**{k: getattr(defaults, k) for k in ("lr", "warmup_steps", "weight_decay", "grad_clip", "micro_batch_size")}, **paper[phase]}
        assert settings["batch_size"] == 128 and settings["lr"] == 5e-5 and settings["warmup_steps"] == 100
        assert settings["weight_decay"] == 0.0 and settings["grad_clip"] == 1.0 and settings["micro_batch_size"] == 1
        assert settings["batch_size"] % paper["nproc_per_node"] == 0  # ranks x accumulation
    assert paper["finetune"]["epochs"] == 20 and paper["start_from"] == {"env": "GROVE_GLAMM_WEIGHTS"}
    config = GroveConfig.paper()
    assert (config.ce_weight, config.giou_weight, config.l1_weight, config.tobj_weight) == (1.0, 2.0, 2.0, 2.0)
    assert config.freezing == "paper" and config.unfreeze and not config.train_clip_adapters
    assert config.clip_adapters and config.clip_adapter_rows == 16 and config.video_pool == (8, 8, 9)
    assert config.box_readout == "query_mlp" and config.query_phrase_pooling == "none"
    assert config.video_token_selection == "all" and config.global_image_aspect == "crop"


def test_paper_small_infers_in_the_official_layout_and_evaluates(paper_run, dataset_dir, tmp_path):
    """`grove infer --data` then `grove eval iground --protocol official` on the trained paper-small model."""
    import subprocess
    import sys

    from grove.data.predictions import load_predictions

    out, _ = paper_run
    predictions = tmp_path / "predictions.pkl"
    infer = subprocess.run([sys.executable, "-m", "grove.cli", "infer", "--checkpoint", str(out), "--data", str(dataset_dir),
                            "--split", "test", "--out", str(predictions)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert "started from random weights" in infer.stderr  # the provenance note
    records, errors = load_predictions(predictions)
    assert len(records) == 2 and not errors
    for record in records.values():  # the official layout: kept boxes, one label each, objectness per query
        for boxes, labels, probs in zip(record.pred_bboxes, record.pred_labels, record.probs_temp_objectness):
            assert len(boxes) == len(labels) == int((probs > 0.5).sum()) and len(probs) == len(record.pred_phrases)
    evaluate = subprocess.run([sys.executable, "-m", "orchestration.cli", "eval", "iground", "--gt", str(dataset_dir), "--pred",
                               str(predictions), "--split", "test", "--protocol", "official", "--no-captions", "--json"],
                              cwd=REPO, capture_output=True, text=True, timeout=900)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    report = json.loads(evaluate.stdout)
    assert report["counts"]["scored"] == 2 and {"AP50", "Recall"} <= set(report["metrics"])
