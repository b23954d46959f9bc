"""Freezing (grove_spec 2.2, Table 6): which weights train, and frozen ones stay put through a step."""

import pytest
import torch

from grove.model import GroveConfig, GroveModel
from tests.model.conftest import make_clip

PAPER_TRAINABLE = (
    "global_encoder.adapters.",
    "video_selector.",  # the tiny profile's video-token selection head
    "grounding_encoder.adapters.",
    "grounding_encoder.vision.pos_embed",
    "grounding_encoder.vision.layers.1.attn.rel_pos_",
    "grounding_encoder.vision.layers.2.attn.rel_pos_",
    "box_decoder.mask_decoder.",
    "box_head.",
    "objectness_head.",
    "vl_projector.",
    "lq_projector.",
    "llm.model.embed_tokens.",
    "llm.lm_head.",
)


@pytest.fixture(scope="module")
def paper_frozen_tiny() -> GroveModel:
    # the paper's box readout: tiny's mask readout adds parts the paper does not have (test_mask_readout.py)
    return GroveModel.from_config(GroveConfig.tiny(freezing="paper", box_readout="query_mlp"))


def _trainable(model: GroveModel) -> set[str]:
    return set(model.trainable_parameter_names())


def test_paper_freezing_trains_exactly_the_papers_parts(paper_frozen_tiny):
    trainable = _trainable(paper_frozen_tiny)
    assert all(name.startswith(PAPER_TRAINABLE) for name in trainable), sorted(n for n in trainable if not n.startswith(PAPER_TRAINABLE))
    for prefix in PAPER_TRAINABLE[1:]:  # every part is there (tiny has no CLIP adapters)
        assert any(name.startswith(prefix) for name in trainable), prefix
    frozen = {n for n, _ in paper_frozen_tiny.named_parameters()} - trainable
    for prefix in ("llm.model.layers.", "llm.model.norm.", "global_encoder.clip.", "grounding_encoder.vision.layers.0.",
                   "grounding_encoder.vision.neck.", "box_decoder.no_mask_embed.", "box_decoder.image_positional_embedding."):
        assert any(n.startswith(prefix) for n in frozen) and not any(n.startswith(prefix) for n in trainable), prefix
    # query mode never runs SAM's mask upscaling, hypernetworks or IoU head: frozen in every mode
    assert not any("output_hypernetworks_mlps" in n or "iou_prediction_head" in n or "upscale" in n for n in trainable)


def test_frozen_weights_do_not_move_in_an_optimiser_step(paper_frozen_tiny):
    model = paper_frozen_tiny
    frames, caption, phrases, boxes = make_clip()
    batch = model.processor.collate([model.processor(frames, caption, phrases, boxes=boxes)])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    model(batch).loss.backward()
    touched = {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    trainable = _trainable(model)
    assert touched <= trainable
    for name, parameter in model.named_parameters():
        moved = not torch.equal(parameter.detach(), before[name])
        if name in touched:
            assert moved, name
        elif name not in trainable:
            assert not moved, name
    # at alpha = 0 an adapter's conv has no gradient yet, but alpha itself does
    assert all(n in touched for n in trainable if n.endswith(".alpha"))
    with torch.no_grad():  # undo, the fixture is shared
        for name, parameter in model.named_parameters():
            parameter.copy_(before[name])


def test_unfreeze_off_freezes_decoder_and_projectors_and_adapters_can_be_removed():
    model = GroveModel(GroveConfig.tiny(freezing="paper", unfreeze=False, sam_adapters=False, box_readout="query_mlp"))
    trainable = _trainable(model)
    assert not any(n.startswith(("box_decoder.", "vl_projector.", "lq_projector.")) for n in trainable)
    assert any(n.startswith("box_head.") for n in trainable) and any(n.startswith("llm.lm_head.") for n in trainable)
    assert len(model.grounding_encoder.adapters) == 0


def test_full_freezing_trains_everything_that_runs(tiny_model):
    trainable = _trainable(tiny_model)
    assert any(n.startswith("llm.model.layers.") for n in trainable) and any(n.startswith("global_encoder.clip.") for n in trainable)
    unused = {"global_encoder.clip.post_layernorm.weight", "box_decoder.mask_decoder.iou_prediction_head.proj_in.weight"}
    assert not unused & trainable
    no_objectness = GroveModel(GroveConfig.tiny(use_objectness=False))
    assert not any(n.startswith("objectness_head.") for n in _trainable(no_objectness))
