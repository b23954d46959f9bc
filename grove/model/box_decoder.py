"""The box decoder (grove_spec 1.6): SAM's two-way transformer run with the LLM query as a sparse prompt.

Each (frame, phrase) pair is decoded independently: its tokens are SAM's output tokens ([iou, 4
masks] for SAM; [object score, iou, 4 masks] for SAM2) followed by the single query token, against
that frame's grounding feature plus SAM's `no_mask_embed` (the dense prompt) and SAM's dense
random-Fourier image positional encoding. transformers' `SamMaskDecoder.forward` always runs the
mask upscaling and hypernetworks that query mode never uses, so this module calls the decoder's own
`transformer` (the `SamTwoWayTransformer` / `Sam2TwoWayTransformer`) directly with those tokens and
returns the query token's output. The phrases of a frame go in as SAM's `point_batch` dimension,
whose attention never mixes points, so they stay independent.
"""

from __future__ import annotations

import torch
from torch import nn


class BoxDecoder(nn.Module):
    def __init__(
        self,
        mask_decoder: nn.Module,
        no_mask_embed: nn.Embedding,
        image_positional_embedding: nn.Module,
        feature_size: int,
        kind: str = "sam",
    ) -> None:
        super().__init__()
        if kind not in ("sam", "sam2"):
            raise ValueError(f"unknown decoder kind {kind!r}")
        self.mask_decoder = mask_decoder
        self.no_mask_embed = no_mask_embed
        self.image_positional_embedding = image_positional_embedding
        self.feature_size = feature_size
        self.kind = kind

    @property
    def dim(self) -> int:
        return self.mask_decoder.hidden_size

    def unused_parameter_prefixes(self) -> list[str]:
        """Mask upscaling, hypernetworks and score heads: kept for weight loading, never run in query mode."""
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

    def forward(self, features: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """features (N, C, s, s) per frame, queries (N, P, C) per frame -> query outputs (N, P, C)."""
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
        hidden, _ = self.mask_decoder.transformer(
            point_embeddings=tokens,
            image_embeddings=image,
            image_positional_embeddings=position,
            attention_similarity=None,
        )
        return hidden[:, :, -1, :]
