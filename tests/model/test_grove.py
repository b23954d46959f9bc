"""GroveModel end to end: forward, generation, teacher-forced grounding, checkpoints, the paper build."""

import pytest
import torch

from grove.model import GroveConfig, GroveModel
from tests.model.conftest import make_clip


def _batch(model, seeds=(0,)):
    processor = model.processor
    samples = []
    for seed in seeds:
        frames, caption, phrases, boxes = make_clip(seed)
        samples.append(processor(frames, caption, phrases, boxes=boxes))
    return processor.collate(samples)


def test_generate_one_clip_or_a_batch(tiny_model):
    batch = _batch(tiny_model, seeds=(0, 1))
    tiny_model.eval()
    single = tiny_model.generate(batch["global_pixels"][0], max_new_tokens=6)
    both = tiny_model.generate(batch["global_pixels"], max_new_tokens=6)
    assert isinstance(single, str) and isinstance(both, list) and len(both) == 2
    assert both[0] == single
    ids = tiny_model.generate_ids(batch["global_pixels"], max_new_tokens=6)
    assert ids.shape == (2, 6)


def test_ground_teacher_forces_the_answer_like_forward(tiny_model):
    tiny_model.eval()
    batch = _batch(tiny_model)
    with torch.no_grad():
        out = tiny_model(batch)
    answer = batch["answers"][0]
    grounded = tiny_model.ground(batch["global_pixels"][0], batch["grounding_pixels"][0], answer)
    assert grounded.boxes.shape == (8, 2, 4) and grounded.objectness_logits.shape == (8, 2)
    assert grounded.phrases == ["a red circle", "a blue square"]
    torch.testing.assert_close(grounded.boxes, out.pred_boxes[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grounded.objectness_logits, out.objectness_logits[0], rtol=1e-4, atol=1e-4)
    by_ids = tiny_model.ground(batch["global_pixels"], batch["grounding_pixels"], tiny_model.processor.answer_ids(answer))
    assert by_ids.boxes.shape == (1, 8, 2, 4)
    torch.testing.assert_close(by_ids.boxes[0], grounded.boxes)
    assert ((grounded.boxes >= 0) & (grounded.boxes <= 1)).all()


def test_det_and_phrase_counts_must_agree(tiny_model):
    batch = _batch(tiny_model)
    batch["phrase_mask"] = batch["phrase_mask"][:, :1]
    with pytest.raises(ValueError, match="j-th \\[DET\\]"):
        tiny_model(batch)


def test_trainable_state_dict_round_trip_and_errors(tiny_model):
    state = {k: v.clone() for k, v in tiny_model.trainable_state_dict().items()}
    assert set(state) == set(tiny_model.trainable_parameter_names())
    other = GroveModel.from_config(GroveConfig.tiny(init_seed=1))
    name = "box_decoder.pixel_features.layers.0.weight"
    assert not torch.equal(other.state_dict()[name], state[name])
    assert other.load_trainable_state_dict(state) == []
    assert torch.equal(other.state_dict()[name], state[name])
    with pytest.raises(KeyError, match="lacks"):
        other.load_trainable_state_dict({name: state[name]})
    bias = "box_decoder.pixel_features.layers.2.bias"
    missing = other.load_trainable_state_dict({bias: state[bias]}, strict=False)
    assert name in missing and bias not in missing
    with pytest.raises(KeyError, match="this model lacks"):
        other.load_trainable_state_dict({"nope.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        other.load_trainable_state_dict({name: torch.zeros(3)}, strict=False)


def test_same_init_seed_gives_the_same_weights():
    a = GroveModel(GroveConfig.tiny(), tokenizer=None)
    b = GroveModel(GroveConfig.tiny(), tokenizer=None)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), name


def test_paper_profile_builds_on_meta_with_the_expected_sizes():
    with torch.device("meta"):
        model = GroveModel(GroveConfig.paper())
    count = lambda module: sum(p.numel() for p in module.parameters())
    assert count(model.llm) == pytest.approx(6.74e9, rel=0.01)  # Vicuna-7B
    assert count(model.global_encoder.clip) == pytest.approx(303.5e6, rel=0.01)  # CLIP ViT-L/14-336
    assert count(model.grounding_encoder.vision) == pytest.approx(632e6, rel=0.01)  # SAM ViT-H at 512 px
    assert count(model.grounding_encoder.adapters) == pytest.approx(177e6, rel=0.01)  # 4 x Conv3d 1280 -> 1280
    assert count(model.vl_projector) == 1024 * 4096 + 4096 + 4096 * 4096 + 4096
    assert count(model.lq_projector) == 4096 * 4096 + 4096 + 4096 * 256 + 256
    vision = model.grounding_encoder.vision
    assert vision.pos_embed.shape == (1, 32, 32, 1280)
    assert vision.layers[7].attn.rel_pos_h.shape == (63, 80) and vision.layers[6].attn.rel_pos_h.shape == (27, 80)
    assert model.config.num_video_tokens == 576 and model.config.decoder_dim == 256
    trainable = model.num_parameters(trainable_only=True)
    # adapters + decoder + heads + projectors + embed_tokens + lm_head + position tables
    assert 470e6 < trainable < 490e6
    assert not any(p.requires_grad for p in model.llm.model.layers.parameters())


def test_a_phrase_query_depends_only_on_the_text_before_its_det(tiny_model):
    tiny_model.eval()
    batch = _batch(tiny_model)
    g, d = batch["global_pixels"][0], batch["grounding_pixels"][0]
    first = tiny_model.ground(g, d, "<p> a red circle </p> [DET] moves past <p> a blue square </p> [DET].")
    same_prefix = tiny_model.ground(g, d, "<p> a red circle </p> [DET] waits near <p> a green cup </p> [DET].")
    other_phrase = tiny_model.ground(g, d, "<p> a red square </p> [DET] moves past <p> a blue square </p> [DET].")
    torch.testing.assert_close(same_prefix.boxes[:, 0], first.boxes[:, 0])
    assert not torch.allclose(same_prefix.boxes[:, 1], first.boxes[:, 1])
    assert not torch.allclose(other_phrase.boxes[:, 0], first.boxes[:, 0])
