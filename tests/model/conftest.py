"""Shared fixtures for the model tests: one tiny model per session (random init, offline), clips made here."""

import numpy as np
import pytest
import torch

from grove.model import GroveConfig, GroveModel


@pytest.fixture(scope="session")
def tiny_model() -> GroveModel:
    torch.manual_seed(0)
    return GroveModel.from_config(GroveConfig.tiny())


def make_clip(seed: int = 0, frames: int = 8, height: int = 96, width: int = 160):
    """Random frames with two boxed phrases: the first on every frame, the second on frames 2-4."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    boxes = np.full((frames, 2, 4), np.nan)
    boxes[:, 0] = [10, 10, 40, 30]
    boxes[2:5, 1] = [50, 20, 90, 60]
    caption = "A red circle moves left past a blue square."
    return pixels, caption, ["a blue square", "a red circle"], boxes
