"""Shared fixtures for the model tests: one tiny model per session (random init, offline), clips made here."""

import numpy as np
import pytest
import torch

from grove.model import GroveConfig, GroveModel


@pytest.fixture(scope="session")
def tiny_model() -> GroveModel:
    torch.manual_seed(0)
    return GroveModel.from_config(GroveConfig.tiny())


def tiny_sam():
    """A seeded, tiny transformers SamModel (64 px, 8x8 features, decoder width 16) for decoder tests."""
    from transformers import SamConfig, SamModel

    torch.manual_seed(0)
    vision = dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2, image_size=64,
                  patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=8)
    config = SamConfig(
        vision_config=vision,
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16),
    )
    return SamModel(config).eval()


def make_clip(seed: int = 0, frames: int = 8, height: int = 96, width: int = 160):
    """Random frames with two boxed phrases: the first on every frame, the second on frames 2-4."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    boxes = np.full((frames, 2, 4), np.nan)
    boxes[:, 0] = [10, 10, 40, 30]
    boxes[2:5, 1] = [50, 20, 90, 60]
    caption = "A red circle moves left past a blue square."
    return pixels, caption, ["a blue square", "a red circle"], boxes
