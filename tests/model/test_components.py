"""Components load from local folders (the `paper` path, offline) and the SAM2 grounding encoder works."""

import pytest
import torch

from grove.model import GroveConfig, GroveModel
from grove.model.components import build_clip, build_llm, build_sam
from tests.model.conftest import make_clip


def test_components_load_from_local_folders_and_sam_positions_are_resized(tmp_path, tiny_model):
    config = GroveConfig.tiny()
    vocab = len(tiny_model.processor.tokenizer)
    torch.manual_seed(3)
    llm = build_llm(config, vocab - 2, pretrained=False)  # smaller vocabulary: loading resizes it
    clip = build_clip(config, pretrained=False)
    native = config.replace(grounding_image_size=2 * config.grounding_image_size, sam={**config.sam})
    from transformers import SamModel

    from grove.model.components import _sam_config

    sam = SamModel(_sam_config(native))
    with torch.no_grad():
        sam.vision_encoder.pos_embed.normal_()
    for name, module in (("llm", llm), ("clip", clip), ("sam", sam)):
        module.save_pretrained(tmp_path / name)
    loaded = GroveModel.from_config(
        config.replace(llm_source=str(tmp_path / "llm"), clip_source=str(tmp_path / "clip"), sam_source=str(tmp_path / "sam")),
        tokenizer=tiny_model.processor.tokenizer,
    )
    torch.testing.assert_close(loaded.llm.model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight)
    torch.testing.assert_close(loaded.global_encoder.clip.encoder.layers[1].mlp.fc1.weight, clip.encoder.layers[1].mlp.fc1.weight)
    assert loaded.llm.get_input_embeddings().weight.shape[0] == vocab
    vision = loaded.grounding_encoder.vision
    grid = config.grounding_image_size // config.sam["patch_size"]
    assert vision.pos_embed.shape[1:3] == (grid, grid)
    torch.testing.assert_close(vision.layers[0].mlp.lin1.weight, sam.vision_encoder.layers[0].mlp.lin1.weight)
    frames, caption, phrases, boxes = make_clip()
    batch = loaded.processor.collate([loaded.processor(frames, caption, phrases, boxes=boxes)])
    assert torch.isfinite(loaded(batch).loss)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="cannot load the CLIP"):
        build_clip(GroveConfig.tiny(clip_source=str(tmp_path / "absent")), pretrained=True)


def test_sam2_grounding_encoder_trains_with_adapters():
    model = GroveModel.from_config(GroveConfig.tiny(grounding_encoder="sam2", grounding_image_size=64))
    assert sorted(model.grounding_encoder.adapters) == ["3", "4"]
    frames, caption, phrases, boxes = make_clip()
    batch = model.processor.collate([model.processor(frames, caption, phrases, boxes=boxes)])
    out = model(batch)
    assert out.pred_boxes.shape == (1, 8, 2, 4)
    out.loss.backward()
    assert all(a.alpha.grad.abs().item() > 0 for a in model.grounding_encoder.adapters.values())
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with torch.device("meta"):
        paper = GroveModel(GroveConfig.paper(grounding_encoder="sam2"))
    assert sum(p.numel() for p in paper.grounding_encoder.vision.parameters()) == pytest.approx(212.7e6, rel=0.01)
