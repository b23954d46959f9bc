"""Projectors and heads (grove_spec 1.2, 1.4, 1.6), laid out like GLaMM's modules so weights map by index.

- VLProjector (`mm_projector`): Linear(C_clip -> D) -> GELU -> Linear(D -> D).
- LQProjector (`text_hidden_fcs`): Linear(D -> D) -> ReLU -> Linear(D -> C_dec) -> Dropout(0).
- BoxHead: Linear(C -> C) -> ReLU -> Linear(C -> 4) -> sigmoid: normalised (cx, cy, w, h).
- ObjectnessHead: Linear(C -> 1): one temporal-objectness logit per (frame, phrase).
"""

from __future__ import annotations

import torch
from torch import nn


class VLProjector(nn.Sequential):
    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))


class LQProjector(nn.Sequential):
    def __init__(self, llm_dim: int, decoder_dim: int, dropout: float = 0.0) -> None:
        super().__init__(nn.Linear(llm_dim, llm_dim), nn.ReLU(inplace=True), nn.Linear(llm_dim, decoder_dim), nn.Dropout(dropout))


class BoxHead(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).sigmoid()


class ObjectnessHead(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)
