"""Build or load the transformers components of GROVE: LlamaForCausalLM, CLIPVisionModel, SamModel / Sam2Model.

With a `*_source` (a local folder or hub id in `save_pretrained` layout) and `pretrained=True` the
component's weights and architecture come from there; otherwise it is built from the config dicts
with random initialisation (under `torch.device("meta")` nothing is allocated). A pretrained SAM
whose input size differs from `grounding_image_size` gets its position embeddings resized
(encoders.resize_sam_position_embeddings); SAM2 interpolates its own on the fly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from grove.model.config import GroveConfig
from grove.model.encoders import resize_sam_position_embeddings

logger = logging.getLogger(__name__)


@dataclass
class SamParts:
    vision: nn.Module
    mask_decoder: nn.Module
    no_mask_embed: nn.Embedding
    image_positional_embedding: nn.Module
    no_memory_embedding: nn.Parameter | None = None


def _load_error(kind: str, source: str, exc: Exception) -> OSError:
    return OSError(f"cannot load the {kind} from {source!r} (a local folder or a reachable hub id): {exc}")


def torch_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(dtypes)}")
    return dtypes[name]


def build_llm(config: GroveConfig, vocab_size: int | None, pretrained: bool) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    if pretrained and config.llm_source:
        try:
            llm = LlamaForCausalLM.from_pretrained(
                config.llm_source, dtype=torch_dtype(config.dtype), attn_implementation=config.attn_implementation
            )
        except OSError as exc:
            raise _load_error("LLM", config.llm_source, exc) from exc
        if vocab_size is not None and llm.get_input_embeddings().weight.shape[0] != vocab_size:
            llm.resize_token_embeddings(vocab_size)
        return llm
    kwargs: dict[str, Any] = dict(config.llm)
    if vocab_size is not None:
        kwargs["vocab_size"] = vocab_size
    llm_config = LlamaConfig(**kwargs)
    llm_config._attn_implementation = config.attn_implementation
    return LlamaForCausalLM(llm_config)


def build_clip(config: GroveConfig, pretrained: bool) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    if pretrained and config.clip_source:
        try:
            clip = CLIPVisionModel.from_pretrained(config.clip_source, dtype=torch_dtype(config.dtype))
        except OSError as exc:
            raise _load_error("CLIP vision model", config.clip_source, exc) from exc
        if clip.config.image_size != config.global_image_size:
            raise ValueError(
                f"CLIP from {config.clip_source!r} takes {clip.config.image_size}px input, config.global_image_size is {config.global_image_size}"
            )
        return clip
    return CLIPVisionModel(CLIPVisionConfig(**config.clip))


def _sam_config(config: GroveConfig) -> Any:
    from transformers import SamConfig

    vision = dict(config.sam)
    vision["image_size"] = config.grounding_image_size
    patch = int(vision.get("patch_size", 16))
    prompt = dict(hidden_size=config.decoder_dim, image_size=config.grounding_image_size, patch_size=patch)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=dict(config.sam_decoder))


def _sam2_config(config: GroveConfig) -> Any:
    from transformers import Sam2Config

    spec = dict(config.sam2)
    backbone = dict(spec.pop("backbone"))
    backbone["image_size"] = [config.grounding_image_size, config.grounding_image_size]
    channels = list(reversed(backbone["embed_dim_per_stage"]))
    size = config.grounding_image_size
    vision = dict(
        backbone_config=dict(model_type="sam2_hiera_det_model", **backbone),
        backbone_channel_list=channels,
        backbone_feature_sizes=[[size // 4, size // 4], [size // 8, size // 8], [size // 16, size // 16]],
        **spec,
    )
    prompt = dict(hidden_size=config.decoder_dim, image_size=size, patch_size=16)
    return Sam2Config(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=dict(config.sam_decoder))


def sincos_2d(height: int, width: int, dim: int) -> torch.Tensor:
    """(height, width, dim) 2-D sine-cosine position code (MAE-style): half the channels for y, half for x."""
    if dim % 4:
        raise ValueError(f"sine-cosine position code needs a channel count divisible by 4, got {dim}")
    quarter = dim // 4
    frequencies = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    ys = torch.arange(height, dtype=torch.float32)[:, None] * frequencies[None, :]
    xs = torch.arange(width, dtype=torch.float32)[:, None] * frequencies[None, :]
    y_code = torch.cat([ys.sin(), ys.cos()], dim=-1)[:, None, :].expand(height, width, -1)
    x_code = torch.cat([xs.sin(), xs.cos()], dim=-1)[None, :, :].expand(height, width, -1)
    return torch.cat([y_code, x_code], dim=-1)


@torch.no_grad()
def _init_random_sam_positions(sam: nn.Module, kind: str) -> None:
    """Fix two position codes of a randomly initialised SAM / SAM2 so that boxes can be learnt from scratch.

    - HF's init leaves the ViT's absolute position embeddings at zero. The decoder reads box
      coordinates from the image features it attends to (its values carry no position code), so
      start them from a 2-D sine-cosine code instead.
    - HF's SamVisionConfig sets the random-Fourier image encoding's scale to hidden_size // 2 (the
      original SAM uses 1.0); at that scale the decoder's key position code is a per-cell hash.
    Pretrained weights replace both.
    """
    if kind == "sam":
        pos = sam.vision_encoder.pos_embed
        if pos is not None and pos.device.type != "meta":
            pos.copy_(sincos_2d(pos.shape[1], pos.shape[2], pos.shape[3])[None].to(pos.dtype))
        fourier = sam.shared_image_embedding.positional_embedding
        if fourier.device.type != "meta":
            fourier.normal_(0.0, 1.0)
        return
    pos = sam.vision_encoder.backbone.pos_embed
    if pos.device.type != "meta":
        pos.copy_(sincos_2d(pos.shape[2], pos.shape[3], pos.shape[1]).permute(2, 0, 1)[None].to(pos.dtype))


@torch.no_grad()
def _init_random_decoder(decoder: nn.Module) -> None:
    """Glorot-uniform Linear layers with zero bias, PyTorch's default conv init (config.decoder_init).

    transformers initialises every SAM Linear / conv with N(0, initializer_range=0.02): at the tiny
    decoder width (64) each layer then scales its input by ~0.16, and the mask logits of the
    hypernetwork . upscaled-embedding product start at ~1e-4, where the gradients vanish too.
    """
    if any(parameter.device.type == "meta" for parameter in decoder.parameters()):
        return  # nothing allocated (the paper build counts parameters on the meta device)
    for module in decoder.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            module.reset_parameters()


def build_sam(config: GroveConfig, pretrained: bool) -> SamParts:
    """SAM (or SAM2) split into the parts GROVE uses: vision encoder, mask decoder, dense prompt, image PE."""
    from transformers import Sam2Model, SamModel

    model_class = SamModel if config.grounding_encoder == "sam" else Sam2Model
    if pretrained and config.sam_source:
        try:
            sam = model_class.from_pretrained(config.sam_source, dtype=torch_dtype(config.dtype))
        except OSError as exc:
            raise _load_error(config.grounding_encoder.upper(), config.sam_source, exc) from exc
        if config.grounding_encoder == "sam":
            native = sam.vision_encoder.config.image_size
            if native != config.grounding_image_size:
                logger.info("resizing SAM position embeddings from %dpx to %dpx input", native, config.grounding_image_size)
                resize_sam_position_embeddings(sam.vision_encoder, config.grounding_image_size)
    else:
        sam_config = _sam_config(config) if config.grounding_encoder == "sam" else _sam2_config(config)
        sam = model_class(sam_config)
        _init_random_sam_positions(sam, config.grounding_encoder)
        if config.decoder_init == "xavier":
            _init_random_decoder(sam.mask_decoder)
    if config.grounding_encoder == "sam":
        return SamParts(sam.vision_encoder, sam.mask_decoder, sam.prompt_encoder.no_mask_embed, sam.shared_image_embedding)
    return SamParts(
        sam.vision_encoder, sam.mask_decoder, sam.prompt_encoder.no_mask_embed, sam.shared_image_embedding, sam.no_memory_embedding
    )
