"""Spatio-temporal adapters (grove_spec 1.2, 1.5): `a(o) = o + tanh(alpha) * ReLU(Conv3d(o))`.

alpha is a scalar that starts at 0, so an adapter is the identity when created and a pretrained
backbone's behaviour is untouched until training moves alpha. The Conv3d runs over (time, height,
width) of the true token grid (the official CLIP adapters reshape 24x24 tokens to a 16x36 grid; see
grove_spec 1.2) with "same" padding and stride 1.

On the CPU the 3-D convolution is computed as a sum of 2-D convolutions over the temporal taps
(same weights, same result): PyTorch's CPU Conv3d has no fast kernel and is ~3x slower there, which
matters for the tiny model's training step. On other devices it is `F.conv3d`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv3d_same(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Stride-1 'same' Conv3d of x (B, C, T, H, W) with an odd kernel."""
    kt, kh, kw = weight.shape[2:]
    if x.device.type != "cpu":
        return F.conv3d(x, weight, bias, padding=(kt // 2, kh // 2, kw // 2))
    batch, _, frames, height, width = x.shape
    padded = F.pad(x, (0, 0, 0, 0, kt // 2, kt // 2))
    out = None
    for tap in range(kt):
        frames_in = padded[:, :, tap : tap + frames].transpose(1, 2).reshape(batch * frames, -1, height, width)
        term = F.conv2d(frames_in, weight[:, :, tap], None, padding=(kh // 2, kw // 2))
        out = term if out is None else out + term
    out = out.reshape(batch, frames, -1, height, width).transpose(1, 2)
    return out if bias is None else out + bias.view(1, -1, 1, 1, 1)


class SpatioTemporalAdapter(nn.Module):
    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"adapter kernel size must be odd for 'same' padding, got {kernel_size}")
        self.conv = nn.Conv3d(dim, dim, kernel_size, stride=1, padding=kernel_size // 2, bias=True)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W)."""
        return x + torch.tanh(self.alpha) * F.relu(conv3d_same(x, self.conv.weight, self.conv.bias))

    def forward_grid(self, tokens: torch.Tensor, num_frames: int) -> torch.Tensor:
        """tokens: (B*T, H, W, C), frames of a clip consecutive -> same layout, adapted across time."""
        bt, height, width, channels = tokens.shape
        video = tokens.reshape(bt // num_frames, num_frames, height, width, channels).permute(0, 4, 1, 2, 3)
        return self(video).permute(0, 2, 3, 4, 1).reshape(bt, height, width, channels)
