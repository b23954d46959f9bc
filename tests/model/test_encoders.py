"""The video encoders against transformers' own forward passes, and SAM position-embedding resizing."""

import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel, SamConfig, SamModel

from grove.model.encoders import GlobalVideoEncoder, SamVideoEncoder, resize_sam_position_embeddings


def _clip() -> CLIPVisionModel:
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, image_size=32, patch_size=8)
    return CLIPVisionModel(config).eval()


def _sam_vision(image_size: int = 64):
    torch.manual_seed(0)
    vision = dict(
        hidden_size=32, output_channels=16, num_hidden_layers=4, num_attention_heads=2, image_size=image_size, patch_size=8,
        window_size=2, global_attn_indexes=[1, 3], num_pos_feats=8, initializer_range=0.02,
    )
    config = SamConfig(vision_config=vision, prompt_encoder_config=dict(hidden_size=16), mask_decoder_config=dict(hidden_size=16))
    sam = SamModel(config).eval()
    with torch.no_grad():  # non-zero position tables, so resizing them is visible
        sam.vision_encoder.pos_embed.normal_()
        for layer in sam.vision_encoder.layers:
            layer.attn.rel_pos_h.normal_()
            layer.attn.rel_pos_w.normal_()
    return sam.vision_encoder


def test_global_encoder_pools_clip_penultimate_patch_tokens():
    clip = _clip()
    encoder = GlobalVideoEncoder(clip, num_frames=4, video_pool=(2, 2, 2), select_layer=-2)
    pixels = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        ours = encoder(pixels)
        hidden = clip(pixels.flatten(0, 1), output_hidden_states=True).hidden_states[-2][:, 1:]
    grid = hidden.reshape(2, 4, 4, 4, 32).permute(0, 4, 1, 2, 3)  # (B, C, T, h, w)
    expected = F.adaptive_avg_pool3d(grid, (2, 2, 2)).flatten(2).transpose(1, 2)
    assert ours.shape == (2, 8, 32)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-5)
    # the layers after the selected one never run, so they are reported as unused
    assert encoder.unused_parameter_prefixes() == ["clip.encoder.layers.3.", "clip.post_layernorm."]


def test_clip_adapters_start_as_identity_and_receive_gradients():
    clip = _clip()
    plain = GlobalVideoEncoder(clip, num_frames=4, video_pool=(4, 2, 2))
    adapted = GlobalVideoEncoder(clip, num_frames=4, video_pool=(4, 2, 2), adapters=True, adapter_every=1)
    assert sorted(adapted.adapters) == ["0", "1", "2"]  # after each computed layer (every=1)
    pixels = torch.randn(1, 4, 3, 32, 32)
    out = adapted(pixels)
    torch.testing.assert_close(out, plain(pixels))
    out.pow(2).mean().backward()
    assert all(a.alpha.grad is not None and a.alpha.grad.abs().item() > 0 for a in adapted.adapters.values())


def test_sam_video_encoder_equals_sam_vision_encoder_at_init_and_adapts_after_global_blocks():
    vision = _sam_vision()
    encoder = SamVideoEncoder(vision, num_frames=4)
    assert sorted(encoder.adapters) == ["1", "3"]
    pixels = torch.randn(1, 4, 3, 64, 64)
    out = encoder(pixels)
    with torch.no_grad():
        expected = vision(pixels.flatten(0, 1)).last_hidden_state
    assert out.shape == (1, 4, 16, 8, 8)
    torch.testing.assert_close(out[0], expected, rtol=1e-4, atol=1e-5)
    out.pow(2).mean().backward()
    assert all(a.alpha.grad.abs().item() > 0 for a in encoder.adapters.values())


def test_resize_sam_position_embeddings_bicubic_and_trainable():
    vision = _sam_vision(image_size=64)
    old_abs = vision.pos_embed.detach().clone()
    old_rel = vision.layers[1].attn.rel_pos_h.detach().clone()
    old_window = vision.layers[0].attn.rel_pos_h.detach().clone()
    resize_sam_position_embeddings(vision, 32)
    expected_abs = F.interpolate(old_abs.permute(0, 3, 1, 2), size=(4, 4), mode="bicubic", align_corners=False)
    torch.testing.assert_close(vision.pos_embed.detach(), expected_abs.permute(0, 2, 3, 1))
    expected_rel = F.interpolate(old_rel[None, None], size=(7, old_rel.shape[1]), mode="bicubic", align_corners=True)[0, 0]
    torch.testing.assert_close(vision.layers[1].attn.rel_pos_h.detach(), expected_rel)
    assert vision.layers[1].attn.rel_pos_h.shape == (7, 16) and vision.layers[3].attn.rel_pos_w.shape == (7, 16)
    torch.testing.assert_close(vision.layers[0].attn.rel_pos_h.detach(), old_window)  # windowed blocks untouched
    assert isinstance(vision.pos_embed, torch.nn.Parameter) and vision.pos_embed.requires_grad
    assert vision.config.image_size == 32
    out = SamVideoEncoder(vision, num_frames=2)(torch.randn(1, 2, 3, 32, 32))
    assert out.shape == (1, 2, 16, 4, 4)
