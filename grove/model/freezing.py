"""Which parameters train (grove_spec 2.2, Table 6).

`freezing="paper"` (the paper's recipe): trainable are the spatio-temporal adapters (the CLIP ones only
with `train_clip_adapters`: the official tower runs under no_grad, so they never train), the SAM position
embeddings (interpolated to the working resolution), the box decoder (SAM's mask decoder), the box
and objectness heads, the VL and LQ projectors, and the LLM's `embed_tokens` and `lm_head`. Frozen:
the CLIP and SAM backbones, SAM's prompt-encoder parts, every LLM transformer layer.
`unfreeze=False` (Table 6, "Unfreeze" off) also freezes the box decoder and both projectors.
`freezing="full"`: everything the forward pass uses trains (the tiny default: a randomly initialised
backbone is worthless frozen).
In every mode the parameters that the forward pass never uses (CLIP layers after the selected one,
SAM's mask upscaling / hypernetworks / IoU head in query mode, the box head in mask mode, SAM2's
unused FPN levels, the objectness head when objectness is off) are frozen: they would get no
gradient, which DDP rejects without find_unused_parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from grove.model.config import GroveConfig


@dataclass(frozen=True)
class FreezeSummary:
    trainable: int
    frozen: int
    trainable_names: tuple[str, ...]


def unused_parameter_prefixes(model: nn.Module, config: GroveConfig) -> list[str]:
    prefixes = [f"global_encoder.{p}" for p in model.global_encoder.unused_parameter_prefixes()]
    prefixes += [f"grounding_encoder.{p}" for p in model.grounding_encoder.unused_parameter_prefixes()]
    prefixes += [f"box_decoder.{p}" for p in model.box_decoder.unused_parameter_prefixes()]
    if not config.use_objectness:
        prefixes.append("objectness_head.")
    if config.box_readout == "mask":
        prefixes.append("box_head.")  # the box comes from the mask
    return prefixes


def paper_trainable_prefixes(model: nn.Module, config: GroveConfig) -> list[str]:
    prefixes = ["grounding_encoder.adapters.", "box_head.", "objectness_head.", "video_selector."]
    if config.train_clip_adapters:
        prefixes.append("global_encoder.adapters.")
    prefixes += [f"grounding_encoder.{name}" for name in model.grounding_encoder.position_parameter_names()]
    prefixes += ["llm.model.embed_tokens.", "llm.lm_head."]
    if config.unfreeze:
        prefixes += ["box_decoder.mask_decoder.", "box_decoder.pixel_features.", "vl_projector.", "lq_projector."]
    return prefixes


def _matches(name: str, prefixes: list[str]) -> bool:
    """A prefix ending in "." names a module; any other entry names one parameter exactly."""
    return any(name.startswith(p) if p.endswith(".") else name == p for p in prefixes)


def trainable_parameter_names(model: nn.Module, config: GroveConfig) -> set[str]:
    unused = unused_parameter_prefixes(model, config)
    names = {name for name, _ in model.named_parameters() if not _matches(name, unused)}
    if config.freezing == "full":
        return names
    wanted = paper_trainable_prefixes(model, config)
    return {name for name in names if _matches(name, wanted)}


def apply_freezing(model: nn.Module, config: GroveConfig) -> FreezeSummary:
    """Set requires_grad on every parameter of a GroveModel by `config.freezing` / `unfreeze`."""
    names = trainable_parameter_names(model, config)
    trainable = frozen = 0
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names)
        if name in names:
            trainable += parameter.numel()
        else:
            frozen += parameter.numel()
    return FreezeSummary(trainable, frozen, tuple(sorted(names)))
