"""`grove weights import`: an official GROVE or GLaMM checkpoint -> this project's full-weights checkpoint.

Sources (`kind`):
- "grove": the released checkpoint in the `grove_transformers` layout (`GroveForCausalLM.save_pretrained`:
  sharded safetensors or .bin, bf16, config.json, tokenizer files);
- "grove-train": the training-time state dict of the official `model/GROVE.py` (DeepSpeed's zero_to_fp32
  `.bin`, e.g. the released grove_pt_howtoground1m_ckpt.bin / grove_ft_iground_ckpt.bin), loaded as the
  official inference scripts load it: over GLaMM (`--like`, also giving config.json and the tokenizer)
  and the reloaded CLIP (`--clip`), so what the file lacks comes from them;
- "glamm": a GLaMM checkpoint (GLaMM-GranD-Pretrained, GLaMM-FullScope): GROVE's starting point. As the
  official train.py does when it pre-trains from GLaMM: SAM's position embeddings are resized from 1024 px
  to 512 px, the vocabulary gains `<vid_start>`, `<vid_end>`, `[DET]` (their rows start at the mean row),
  CLIP comes from `--clip` (the official code reloads it from `--vision_tower`) or from GLaMM's own tower,
  and the spatio-temporal adapters, the box head and the objectness head start fresh.
  `grounding_size` overrides the SAM input size (1024 keeps GLaMM's own position embeddings, untouched:
  what GLaMM's grounded conversation generation runs at, grove/model/glamm.py; stage-1 annotation).

Every source tensor is mapped (official.py) or dropped with its reason; every target tensor is loaded or
reported fresh (with how it was initialised); shapes are checked before anything is written. The source
is streamed shard by shard into output shards of at most `max_shard_bytes`, so memory stays near one
output shard, not the checkpoint size. The output is written to a temporary folder and renamed into
place: a killed import leaves no folder that looks finished.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from grove.io import atomic_write_json, atomic_write_text
from grove.model.components import torch_dtype
from grove.model.config import GroveConfig
from grove.model.store import DEFAULT_SHARD_BYTES, ShardWriter, copy_tokenizer_files
from grove.model.tokenizer import official_vocabulary, token_ids
from grove.weights import official
from grove.weights.official import Drop, Mapping
from grove.weights.sources import SourceCheckpoint, open_checkpoint

logger = logging.getLogger(__name__)

SourceKind = Literal["grove", "grove-train", "glamm"]
SOURCE_KINDS = ("grove", "grove-train", "glamm")
REPORT_FILE = "import_report.json"
PROVENANCE_FILE = "provenance.json"
GROUNDING_IMAGE_SIZE = 512  # GROVE's SAM input (official build_sam_vit_h); GLaMM's is 1024
ProgressFn = Callable[[str, int, int], None]


class WeightsImportError(ValueError):
    """The source cannot be imported; the message says which key or file and why."""


@dataclass
class ImportReport:
    kind: str
    source: str
    out: str
    dtype: str
    mapped: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[dict[str, str]] = field(default_factory=list)  # source, reason[, by]
    fresh: list[dict[str, str]] = field(default_factory=list)
    adapter_gates: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for drop in self.dropped:
            reasons[drop["reason"]] = reasons.get(drop["reason"], 0) + 1
        transforms: dict[str, int] = {}
        for item in self.mapped:
            transforms[item["transform"]] = transforms.get(item["transform"], 0) + 1
        return {"mapped": len(self.mapped), "by_transform": transforms, "dropped": len(self.dropped),
                "drop_reasons": reasons, "fresh": len(self.fresh)}

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary()}


@dataclass(frozen=True)
class _Slot:
    source: str
    target: str
    transform: str
    origin: str  # which checkpoint feeds it: "checkpoint", "clip" or "like"


# ------------------------------------------------------------------------------------ planning
@dataclass(frozen=True)
class _Layer:
    """One checkpoint feeding the target: its tensors' official names are `rename(name)`."""

    label: str  # "checkpoint", "clip" or "like": what the report and the slots call it
    checkpoint: SourceCheckpoint
    prefix: str = ""  # for a CLIP folder: its `vision_model.` prefix, read as the official CLIP prefix

    def official_name(self, name: str) -> str | None:
        if self.prefix:
            return official.CLIP + name[len(self.prefix):] if name.startswith(self.prefix) else None
        return name[len("module."):] if name.startswith("module.") else name

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {official_name: info.shape for name, info in self.checkpoint.tensors.items()
                if (official_name := self.official_name(name)) is not None}


def _layers(kind: str, source: SourceCheckpoint, clip: SourceCheckpoint | None, like: SourceCheckpoint | None) -> list[_Layer]:
    """The checkpoints in priority order, as the official code loads them: GLaMM's CLIP replaced by the
    reloaded --vision_tower; a training state dict loaded (strict=False) over GLaMM + that CLIP."""
    clip_layer = [_Layer("clip", clip, _clip_prefix(clip))] if clip is not None else []
    if kind == "glamm":
        return clip_layer + [_Layer("checkpoint", source)]
    if kind == "grove-train":
        return [_Layer("checkpoint", source)] + clip_layer + ([_Layer("like", like)] if like is not None else [])
    if clip is not None or like is not None:
        raise WeightsImportError("a released GROVE checkpoint holds every tensor: --clip and --like do not apply")
    return [_Layer("checkpoint", source)]


def _merged_shapes(layers: list[_Layer]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in reversed(layers):
        shapes.update(layer.shapes())
    return shapes


def _grounding_size(kind: str, layers: list[_Layer], requested: int | None = None) -> int:
    """GROVE's SAM input: a GROVE checkpoint's own (its position embeddings are at that size); GLaMM's
    1024-px embeddings are resized to 512 px, as the official train.py / infer scripts do. A `requested`
    size wins (the position embeddings are resized to it; at their own size they are copied)."""
    if requested is not None:
        patch = _merged_shapes(layers).get(official.SAM + "patch_embed.proj.weight")
        if patch is not None and requested % patch[2]:
            raise WeightsImportError(f"grounding size {requested} px is not a multiple of SAM's {patch[2]} px patch")
        return requested
    for layer in layers:
        shapes = layer.shapes()
        if official.SAM + "pos_embed" in shapes:
            if kind == "glamm" or layer.label == "like":
                return GROUNDING_IMAGE_SIZE
            return shapes[official.SAM + "pos_embed"][1] * shapes[official.SAM + "patch_embed.proj.weight"][2]
    raise WeightsImportError("no checkpoint holds SAM's image encoder (model.grounding_encoder.image_encoder.*)")


def native_grounding_size(src: str | os.PathLike[str]) -> int:
    """The SAM input size (px) that a checkpoint's own position embeddings are for: 1024 for GLaMM."""
    shapes = _Layer("checkpoint", open_checkpoint(src)).shapes()
    if official.SAM + "pos_embed" not in shapes:
        raise WeightsImportError(f"{src}: no SAM image encoder (model.grounding_encoder.image_encoder.pos_embed)")
    return shapes[official.SAM + "pos_embed"][1] * shapes[official.SAM + "patch_embed.proj.weight"][2]


def _target_config(kind: str, layers: list[_Layer], llm_config: dict, dtype: str, decoder_heads: int,
                   grounding_size: int | None = None) -> GroveConfig:
    shapes = _merged_shapes(layers)
    clip_dims = official.clip_dims(shapes)
    clip_layer = next((layer for layer in layers if layer.label == "clip"), None)
    if clip_layer is not None:
        config = clip_layer.checkpoint.config or {}
        heads = config.get("vision_config", config).get("num_attention_heads")
    else:
        heads = _local_clip_heads(llm_config.get("mm_vision_tower"))
    if heads:  # the head count is not in the weights; a CLIP config beside them says it
        clip_dims["num_attention_heads"] = int(heads)
    grounding_size = _grounding_size(kind, layers, grounding_size)
    return GroveConfig.paper(
        llm=official.llm_dims(llm_config, shapes),
        clip=clip_dims,
        sam=official.sam_dims(shapes, grounding_size),
        sam_decoder=official.decoder_dims(shapes, decoder_heads),
        global_image_size=clip_dims["image_size"],
        grounding_image_size=grounding_size,
        llm_source=None,
        clip_source=None,
        sam_source=None,
        tokenizer_source="tokenizer",
        base_weights=".",
        dtype=dtype,
    )


def _local_clip_heads(tower: str | None) -> int | None:
    """The head count of the CLIP that config.json's `mm_vision_tower` names, where that is a local folder."""
    config = Path(tower) / "config.json" if tower else None
    if config is None or not config.is_file():
        return None
    data = json.loads(config.read_text())
    return data.get("vision_config", data).get("num_attention_heads")


def _clip_prefix(clip: SourceCheckpoint) -> str:
    """`vision_model.` of a transformers CLIPVisionModel / CLIPModel folder."""
    for prefix in ("vision_model.", official.CLIP):
        if any(n.startswith(prefix) for n in clip.tensors):
            return prefix
    raise WeightsImportError(f"{clip.path}: no CLIP vision tower in it (expected keys starting with 'vision_model.')")


def _source_label(layer: _Layer, name: str) -> str:
    return _label(layer.label, name)


def _source_label_of(slot: "_Slot") -> str:
    return _label(slot.origin, slot.source)


def _label(origin: str, name: str) -> str:
    return name if origin == "checkpoint" else f"{origin}:{name}"


def _plan(layers: list[_Layer], targets: dict[str, tuple[tuple[int, ...], torch.dtype]], report: ImportReport) -> list[_Slot]:
    """Map every source tensor (or drop it with a reason); a target fed by a higher-priority checkpoint
    is not fed again (the lower one's tensor is dropped as superseded)."""
    slots: dict[str, _Slot] = {}
    unknown: list[str] = []
    for layer in layers:
        shapes = layer.shapes()
        blocks = official.sam_global_blocks(shapes) if official.SAM + "pos_embed" in shapes else []
        for name, info in layer.checkpoint.tensors.items():
            label = _source_label(layer, name)
            key = layer.official_name(name)
            if key is None:
                report.dropped.append({"source": label, "reason": "not CLIP's vision tower (GROVE uses only that)"})
                continue
            try:
                decision = official.map_name(key, blocks)
            except official.UnknownKeyError as exc:
                unknown.append(f"{label} ({exc})")
                continue
            if isinstance(decision, Drop):
                report.dropped.append({"source": label, "reason": decision.reason})
                continue
            if decision.target in slots:
                winner = slots[decision.target]
                report.dropped.append({"source": label, "reason": f"superseded by the {winner.origin} tensor for the same weight",
                                       "by": _source_label_of(winner)})
                continue
            _check_slot(label, info, decision, targets)
            # a resize or an extension that changes nothing is a copy (and is reported as one)
            transform = "copy" if tuple(info.shape) == tuple(targets[decision.target][0]) else decision.transform
            slots[decision.target] = _Slot(name, decision.target, transform, layer.label)
    if unknown:
        raise WeightsImportError(f"{len(unknown)} tensors of an unknown layout, e.g. {unknown[:5]}")
    return list(slots.values())


def _check_slot(label: str, info, decision: Mapping, targets: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> None:
    if decision.target not in targets:
        raise WeightsImportError(f"{label} maps to {decision.target}, which the GROVE model does not have (another architecture?)")
    wanted = targets[decision.target][0]
    if official.transformed_shape(decision.transform, info.shape, wanted) != tuple(wanted):
        raise WeightsImportError(f"{label}: shape {info.shape} cannot fill {decision.target} {tuple(wanted)} ({decision.transform})")
    if not info.dtype.is_floating_point:
        raise WeightsImportError(f"{label}: dtype {info.dtype} where {decision.target} needs floating point")


# fresh modules: target prefix pattern -> (how it starts, a factory given the config)
def _fresh_modules(config: GroveConfig, missing: set[str]) -> dict[str, tuple[str, nn.Module]]:
    """The modules that may start fresh (GROVE's new parts on top of GLaMM), for the missing targets."""
    from grove.model.adapters import SpatioTemporalAdapter
    from grove.model.heads import BoxHead, ObjectnessHead

    prefixes: dict[str, tuple[str, Callable[[], nn.Module]]] = {}
    clip_dim, sam_dim, dec = config.clip["hidden_size"], config.sam["hidden_size"], config.decoder_dim
    for name in missing:
        parts = name.split(".")
        if name.startswith("global_encoder.adapters."):
            prefixes[".".join(parts[:3])] = ("PyTorch default Conv3d init, alpha 0 (identity)", lambda: SpatioTemporalAdapter(clip_dim, config.adapter_kernel_size))
        elif name.startswith("grounding_encoder.adapters."):
            prefixes[".".join(parts[:3])] = ("PyTorch default Conv3d init, alpha 0 (identity)", lambda: SpatioTemporalAdapter(sam_dim, config.adapter_kernel_size))
        elif name.startswith("box_head."):
            prefixes["box_head"] = ("PyTorch default Linear init", lambda: BoxHead(dec))
        elif name.startswith("objectness_head."):
            prefixes["objectness_head"] = ("PyTorch default Linear init", lambda: ObjectnessHead(dec))
        else:
            raise WeightsImportError(f"the source has no tensor for {name}, and it cannot start fresh")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.init_seed)
        return {prefix: (how, factory()) for prefix, (how, factory) in sorted(prefixes.items())}


# ------------------------------------------------------------------------------------ tokenizer
def _tokenizer(source: SourceCheckpoint, tokenizer_path: str | None, like: SourceCheckpoint | None):
    """The official vocabulary: the checkpoint's own tokenizer (GROVE release), or GLaMM's with GROVE's
    tokens added in the official order (GLaMM; a training .bin through --like / --tokenizer)."""
    folder = Path(tokenizer_path) if tokenizer_path else (like.folder if like is not None else source.folder)
    if not any((folder / f).exists() for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json")):
        raise WeightsImportError(f"{folder}: no tokenizer files; pass --tokenizer (the GLaMM or GROVE tokenizer folder)")
    from transformers import AutoTokenizer

    try:
        base = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise WeightsImportError(f"{folder}: cannot load the tokenizer: {exc}") from exc
    try:
        return official_vocabulary(base)
    except ValueError as exc:
        raise WeightsImportError(f"{folder}: tokenizer unusable for GROVE: {exc}") from exc


# ------------------------------------------------------------------------------------ import
def import_checkpoint(
    kind: SourceKind,
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    clip: str | None = None,
    like: str | None = None,
    tokenizer: str | None = None,
    dtype: str | None = None,
    decoder_heads: int = 8,
    grounding_size: int | None = None,
    max_shard_bytes: int = DEFAULT_SHARD_BYTES,
    hash_sources: bool = True,
    progress: ProgressFn | None = None,
) -> ImportReport:
    """Convert `src` into a full-weights checkpoint at `out` (see the module docstring); returns the report."""
    if kind not in SOURCE_KINDS:
        raise ValueError(f"unknown source kind {kind!r}; expected one of {SOURCE_KINDS}")
    started = time.perf_counter()
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: exists; choose a new folder (an import never overwrites)")
    source = open_checkpoint(src)
    like_source = open_checkpoint(like) if like else None
    clip_source = open_checkpoint(clip) if clip else None
    layers = _layers(kind, source, clip_source, like_source)
    llm_config = source.config or (like_source.config if like_source else None)
    if llm_config is None:
        raise WeightsImportError(f"{src}: no config.json beside it; pass --like with the folder of the model it came from")
    source_dtype = _dominant_dtype(source)
    out_dtype = dtype or {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(source_dtype, "float32")
    config = _target_config(kind, layers, llm_config, out_dtype, decoder_heads, grounding_size)
    tok = _tokenizer(source, tokenizer, like_source)
    config = config.replace(llm={**config.llm, "vocab_size": len(tok)})
    report = ImportReport(kind=kind, source=str(Path(src).resolve()), out=str(out.resolve()), dtype=out_dtype)
    ids = token_ids(tok)
    report.tokens = {name: getattr(ids, name) for name in ("det", "p_start", "p_end", "vid_start", "vid_end", "vocab_size")}

    targets = _target_shapes(config, tok)
    slots = _plan(layers, targets, report)
    fresh = _fresh_modules(config, set(targets) - {slot.target for slot in slots})
    if kind == "grove" and fresh:
        raise WeightsImportError(f"{src}: a released GROVE checkpoint should hold every tensor; missing {sorted(fresh)}")

    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = ShardWriter(tmp, max_shard_bytes)
    target_dtype = torch_dtype(out_dtype)
    done = 0
    for layer in layers:
        wanted = {slot.source: slot for slot in slots if slot.origin == layer.label}
        if not wanted:
            continue
        for file, tensors in layer.checkpoint.shards():
            for name, tensor in tensors:
                slot = wanted.get(name)
                if slot is None:
                    continue
                value = official.TRANSFORMS[slot.transform](tensor, targets[slot.target][0])
                writer.add(slot.target, value.to(target_dtype))
                report.mapped.append({"source": _source_label(layer, name), "target": slot.target, "transform": slot.transform,
                                      "dtype": f"{str(tensor.dtype).removeprefix('torch.')}->{out_dtype}"})
                if slot.target.endswith(".alpha"):
                    report.adapter_gates[slot.target] = float(tensor.float().reshape(-1)[0])
                done += 1
                if progress is not None:
                    progress("tensors", done, len(slots))
            logger.info("converted %s", file)
    for prefix, (how, module) in fresh.items():
        for name, tensor in module.state_dict().items():
            writer.add(f"{prefix}.{name}", tensor.to(target_dtype))
            report.fresh.append({"target": f"{prefix}.{name}", "module": prefix, "init": how})
    writer.close()
    atomic_write_text(tmp / "config.json", config.to_json() + "\n")
    copy_tokenizer_files(tok, tmp)
    report.seconds = time.perf_counter() - started
    atomic_write_json(tmp / REPORT_FILE, report.to_dict())
    atomic_write_json(tmp / PROVENANCE_FILE, _provenance(kind, source, clip_source, like_source, report, hash_sources))
    os.replace(tmp, out)
    logger.info("imported %s (%s) -> %s in %.1fs: %s", src, kind, out, report.seconds, report.summary())
    return report


def _target_shapes(config: GroveConfig, tokenizer) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Names and shapes of every parameter and persistent buffer of the target model (built on the meta device)."""
    from grove.model.grove import GroveModel

    with torch.device("meta"):
        model = GroveModel(config, tokenizer)
    return {name: (tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}


def _dominant_dtype(source: SourceCheckpoint) -> torch.dtype:
    sizes: dict[torch.dtype, int] = {}
    for info in source.tensors.values():
        count = 1
        for d in info.shape:
            count *= d
        sizes[info.dtype] = sizes.get(info.dtype, 0) + count
    return max(sizes, key=sizes.get)


def _sha256(path: Path, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _files(checkpoint: SourceCheckpoint | None, hash_sources: bool) -> list[dict[str, Any]]:
    if checkpoint is None:
        return []
    return [{"path": str(f.resolve()), "bytes": f.stat().st_size, **({"sha256": _sha256(f)} if hash_sources else {})}
            for f in checkpoint.files]


def _provenance(kind: str, source: SourceCheckpoint, clip: SourceCheckpoint | None, like: SourceCheckpoint | None,
                report: ImportReport, hash_sources: bool) -> dict[str, Any]:
    return {
        "origin": "imported",
        "format": kind,
        "source": str(source.path.resolve()),
        "source_files": _files(source, hash_sources),
        "clip_from": str(clip.path.resolve()) if clip else None,
        "clip_files": _files(clip, hash_sources),
        "like": str(like.path.resolve()) if like else None,
        "imported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "summary": report.summary(),
        "tokens": report.tokens,
    }
