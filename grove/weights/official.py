"""The official GROVE / GLaMM state-dict names, mapped onto this project's (official_interop.md).

Only this module knows the official names. `map_name` turns one official key into a `Mapping`: the
project's key and how the tensor changes on the way (`Transform`), or a `Drop` with the reason.
A key that no rule knows is an error: an unknown layout is never half-imported.

Official -> project (prefixes):
    model.embed_tokens, lm_head, model.layers.*, model.norm      llm.model.embed_tokens, llm.lm_head, ...
    model.vision_tower.vision_tower.vision_model.*               global_encoder.clip.*
        encoder.adapters.k.{conv3d,alpha}                        global_encoder.adapters.{3k}.{conv,alpha}
    model.mm_projector.{0,2}                                     vl_projector.{0,2}
    model.text_hidden_fcs.0.{0,2}                                lq_projector.{0,2}
    model.grounding_encoder.image_encoder.*  (SAM's own names)   grounding_encoder.vision.*  (transformers' SAM names)
        adapters.k                                               grounding_encoder.adapters.{global block k}
    model.grounding_encoder.prompt_encoder.{no_mask_embed, pe_layer.positional_encoding_gaussian_matrix}
                                                                 box_decoder.{no_mask_embed, image_positional_embedding.positional_embedding}
    model.grounding_encoder.mask_decoder.*                       box_decoder.mask_decoder.* (transformers' names)
        bbox_prediction_head.{0,2}, temporal_objectness_head     box_head.mlp.{0,2}, objectness_head.linear
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

CLIP = "model.vision_tower.vision_tower.vision_model."
SAM = "model.grounding_encoder.image_encoder."
PROMPT = "model.grounding_encoder.prompt_encoder."
DECODER = "model.grounding_encoder.mask_decoder."

# official key prefix -> why GROVE does not need it
DROPPED = {
    "model.region_encoder.": "GLaMM's region encoder (MLVLROIQueryModule): GROVE never passes region boxes",
    PROMPT + "point_embeddings.": "SAM's point / box prompt embeddings: GROVE's only prompt is the LLM query",
    PROMPT + "not_a_point_embed.": "SAM's padding-point embedding: GROVE's only prompt is the LLM query",
    PROMPT + "mask_downscaling.": "SAM's mask-prompt encoder: GROVE prompts with no mask (no_mask_embed)",
    CLIP + "embeddings.position_ids": "a constant index buffer (arange), rebuilt by the model",
    "model.vision_tower.vision_tower.text_model.": "CLIP's text tower: GROVE uses the vision tower only",
}
ROTARY = re.compile(r"^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$")
ROTARY_REASON = "LLaMA's rotary frequencies: recomputed from the config (rope_theta)"


@dataclass(frozen=True)
class Transform:
    """How a tensor changes between the official and the project model. `kind` is recorded in the report."""

    kind: str  # "copy", "resize_abs_pos", "resize_rel_pos", "extend_vocab"
    apply: Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]


@dataclass(frozen=True)
class Mapping:
    source: str
    target: str
    transform: str = "copy"


@dataclass(frozen=True)
class Drop:
    source: str
    reason: str


class UnknownKeyError(KeyError):
    pass


def _clip(rest: str) -> str:
    match = re.fullmatch(r"encoder\.adapters\.(\d+)\.(conv3d\.(weight|bias)|alpha)", rest)
    if match:
        layer = 3 * int(match.group(1))  # the official adapter k follows CLIP layer 3k (idx % 3 == 0)
        return f"global_encoder.adapters.{layer}." + ("alpha" if match.group(2) == "alpha" else f"conv.{match.group(3)}")
    return "global_encoder.clip." + rest


_SAM_BLOCK = {"norm1": "layer_norm1", "norm2": "layer_norm2"}
_SAM_NECK = {"0": "conv1", "1": "layer_norm1", "2": "conv2", "3": "layer_norm2"}


def _sam(rest: str, global_blocks: list[int]) -> tuple[str, str]:
    if rest == "pos_embed":
        return "grounding_encoder.vision.pos_embed", "resize_abs_pos"
    if rest.startswith("patch_embed.proj."):
        return "grounding_encoder.vision.patch_embed.projection." + rest.split(".")[-1], "copy"
    match = re.fullmatch(r"blocks\.(\d+)\.(\w+)\.(.+)", rest)
    if match:
        block, part, tail = match.groups()
        if part == "attn" and tail in ("rel_pos_h", "rel_pos_w"):
            return f"grounding_encoder.vision.layers.{block}.attn.{tail}", "resize_rel_pos"
        return f"grounding_encoder.vision.layers.{block}.{_SAM_BLOCK.get(part, part)}.{tail}", "copy"
    match = re.fullmatch(r"neck\.(\d)\.(weight|bias)", rest)
    if match:
        return f"grounding_encoder.vision.neck.{_SAM_NECK[match.group(1)]}.{match.group(2)}", "copy"
    match = re.fullmatch(r"adapters\.(\d+)\.(conv3d\.(weight|bias)|alpha)", rest)
    if match:
        k = int(match.group(1))
        if k >= len(global_blocks):
            raise UnknownKeyError(f"{SAM}{rest}: adapter {k}, but the encoder has {len(global_blocks)} global blocks")
        tail = "alpha" if match.group(2) == "alpha" else f"conv.{match.group(3)}"
        return f"grounding_encoder.adapters.{global_blocks[k]}.{tail}", "copy"
    raise UnknownKeyError(SAM + rest)


_MLP3 = {"0": "proj_in", "1": "layers.0", "2": "proj_out"}  # SAM's 3-layer MLP -> transformers' SamFeedForward


def _decoder(rest: str) -> str:
    if rest.startswith("bbox_prediction_head."):
        return "box_head.mlp." + rest[len("bbox_prediction_head."):]
    if rest.startswith("temporal_objectness_head."):
        return "objectness_head.linear." + rest[len("temporal_objectness_head."):]
    target = "box_decoder.mask_decoder."
    match = re.fullmatch(r"transformer\.layers\.(\d+)\.norm(\d)\.(weight|bias)", rest)
    if match:
        return target + f"transformer.layers.{match.group(1)}.layer_norm{match.group(2)}.{match.group(3)}"
    if rest.startswith("transformer.norm_final_attn."):
        return target + "transformer.layer_norm_final_attn." + rest.split(".")[-1]
    match = re.fullmatch(r"output_upscaling\.(\d)\.(weight|bias)", rest)
    if match:
        name = {"0": "upscale_conv1", "1": "upscale_layer_norm", "3": "upscale_conv2"}.get(match.group(1))
        if name is None:
            raise UnknownKeyError(DECODER + rest)
        return target + f"{name}.{match.group(2)}"
    match = re.fullmatch(r"(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d)\.(weight|bias)", rest)
    if match:
        return target + f"{match.group(1)}.{_MLP3[match.group(2)]}.{match.group(3)}"
    if rest.startswith(("transformer.", "iou_token.", "mask_tokens.")):
        return target + rest
    raise UnknownKeyError(DECODER + rest)


def map_name(name: str, global_blocks: list[int]) -> Mapping | Drop:
    """One official key -> Mapping (project key, transform kind) or Drop (reason). Raises UnknownKeyError."""
    for prefix, reason in DROPPED.items():
        if name.startswith(prefix):
            return Drop(name, reason)
    if ROTARY.match(name):
        return Drop(name, ROTARY_REASON)
    if name in ("model.embed_tokens.weight", "lm_head.weight"):
        return Mapping(name, "llm.model.embed_tokens.weight" if name.startswith("model.") else "llm.lm_head.weight", "extend_vocab")
    if name.startswith(("model.layers.", "model.norm.")):
        return Mapping(name, "llm." + name)
    if name.startswith(CLIP):
        return Mapping(name, _clip(name[len(CLIP):]))
    match = re.fullmatch(r"model\.mm_projector\.([02])\.(weight|bias)", name)
    if match:
        return Mapping(name, f"vl_projector.{match.group(1)}.{match.group(2)}")
    match = re.fullmatch(r"model\.text_hidden_fcs\.0\.([02])\.(weight|bias)", name)
    if match:
        return Mapping(name, f"lq_projector.{match.group(1)}.{match.group(2)}")
    if name.startswith(SAM):
        target, transform = _sam(name[len(SAM):], global_blocks)
        return Mapping(name, target, transform)
    if name == PROMPT + "no_mask_embed.weight":
        return Mapping(name, "box_decoder.no_mask_embed.weight")
    if name == PROMPT + "pe_layer.positional_encoding_gaussian_matrix":
        return Mapping(name, "box_decoder.image_positional_embedding.positional_embedding")
    if name.startswith(DECODER):
        return Mapping(name, _decoder(name[len(DECODER):]))
    raise UnknownKeyError(name)


# ------------------------------------------------------------------------------------ transforms
def resize_abs_pos(tensor: torch.Tensor, target_shape: tuple[int, ...]) -> torch.Tensor:
    """SAM's absolute position embedding (1, g, g, C) to another grid: bicubic, align_corners=False,
    as GROVE's train.py `resize_abs_pos_embedding` does from GLaMM's 1024 px (64x64) to 512 px (32x32)."""
    if tuple(tensor.shape) == tuple(target_shape):
        return tensor
    grid = target_shape[1:3]
    resized = F.interpolate(tensor.float().permute(0, 3, 1, 2), size=grid, mode="bicubic", align_corners=False)
    return resized.permute(0, 2, 3, 1).to(tensor.dtype)


def resize_rel_pos(tensor: torch.Tensor, target_shape: tuple[int, ...]) -> torch.Tensor:
    """A global block's relative position embedding (2g - 1, C) to another length: bicubic along the
    length with align_corners=True, as GROVE's `resize_rel_pos_embedding` (127 -> 63)."""
    if tuple(tensor.shape) == tuple(target_shape):
        return tensor
    resized = F.interpolate(tensor.float().T[None, :, :, None], size=(target_shape[0], 1), mode="bicubic", align_corners=True)
    return resized[0, :, :, 0].T.contiguous().to(tensor.dtype)


def extend_vocab(tensor: torch.Tensor, target_shape: tuple[int, ...]) -> torch.Tensor:
    """Embedding / lm_head rows for tokens the source vocabulary lacks: the mean of the existing rows.
    transformers 4.46's `resize_token_embeddings` (what GROVE's train.py calls) samples them from
    N(mean, 1e-9 * covariance), i.e. the mean to within ~1e-5."""
    rows = target_shape[0]
    if tensor.shape[0] == rows:
        return tensor
    if tensor.shape[0] > rows or tensor.shape[1:] != tuple(target_shape[1:]):
        raise ValueError(f"cannot extend a {tuple(tensor.shape)} vocabulary matrix to {tuple(target_shape)}")
    mean = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
    return torch.cat([tensor, mean.expand(rows - tensor.shape[0], -1)], dim=0)


TRANSFORMS: dict[str, Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]] = {
    "copy": lambda tensor, _shape: tensor,
    "resize_abs_pos": resize_abs_pos,
    "resize_rel_pos": resize_rel_pos,
    "extend_vocab": extend_vocab,
}


def transformed_shape(kind: str, source: tuple[int, ...], target: tuple[int, ...]) -> tuple[int, ...] | None:
    """The shape a transform gives a source tensor of `source` shape for a `target` slot, or None if it cannot."""
    if kind == "copy":
        return source
    if kind == "resize_abs_pos":
        return target if len(source) == 4 and source[0] == 1 and source[3] == target[3] else None
    if kind == "resize_rel_pos":
        return target if len(source) == 2 and source[1] == target[1] else None
    if kind == "extend_vocab":
        return target if len(source) == 2 and source[1] == target[1] and source[0] <= target[0] else None
    raise ValueError(f"unknown transform {kind!r}")


# ------------------------------------------------------------------------------------ shapes -> config
def sam_global_blocks(shapes: dict[str, tuple[int, ...]]) -> list[int]:
    """The global-attention blocks of an official SAM ViT: those whose relative position table spans the
    whole grid (2g - 1 rows; windowed blocks span 2w - 1)."""
    grid = shapes[SAM + "pos_embed"][1]
    blocks = sorted({int(m.group(1)) for n in shapes if (m := re.match(re.escape(SAM) + r"blocks\.(\d+)\.attn\.rel_pos_h$", n))})
    return [b for b in blocks if shapes[f"{SAM}blocks.{b}.attn.rel_pos_h"][0] == 2 * grid - 1]


def _count(shapes: dict[str, tuple[int, ...]], pattern: str) -> int:
    found = {int(m.group(1)) for n in shapes if (m := re.match(pattern, n))}
    return max(found) + 1 if found else 0


def clip_dims(shapes: dict[str, tuple[int, ...]], prefix: str = CLIP) -> dict:
    """CLIPVisionConfig fields read off an official (or transformers CLIPVisionModel) state dict. The
    head count is not in the shapes: CLIP ViTs use 64-dim heads (ViT-B/16 12 x 64, ViT-L/14 16 x 64)."""
    patch = shapes[prefix + "embeddings.patch_embedding.weight"]
    hidden, size = patch[0], patch[2]
    positions = shapes[prefix + "embeddings.position_embedding.weight"][0]
    grid = int(round((positions - 1) ** 0.5))
    return dict(
        hidden_size=hidden,
        intermediate_size=shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0],
        num_hidden_layers=_count(shapes, re.escape(prefix) + r"encoder\.layers\.(\d+)\."),
        num_attention_heads=max(1, hidden // 64),
        image_size=grid * size,
        patch_size=size,
        hidden_act="quick_gelu",
    )


def sam_dims(shapes: dict[str, tuple[int, ...]], image_size: int) -> dict:
    """SamVisionConfig fields of an official SAM ViT at `image_size` input (the head count from the
    relative position tables' width: the head dimension)."""
    patch = shapes[SAM + "patch_embed.proj.weight"]
    hidden = patch[0]
    global_blocks = sam_global_blocks(shapes)
    layers = _count(shapes, re.escape(SAM) + r"blocks\.(\d+)\.")
    windowed = [b for b in range(layers) if b not in global_blocks]
    window = (shapes[f"{SAM}blocks.{windowed[0]}.attn.rel_pos_h"][0] + 1) // 2 if windowed else 14
    return dict(
        hidden_size=hidden,
        output_channels=shapes[SAM + "neck.0.weight"][0],
        num_hidden_layers=layers,
        num_attention_heads=hidden // shapes[f"{SAM}blocks.0.attn.rel_pos_h"][1],
        image_size=image_size,
        patch_size=patch[2],
        window_size=window,
        global_attn_indexes=global_blocks,
        mlp_ratio=shapes[f"{SAM}blocks.0.mlp.lin1.weight"][0] / hidden,
        num_pos_feats=shapes[PROMPT + "pe_layer.positional_encoding_gaussian_matrix"][1],
        initializer_range=0.02,
    )


def decoder_dims(shapes: dict[str, tuple[int, ...]], num_heads: int = 8) -> dict:
    """SamMaskDecoderConfig fields; the official TwoWayTransformer has 8 heads (not in the shapes)."""
    return dict(
        hidden_size=shapes[DECODER + "iou_token.weight"][1],
        mlp_dim=shapes[DECODER + "transformer.layers.0.mlp.lin1.weight"][0],
        num_hidden_layers=_count(shapes, re.escape(DECODER) + r"transformer\.layers\.(\d+)\."),
        num_attention_heads=num_heads,
        iou_head_hidden_dim=shapes[DECODER + "iou_prediction_head.layers.0.weight"][0],
    )


LLAMA_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "rms_norm_eps", "rope_theta", "max_position_embeddings", "hidden_act")


def llm_dims(config: dict, shapes: dict[str, tuple[int, ...]]) -> dict:
    """LlamaConfig fields from the checkpoint's config.json (the head counts are not in the shapes)."""
    dims = {k: config[k] for k in LLAMA_FIELDS if k in config}
    if "num_attention_heads" not in dims:
        raise ValueError("config.json lacks num_attention_heads (the LLaMA head count is not in the weights)")
    dims.setdefault("num_key_value_heads", dims["num_attention_heads"])
    dims["hidden_size"] = shapes["model.embed_tokens.weight"][1]
    dims["intermediate_size"] = shapes["model.layers.0.mlp.gate_proj.weight"][0]
    dims["num_hidden_layers"] = _count(shapes, r"model\.layers\.(\d+)\.")
    dims["vocab_size"] = shapes["model.embed_tokens.weight"][0]
    dims["tie_word_embeddings"] = False
    return dims
