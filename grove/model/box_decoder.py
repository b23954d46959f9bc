"""The box decoder (grove_spec 1.6): SAM's two-way transformer run with the LLM query as a sparse prompt.

Each (frame, phrase) pair is decoded independently: its tokens are SAM's output tokens ([iou, 4
masks] for SAM; [object score, iou, 4 masks] for SAM2) followed by the single query token, against
that frame's grounding feature plus SAM's `no_mask_embed` (the dense prompt) and SAM's dense
random-Fourier image positional encoding. transformers' `SamMaskDecoder.forward` always runs the
mask upscaling and hypernetworks that query mode never uses, so this module calls the decoder's own
`transformer` (the `SamTwoWayTransformer` / `Sam2TwoWayTransformer`) directly with those tokens and
returns the query token's output. The phrases of a frame go in as SAM's `point_batch` dimension,
whose attention never mixes points, so they stay independent.

With `readout="mask"` (config.box_readout) the decoder also returns SAM's single-mask output for
each pair, computed as `SamMaskDecoder` does with `multimask_output=False` (the transformer's image
output upscaled 4x by two transposed convs, dotted with hypernetwork 0 of mask token 0), with two
changes: the hypernetwork reads the mask token's output plus the query itself (a residual of the
prompt: from random weights the query reaches the mask token only through attention that starts
uniform), and optional stride-4 `PixelFeatures` are added after the second transposed conv, where
SAM2 adds its `conv_s0` high-resolution features. `mask_to_box` turns the mask logits into a
normalised cxcywh box of the frame (the mask covers the zero-padded SAM canvas; `content_extent`
finds the frame's part of it, as SAM's `postprocess_masks` crops to the unpadded input size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DecoderOutput:
    query: torch.Tensor  # (N, P, C): the query token's output
    masks: torch.Tensor | None = None  # (N, P, 4s, 4s) mask logits on the padded canvas (mask readout)


class PixelFeatures(nn.Module):
    """Stride-`stride` features of the grounding pixels for the mask path (SAM2's `conv_s0` level):
    a patchifying conv, GELU, and a 1x1 conv to the upscaled embedding's width."""

    def __init__(self, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.layers = nn.Sequential(
            nn.Conv2d(3, 2 * out_channels, kernel_size=stride, stride=stride),
            nn.GELU(),
            nn.Conv2d(2 * out_channels, out_channels, kernel_size=1),
        )

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, 3, S, S) -> (N, out_channels, S/stride, S/stride)."""
        return self.layers(pixels.to(self.layers[0].weight.dtype))


class BoxDecoder(nn.Module):
    def __init__(
        self,
        mask_decoder: nn.Module,
        no_mask_embed: nn.Embedding,
        image_positional_embedding: nn.Module,
        feature_size: int,
        kind: str = "sam",
        readout: str = "query_mlp",
        pixel_features: PixelFeatures | None = None,
    ) -> None:
        super().__init__()
        if kind not in ("sam", "sam2"):
            raise ValueError(f"unknown decoder kind {kind!r}")
        if readout not in ("query_mlp", "mask"):
            raise ValueError(f"unknown box readout {readout!r}")
        if pixel_features is not None and readout != "mask":
            raise ValueError("pixel features feed the mask path: they need readout='mask'")
        self.mask_decoder = mask_decoder
        self.no_mask_embed = no_mask_embed
        self.image_positional_embedding = image_positional_embedding
        self.feature_size = feature_size
        self.kind = kind
        self.readout = readout
        self.pixel_features = pixel_features

    @property
    def dim(self) -> int:
        return self.mask_decoder.hidden_size

    @property
    def mask_token_index(self) -> int:
        """Position of mask token 0 (SAM's single-mask output) among the output tokens."""
        return 2 if self.kind == "sam2" else 1

    def unused_parameter_prefixes(self) -> list[str]:
        """Kept for weight loading, never run: everything past the transformer in query mode; the
        multimask hypernetworks and score heads in mask mode."""
        decoder = self.mask_decoder
        if self.readout == "mask":
            names = [f"output_hypernetworks_mlps.{i}." for i in range(1, len(decoder.output_hypernetworks_mlps))]
            names.append("iou_prediction_head.")
        else:
            names = ["upscale_conv1.", "upscale_conv2.", "upscale_layer_norm.", "output_hypernetworks_mlps.", "iou_prediction_head."]
        if self.kind == "sam2":
            names += ["conv_s0.", "conv_s1.", "pred_obj_score_head."]
        return [f"mask_decoder.{n}" for n in names]

    def output_tokens(self) -> torch.Tensor:
        decoder = self.mask_decoder
        tokens = [decoder.iou_token.weight, decoder.mask_tokens.weight]
        if self.kind == "sam2":
            tokens.insert(0, decoder.obj_score_token.weight)
        return torch.cat(tokens, dim=0)

    def image_positional_embeddings(self) -> torch.Tensor:
        """(1, C, s, s) dense positional encoding of the feature grid (SamModel.get_image_wide_positional_embeddings)."""
        size = self.feature_size
        weight = self.image_positional_embedding.positional_embedding
        grid = torch.ones((size, size), device=weight.device, dtype=weight.dtype)
        y_embed = (grid.cumsum(dim=0) - 0.5) / size
        x_embed = (grid.cumsum(dim=1) - 0.5) / size
        encoding = self.image_positional_embedding(torch.stack([x_embed, y_embed], dim=-1))
        return encoding.permute(2, 0, 1).unsqueeze(0)

    def forward(self, features: torch.Tensor, queries: torch.Tensor, pixels: torch.Tensor | None = None) -> DecoderOutput:
        """features (N, C, s, s) per frame, queries (N, P, C) per frame [, pixels (N, 3, S, S) for
        pixel features] -> the query outputs (N, P, C) and, in mask mode, mask logits (N, P, 4s, 4s)."""
        frames, phrases = queries.shape[:2]
        if features.shape[0] != frames:
            raise ValueError(f"{features.shape[0]} frame features for {frames} query sets")
        output_tokens = self.output_tokens().to(queries.dtype)
        tokens = torch.cat(
            [output_tokens.expand(frames, phrases, -1, -1), queries.unsqueeze(2)], dim=2
        )  # (N, P, k+1, C)
        image = features + self.no_mask_embed.weight.reshape(1, -1, 1, 1).to(features.dtype)
        image = image.repeat_interleave(phrases, dim=0)
        position = self.image_positional_embeddings().to(features.dtype).expand(image.shape[0], -1, -1, -1)
        hidden, image_out = self.mask_decoder.transformer(
            point_embeddings=tokens,
            image_embeddings=image,
            image_positional_embeddings=position,
            attention_similarity=None,
        )
        if self.readout != "mask":
            return DecoderOutput(hidden[:, :, -1, :])
        mask_token = hidden[:, :, self.mask_token_index, :] + queries
        masks = self._masks(image_out, mask_token, pixels)
        return DecoderOutput(hidden[:, :, -1, :], masks)

    def _masks(self, image_out: torch.Tensor, mask_token: torch.Tensor, pixels: torch.Tensor | None) -> torch.Tensor:
        """SamMaskDecoder's upscaling and hypernetwork 0: image_out (N*P, 1, s*s, C), mask_token (N, P, C)."""
        decoder = self.mask_decoder
        frames, phrases, channels = mask_token.shape
        size = self.feature_size
        image = image_out.transpose(2, 3).reshape(frames * phrases, channels, size, size)
        upscaled = decoder.activation(decoder.upscale_layer_norm(decoder.upscale_conv1(image)))
        upscaled = decoder.upscale_conv2(upscaled)
        if self.pixel_features is not None:
            if pixels is None:
                raise ValueError("this decoder reads pixel features: pass the grounding pixels")
            upscaled = upscaled + self.pixel_features(pixels).to(upscaled.dtype).repeat_interleave(phrases, dim=0)
        upscaled = decoder.activation(upscaled)
        hyper = decoder.output_hypernetworks_mlps[0](mask_token)  # (N, P, C/8)
        side = upscaled.shape[-1]
        upscaled = upscaled.reshape(frames, phrases, upscaled.shape[1], side * side)
        return (hyper.unsqueeze(2) @ upscaled).reshape(frames, phrases, side, side)


def content_extent(pixels: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) SAM-preprocessed frames -> (N, 2): the width and height fractions of the canvas
    that the frame fills. SAM pads with zeros after normalising, and a normalised pixel is never
    exactly zero in all three channels (the means are not integers), so the last row / column with
    a non-zero value ends the frame."""
    size = pixels.shape[-1]
    nonzero = pixels.detach().ne(0).any(dim=1)  # (N, S, S)
    index = torch.arange(1, size + 1, device=pixels.device, dtype=torch.float32)
    width = (nonzero.any(dim=1).float() * index).amax(dim=-1)
    height = (nonzero.any(dim=2).float() * index).amax(dim=-1)
    extent = torch.stack([width, height], dim=-1) / size
    # an all-zero frame (no content found) counts as a full canvas rather than an empty one
    return torch.where(extent > 0, extent, torch.ones_like(extent))


def mask_cell_centres(extent: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Centres of the mask cells in frame-normalised units: xs (N, side), ys (N, side); > 1 is padding."""
    steps = (torch.arange(side, device=extent.device, dtype=torch.float32) + 0.5) / side
    return steps[None, :] / extent[:, :1], steps[None, :] / extent[:, 1:]


def mask_to_box(mask_logits: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """(N, P, H, W) mask logits, (N, 2) extent -> (N, P, 4) normalised cxcywh of the frame.

    p = softmax of the logits over the frame's cells (padding excluded); the centre is the mean of
    p and each side is sqrt(12 var + cell^2), the side of a uniform box with p's variance (the cell
    term makes a one-cell mask one cell wide). A mask that is uniform over a box gives that box.
    """
    frames, phrases, height, width = mask_logits.shape
    xs, ys = mask_cell_centres(extent, width)
    inside = (ys[:, :, None] < 1) & (xs[:, None, :] < 1)  # (N, H, W)
    logits = mask_logits.float().masked_fill(~inside[:, None], float("-inf"))
    p = logits.flatten(2).softmax(dim=-1).reshape(frames, phrases, height, width)
    p_x, p_y = p.sum(dim=2), p.sum(dim=3)  # marginals (N, P, W), (N, P, H)
    xs, ys = xs[:, None, :], ys[:, None, :]
    cx, cy = (p_x * xs).sum(-1), (p_y * ys).sum(-1)
    var_x = ((p_x * xs.square()).sum(-1) - cx.square()).clamp(min=0)
    var_y = ((p_y * ys.square()).sum(-1) - cy.square()).clamp(min=0)
    cell_w, cell_h = 1.0 / (width * extent[:, 0:1]), 1.0 / (height * extent[:, 1:2])
    # a mask spread over the whole frame would read a little wider than the frame: clamp to it
    w = (12 * var_x + cell_w.square()).sqrt().clamp(max=1.0)
    h = (12 * var_y + cell_h.square()).sqrt().clamp(max=1.0)
    return torch.stack([cx, cy, w, h], dim=-1).to(mask_logits.dtype)
