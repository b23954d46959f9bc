"""The two video encoders, built on transformers' CLIP, SAM and SAM2 vision models.

Global encoder Ve (grove_spec 1.2): CLIP run frame by frame up to `hidden_states[select_layer]`
(the penultimate layer; later layers are never computed), patch tokens only, optional adapters after
every `adapter_every`-th layer (patch tokens only, CLS untouched; on the true grid, or on the raster
read as `adapter_rows` rows as the official code does), then AdaptiveAvgPool3d over (T, h, w) to
`video_pool`, flattened in (t, h, w) order.

Grounding encoder Vg (grove_spec 1.5): SAM's ViT run frame by frame with a spatio-temporal adapter
after each global-attention block, then the neck: (B, T, 256, h, w). The position embeddings live at
the working resolution: `resize_sam_position_embeddings` bicubically resizes pretrained ones (absolute
64x64 -> 32x32 with align_corners=False; the global blocks' relative ones 127 -> 63 with
align_corners=True) into new trainable parameters. With `grounding_encoder="sam2"` the Hiera
backbone of SAM2 takes SAM's place (adapters after its global-attention blocks); the decoder reads
the stride-16 FPN level plus SAM2's no-memory embedding, as SAM2 does for a single image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grove.model.adapters import SpatioTemporalAdapter


class GlobalVideoEncoder(nn.Module):
    def __init__(
        self,
        clip: nn.Module,
        num_frames: int,
        video_pool: tuple[int, int, int],
        select_layer: int = -2,
        adapters: bool = False,
        adapter_every: int = 3,
        kernel_size: int = 3,
        adapter_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.clip = clip
        self.num_frames = num_frames
        num_layers = len(clip.encoder.layers)
        # hidden_states[select_layer] is the output of layer num_layers + select_layer (0-based)
        self.num_computed_layers = num_layers + select_layer + 1
        if not 0 < self.num_computed_layers <= num_layers:
            raise ValueError(f"select_layer {select_layer} is out of range for a {num_layers}-layer CLIP")
        dim = clip.config.hidden_size
        self.adapters = nn.ModuleDict(
            {str(i): SpatioTemporalAdapter(dim, kernel_size) for i in range(0, self.num_computed_layers, adapter_every)}
            if adapters
            else {}
        )
        self.pool = nn.AdaptiveAvgPool3d(video_pool)
        self.grid = clip.config.image_size // clip.config.patch_size
        # the raster the adapters convolve: the true grid, or the official (rows, N / rows) reading
        rows = adapter_rows or self.grid
        self.adapter_raster = (rows, self.grid * self.grid // rows)

    def unused_parameter_prefixes(self) -> list[str]:
        """Layers after the selected one and the post-layernorm never run."""
        num_layers = len(self.clip.encoder.layers)
        return [f"clip.encoder.layers.{i}." for i in range(self.num_computed_layers, num_layers)] + ["clip.post_layernorm."]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, T, 3, S, S) -> video tokens (B, t*h*w, C) in (t, h, w) order."""
        batch, frames = pixels.shape[:2]
        hidden = self.clip.embeddings(pixels.flatten(0, 1).to(self.clip.embeddings.patch_embedding.weight.dtype))
        hidden = self.clip.pre_layrnorm(hidden)
        for index in range(self.num_computed_layers):
            hidden = self.clip.encoder.layers[index](hidden, None)
            if str(index) in self.adapters:
                cls_token, patches = hidden[:, :1], hidden[:, 1:]
                grid = patches.reshape(-1, *self.adapter_raster, patches.shape[-1])
                patches = self.adapters[str(index)].forward_grid(grid, frames).flatten(1, 2)
                hidden = torch.cat([cls_token, patches], dim=1)
        patches = hidden[:, 1:]
        video = patches.reshape(batch, frames, self.grid, self.grid, -1).permute(0, 4, 1, 2, 3)
        return self.pool(video).flatten(2).transpose(1, 2)


class SamVideoEncoder(nn.Module):
    def __init__(self, vision: nn.Module, num_frames: int, adapters: bool = True, kernel_size: int = 3) -> None:
        super().__init__()
        self.vision = vision
        self.num_frames = num_frames
        config = vision.config
        self.global_layers = [int(i) for i in config.global_attn_indexes]
        self.adapters = nn.ModuleDict(
            {str(i): SpatioTemporalAdapter(config.hidden_size, kernel_size) for i in self.global_layers} if adapters else {}
        )

    def position_parameter_names(self) -> list[str]:
        """The (interpolated) absolute and global-block relative position embeddings."""
        names = ["vision.pos_embed"]
        for index in self.global_layers:
            names += [f"vision.layers.{index}.attn.rel_pos_h", f"vision.layers.{index}.attn.rel_pos_w"]
        return names

    def unused_parameter_prefixes(self) -> list[str]:
        return []

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, T, 3, S, S) -> features (B, T, C, S/patch, S/patch)."""
        batch, frames = pixels.shape[:2]
        hidden = self.vision.patch_embed(pixels.flatten(0, 1).to(self.vision.pos_embed.dtype))
        hidden = hidden + self.vision.pos_embed
        for index, layer in enumerate(self.vision.layers):
            hidden = layer(hidden)
            if str(index) in self.adapters:
                hidden = self.adapters[str(index)].forward_grid(hidden, frames)
        features = self.vision.neck(hidden)
        return features.reshape(batch, frames, *features.shape[1:])


class Sam2VideoEncoder(nn.Module):
    def __init__(
        self, vision: nn.Module, no_memory_embedding: nn.Parameter, num_frames: int, adapters: bool = True, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.vision = vision
        self.no_memory_embedding = no_memory_embedding
        self.num_frames = num_frames
        backbone = vision.backbone
        self.global_blocks = [int(i) for i in backbone.config.global_attention_blocks]
        stride16_level = len(backbone.config.blocks_per_stage) - 2
        if stride16_level not in vision.config.fpn_top_down_levels:
            raise ValueError(f"SAM2 FPN must have a top-down connection at level {stride16_level} (fpn_top_down_levels)")
        self.adapters = nn.ModuleDict(
            {str(i): SpatioTemporalAdapter(backbone.blocks[i].dim_out, kernel_size) for i in self.global_blocks}
            if adapters
            else {}
        )

    def position_parameter_names(self) -> list[str]:
        return ["vision.backbone.pos_embed", "vision.backbone.pos_embed_window"]

    def unused_parameter_prefixes(self) -> list[str]:
        """Only the stride-16 FPN level feeds the box decoder; the stride-4 / 8 laterals serve mask heads."""
        return [f"vision.neck.convs.{i}." for i in range(2, len(self.vision.neck.convs))]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, T, 3, S, S) -> the stride-16 FPN level (B, T, C, S/16, S/16), as SAM2's image embedding."""
        batch, frames = pixels.shape[:2]
        backbone = self.vision.backbone
        hidden = backbone.patch_embed(pixels.flatten(0, 1).to(backbone.pos_embed.dtype))
        hidden = hidden + backbone._get_pos_embed(hidden.shape[1:3])
        stage_outputs = []
        for index, block in enumerate(backbone.blocks):
            hidden = block(hidden)
            if str(index) in self.adapters:
                hidden = self.adapters[str(index)].forward_grid(hidden, frames)
            if index in backbone.stage_ends:
                stage_outputs.append(hidden)
        convs = self.vision.neck.convs
        # SAM2's FPN: the stride-32 lateral, upsampled, is added to the stride-16 lateral (top-down level)
        top = convs[0](stage_outputs[-1].permute(0, 3, 1, 2))
        features = convs[1](stage_outputs[-2].permute(0, 3, 1, 2))
        features = features + F.interpolate(top.float(), scale_factor=2.0, mode="nearest").to(features.dtype)
        features = features + self.no_memory_embedding.reshape(1, -1, 1, 1)
        return features.reshape(batch, frames, *features.shape[1:])


@torch.no_grad()
def resize_sam_position_embeddings(vision: nn.Module, image_size: int) -> None:
    """Resize a SAM ViT's absolute and global relative position embeddings to `image_size` input, in place.

    The resized tensors become new nn.Parameters (so they are trained like the paper's); windowed
    blocks keep theirs. Updates the encoder's configured input size.
    """
    config = vision.config
    grid = image_size // config.patch_size
    if vision.pos_embed is not None and vision.pos_embed.shape[1] != grid:
        pos = vision.pos_embed.permute(0, 3, 1, 2).float()
        pos = F.interpolate(pos, size=(grid, grid), mode="bicubic", align_corners=False)
        vision.pos_embed = nn.Parameter(pos.permute(0, 2, 3, 1).to(vision.pos_embed.dtype))
    length = 2 * grid - 1
    for index in config.global_attn_indexes:
        attn = vision.layers[index].attn
        if not attn.use_rel_pos:
            continue
        for name in ("rel_pos_h", "rel_pos_w"):
            rel = getattr(attn, name)
            if rel.shape[0] == length:
                continue
            resized = F.interpolate(rel[None, None].float(), size=(length, rel.shape[1]), mode="bicubic", align_corners=True)
            setattr(attn, name, nn.Parameter(resized[0, 0].to(rel.dtype)))
    config.image_size = image_size
    vision.image_size = image_size
    vision.patch_embed.image_size = (image_size, image_size)
