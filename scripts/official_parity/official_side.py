#!/usr/bin/env python
"""The OFFICIAL side of the GROVE forward-parity check.

Run with the official venv's python (see setup_official_env.sh), never with the
project's venv:

    .venv-official/bin/python scripts/official_parity/official_side.py \
        --official /path/to/grove-checkout [--glamm /path/to/glamm-checkout] \
        <model|glamm|tokenizer|modules|check-standin|release-roundtrip> --out DIR [--seed N]

The official GROVE code (CC BY-NC-SA) is NOT part of this project: this script
imports it at run time from the checkout given on the command line and writes
reference files (weights, inputs, outputs, ids) that the project's own code is
compared against.  Nothing of the official code is copied here.

Stand-ins inserted from outside before the official code is imported (see
README.md next to this file for why):
  * ``grove_transformers.model.layers`` / ``model.layers``: GLaMM's region encoder
    ``MLVLROIQueryModule`` needs mmcv/mmdet/mmengine.  It is replaced by a plain
    torch module with the same parameter names and shapes (never called by GROVE).
    ``check-standin`` proves the layout against the official layers.py, built on
    the meta device with tiny mmcv/mmdet/mmengine shims.
  * ``torchvision`` (only when the installed one cannot be imported): the official
    code imports ``torchvision.ops.generalized_box_iou_loss`` (training loss) and
    ``torchvision.transforms.functional.resize/to_pil_image`` (SAM's
    ResizeLongestSide, pre-processing); none of them runs here.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import importlib.machinery
import importlib.util
import itertools
import json
import math
import os
import random
import re
import resource
import shutil
import subprocess
import sys
import time
import types
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

# transformers must be imported before any torchvision stand-in is installed, so
# that its own "is torchvision available" probe sees the real situation.
import transformers  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

VID_START, VID_END, DET, BOP, EOP = 32007, 32008, 32009, 32005, 32006
IMAGE_TOKEN_INDEX = -200
ORIGINAL_SIZE = (640, 360)  # (W, H), width first as the official code expects

STANDINS: dict[str, str] = {}


# --------------------------------------------------------------------------- utils
def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Timer:
    def __init__(self):
        self.t = {}

    @contextlib.contextmanager
    def __call__(self, name):
        t0 = time.time()
        log(f"{name} ...")
        yield
        self.t[name] = round(time.time() - t0, 2)
        log(f"{name} done in {self.t[name]:.1f}s (peak RSS {peak_rss_gib():.2f} GiB)")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False, default=str))
    tmp.replace(path)


def save_st(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


# ---------------------------------------------------------------------- stand-ins
def _standin_layers_module(name: str) -> types.ModuleType:
    """Plain-torch GLaMM region encoder with the official parameter layout.

    Layout read from model/layers.py: MLVLROIQueryModule(embed_dims=1024,
    out_dims=4096, num_levels=4) = mlvl_fuse (MLVLFuseModule: input_conv[l] =
    Conv2d(embed+2, embed, 1); fuse_convs[5] = mmcv ConvModule(embed, embed, 3,
    GN(64)) whose parameters are ``conv.weight`` (no bias: bias='auto' with a norm)
    and ``gn.weight``/``gn.bias``) + roi_align (MlvlRoIExtractor: roi_layers =
    RoIAlign x4 without parameters; pconvs[4] = Conv2d(embed, embed, 3, p=1);
    pos_embedd = Linear(4,256) ReLU LayerNorm(256) Linear(256,1024) ReLU
    LayerNorm(1024); updims = Linear(1024, 4096); flatten_linear =
    Linear(embed*14*14, 1024)).
    """
    mod = types.ModuleType(name)
    mod.__doc__ = "stand-in for GLaMM's region encoder (mmcv/mmdet-free, same parameter layout; never called)"

    class _ConvModule(nn.Module):
        def __init__(self, cin, cout, k, padding, num_groups):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride=1, padding=padding, bias=False)
            self.gn = nn.GroupNorm(num_groups, cout)
            self.activate = nn.ReLU(inplace=True)

    class _MLVLFuseModule(nn.Module):
        def __init__(self, input_dims=1024, embed_dims=1024, num_levels=3, num_fuse=4):
            super().__init__()
            self.input_conv = nn.ModuleList([nn.Conv2d(input_dims + 2, embed_dims, 1) for _ in range(num_levels)])
            self.fuse_convs = nn.ModuleList([_ConvModule(embed_dims, embed_dims, 3, 1, 64) for _ in range(num_fuse)])

    class _RoIAlign(nn.Module):
        def __init__(self, output_size=14):
            super().__init__()
            self.output_size = (output_size, output_size)

    class _MlvlRoIExtractor(nn.Module):
        def __init__(self, embed_dims=1024, fuse_level=4, output_size=14):
            super().__init__()
            self.roi_layers = nn.ModuleList([_RoIAlign(output_size) for _ in range(fuse_level)])
            self.pconvs = nn.ModuleList(nn.Conv2d(embed_dims, embed_dims, 3, stride=1, padding=1) for _ in range(fuse_level))
            self.pos_embedd = nn.Sequential(nn.Linear(4, 256), nn.ReLU(inplace=True), nn.LayerNorm(256),
                                            nn.Linear(256, 1024), nn.ReLU(inplace=True), nn.LayerNorm(1024))
            self.updims = nn.Linear(1024, 4096)
            self.flatten_linear = nn.Linear(embed_dims * output_size ** 2, 1024)

    class MLVLROIQueryModule(nn.Module):
        def __init__(self, embed_dims=1024, out_dims=4096, num_levels=3):
            super().__init__()
            self.mlvl_fuse = _MLVLFuseModule(embed_dims, embed_dims, num_levels, num_fuse=5)
            assert num_levels == 4
            self.roi_align = _MlvlRoIExtractor(embed_dims, num_levels, 14)

        def forward(self, *a, **k):  # pragma: no cover - GROVE never calls it
            raise RuntimeError("region-encoder stand-in: GROVE never calls the region encoder with boxes")

    mod.MLVLROIQueryModule = MLVLROIQueryModule
    return mod


def install_layers_standin() -> None:
    for name in ("grove_transformers.model.layers", "model.layers"):
        if name not in sys.modules:
            sys.modules[name] = _standin_layers_module(name)
    STANDINS["model.layers / grove_transformers.model.layers"] = (
        "GLaMM region encoder MLVLROIQueryModule replaced by a plain-torch module with the same parameter "
        "names/shapes (mmcv/mmdet/mmengine cannot be installed here; GROVE never calls it)")


def install_torchvision_standin() -> None:
    try:
        import torchvision  # noqa: F401
        from torchvision.ops import generalized_box_iou_loss  # noqa: F401
        return
    except Exception as e:  # not installed, or a wheel built for another torch
        reason = f"{type(e).__name__}: {e}"
    for k in list(sys.modules):
        if k == "torchvision" or k.startswith("torchvision."):
            del sys.modules[k]

    def _missing(*a, **k):
        raise RuntimeError("torchvision stand-in: this function is not available in the parity environment")

    def pkg(name):
        m = types.ModuleType(name)
        m.__path__ = []
        m.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
        sys.modules[name] = m
        return m

    tv = pkg("torchvision")
    ops = pkg("torchvision.ops")
    ops.generalized_box_iou_loss = _missing
    tr = pkg("torchvision.transforms")
    fn = pkg("torchvision.transforms.functional")
    fn.resize = _missing
    fn.to_pil_image = _missing
    tv.ops, tv.transforms, tr.functional = ops, tr, fn
    STANDINS["torchvision"] = (
        "torchvision could not be imported (" + reason[:160] + "); a stand-in provides "
        "ops.generalized_box_iou_loss and transforms.functional.resize/to_pil_image, which raise if called "
        "(training loss and SAM pre-processing only; never run here)")


def setup_official(official: Path, training_package: bool = True) -> None:
    """Put the checkout on sys.path and insert the stand-ins (before any import)."""
    official = official.resolve()
    gt = official / "grove_transformers"
    assert (gt / "grove_transformers" / "modeling_grove.py").exists(), f"not a GROVE checkout: {official}"
    install_torchvision_standin()
    install_layers_standin()
    sys.path.insert(0, str(gt))
    if training_package:
        sys.path.insert(0, str(official))


def _mm_shims() -> dict:
    """Tiny mmcv/mmdet/mmengine shims, used only to build the OFFICIAL layers.py on the
    meta device and compare its parameter layout with the stand-in."""
    class ConvModule(nn.Module):
        def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, conv_cfg=None,
                     norm_cfg=None, act_cfg=dict(type="ReLU"), bias="auto", **kw):
            super().__init__()
            with_norm = norm_cfg is not None
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                                  bias=(not with_norm) if bias == "auto" else bias)
            if with_norm:
                assert norm_cfg["type"] == "GN"
                self.gn = nn.GroupNorm(norm_cfg["num_groups"], out_channels)
            self.activate = nn.ReLU(inplace=True)

    class RoIAlign(nn.Module):
        def __init__(self, output_size, **kw):
            super().__init__()
            self.output_size = (output_size, output_size)

    class BaseRoIExtractor(nn.Module):
        def __init__(self, roi_layer, out_channels, featmap_strides, init_cfg=None):
            super().__init__()
            cfg = dict(roi_layer)
            cfg.pop("type")
            self.roi_layers = nn.ModuleList([RoIAlign(**cfg) for _ in featmap_strides])
            self.out_channels = out_channels
            self.featmap_strides = featmap_strides

    def normal_init(*a, **k):
        pass

    mods = {}
    for n in ("mmdet", "mmdet.models", "mmcv", "mmcv.cnn", "mmengine", "mmengine.model"):
        mods[n] = types.ModuleType(n)
    mods["mmdet.models"].BaseRoIExtractor = BaseRoIExtractor
    mods["mmcv.cnn"].ConvModule = ConvModule
    mods["mmcv.cnn"].Linear = nn.Linear
    mods["mmcv.cnn"].normal_init = normal_init
    mods["mmengine.model"].normal_init = normal_init
    return mods


def check_region_standin(official: Path) -> dict:
    """Build the official MLVLROIQueryModule (with mm shims, on meta) and the stand-in;
    return the comparison of their state-dict layouts."""
    path = official / "grove_transformers" / "grove_transformers" / "model" / "layers.py"
    shims = _mm_shims()
    saved = {k: sys.modules.get(k) for k in shims}
    try:
        sys.modules.update(shims)
        spec = importlib.util.spec_from_file_location("_official_layers_for_layout_check", path)
        m = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(m)
        with torch.device("meta"):
            off = m.MLVLROIQueryModule(embed_dims=1024, out_dims=4096, num_levels=4)
            std = _standin_layers_module("x").MLVLROIQueryModule(embed_dims=1024, out_dims=4096, num_levels=4)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    a = {k: tuple(v.shape) for k, v in off.state_dict().items()}
    b = {k: tuple(v.shape) for k, v in std.state_dict().items()}
    return {"official_file": str(path), "n_tensors": len(a), "n_params": int(sum(math.prod(s) for s in a.values())),
            "identical_layout": a == b, "only_official": sorted(set(a) - set(b)), "only_standin": sorted(set(b) - set(a)),
            "shape_mismatch": sorted(k for k in set(a) & set(b) if a[k] != b[k])}


# ----------------------------------------------------------------- weight helpers
@torch.no_grad()
def perturb_constants(module: nn.Module, gen: torch.Generator, skip_prefixes=(), std: float = 0.02) -> list:
    """Give every parameter/float buffer that is constant (all zeros, all ones, ...)
    random non-zero content, so that a missing or misnamed tensor cannot go unnoticed."""
    touched = []
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        if any(name.startswith(p) for p in skip_prefixes) or not t.is_floating_point() or t.numel() == 0:
            continue
        flat = t.reshape(-1)
        if t.numel() == 1 or bool((flat == flat[0]).all()):
            base = float(flat[0])
            noise = torch.randn(t.shape, generator=gen, dtype=torch.float32) * std
            if base == 0.0:
                t.copy_(noise.to(t.dtype))
            else:
                t.copy_((base + noise * abs(base)).to(t.dtype))
            touched.append(name)
    return touched


@torch.no_grad()
def uniform_(t: torch.Tensor, lo: float, hi: float, gen: torch.Generator) -> None:
    t.copy_((torch.rand(t.shape, generator=gen) * (hi - lo) + lo).to(t.dtype))


@torch.no_grad()
def normal_(t: torch.Tensor, std: float, gen: torch.Generator) -> None:
    t.copy_((torch.randn(t.shape, generator=gen) * std).to(t.dtype))


def bias_for_half_positive(logits: torch.Tensor, old_bias: float) -> tuple[float, dict]:
    """New objectness bias putting the threshold (logit 0) into the widest gap between
    consecutive sorted logits around the median, so about half pass and no logit is
    near the decision boundary."""
    v, _ = torch.sort(logits.detach().double().reshape(-1))
    n = v.numel()
    lo, hi = max(1, int(n * 0.4)), min(n - 1, int(math.ceil(n * 0.6)))
    best = max(range(lo, hi + 1), key=lambda i: float(v[i] - v[i - 1]))
    cut = float((v[best] + v[best - 1]) / 2)
    info = {"n_logits": n, "n_positive_after": n - best, "gap": float(v[best] - v[best - 1]),
            "min_abs_logit_after": float((v - cut).abs().min())}
    return old_bias - cut, info


# ------------------------------------------------------------------- CLIP folder
def write_clip_folder(path: Path, hidden=256, layers=6, heads=4, inter=1024, image=336, patch=14, seed=0) -> Path:
    """A CLIP-ViT-L/14-336 look-alike at reduced width: CLIPVisionConfig + weights of a
    plain transformers CLIPVisionModel (no adapters, like the OpenAI checkpoint) +
    preprocessor_config.json.  The folder name contains "clip" (the official builder
    checks the name)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
    assert "clip" in path.name
    if (path / "config.json").exists() and (path / "model.safetensors").exists():
        return path
    path.mkdir(parents=True, exist_ok=True)
    cfg = CLIPVisionConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image, patch_size=patch,
                           hidden_act="quick_gelu", projection_dim=hidden, layer_norm_eps=1e-5)
    torch.manual_seed(seed + 1234)
    m = CLIPVisionModel(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1235)
    perturb_constants(m, g)
    m.save_pretrained(str(path), safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": image}, crop_size={"height": image, "width": image},
                       do_center_crop=True, do_resize=True, do_normalize=True,
                       image_mean=[0.48145466, 0.4578275, 0.40821073],
                       image_std=[0.26862954, 0.26130258, 0.27577711]).save_pretrained(str(path))
    return path


# ======================================================================== model
def model_inputs(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + 7)
    glob = torch.randn(1, 3, 8, 336, 336, generator=g)
    grd = torch.randn(1, 3, 8, 512, 512, generator=g)
    # padded 16:9 frame: a 640x360 frame resized to 512x288 then zero-padded to 512:
    # zero the right 20% and the bottom 44% (as in the brief)
    grd[..., :, int(round(512 * 0.8)):] = 0
    grd[..., int(round(512 * 0.56)):, :] = 0

    def rid(n):
        return torch.randint(3, 32000, (n,), generator=g).tolist()

    prefix = [1] + rid(30) + [VID_START, IMAGE_TOKEN_INDEX, VID_END] + rid(20)
    answer = []
    for _ in range(3):
        answer += rid(6) + [BOP] + rid(3) + [EOP, DET]
    full = prefix + answer + [2]
    return {"global": glob, "grounding": grd, "prompt_ids": prefix, "answer_ids": answer, "full_ids": full}


def build_grove_inference_model(clip_dir: Path, seed: int, T: Timer):
    from grove_transformers import GroveConfig, GroveForCausalLM
    cfg = GroveConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=32010, rms_norm_eps=1e-5, max_position_embeddings=4096,
                      attn_implementation="eager", mm_vision_tower=str(clip_dir), mm_vision_select_layer=-2,
                      mm_vision_select_feature="patch", out_dim=256, num_frames=8, use_temp_objectness=True,
                      temp_objectness_threshold=0.5, with_region=True, bos_token_id=1, eos_token_id=2,
                      pad_token_id=0, tie_word_embeddings=False)
    cfg.mm_use_im_start_end = True      # as in GLaMM/LLaVA-1.5 configs [I]; numerically irrelevant
    cfg.bbox_token_idx = 32002
    cfg.bop_token_idx, cfg.eop_token_idx = BOP, EOP
    # read by prepare_inputs_labels_for_multimodal (with_region) but only set by GroveForCausalLM when passed
    # as a kwarg: a released config.json must therefore carry it
    cfg.num_level_reg_features = 4
    torch.manual_seed(seed)
    with T("build GroveForCausalLM (official init)"):
        model = GroveForCausalLM(cfg).eval()
    model.det_token_idx = DET
    return model


@torch.no_grad()
def make_every_path_matter(model, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed + 99)
    info = {}
    m = model.get_model()
    clip_ad = m.get_vision_tower().vision_tower.vision_model.encoder.adapters
    sam = m.grounding_encoder.image_encoder
    for i, a in enumerate(clip_ad):
        uniform_(a.alpha, 0.3, 0.8, g)
    for i, a in enumerate(sam.adapters):
        uniform_(a.alpha, 0.3, 0.8, g)
    info["clip_adapter_alpha"] = [float(a.alpha) for a in clip_ad]
    info["sam_adapter_alpha"] = [float(a.alpha) for a in sam.adapters]
    normal_(sam.pos_embed, 0.1, g)
    n_rel = 0
    for blk in sam.blocks:
        normal_(blk.attn.rel_pos_h, 0.1, g)
        normal_(blk.attn.rel_pos_w, 0.1, g)
        n_rel += 2
    info["sam_pos_embed_std"] = 0.1
    info["sam_rel_pos_std"] = 0.1
    info["sam_rel_pos_tensors"] = n_rel
    # LLaMA's init (N(0, 0.02) for every Linear, zero biases) leaves the grounding path nearly blind: the
    # three queries and their boxes came out within 0.01 px of each other (the queries all sit on </p>
    # tokens, so the LLM layers must mix context visibly too).  These modules get weights
    # N(0, 1/fan_in), biases N(0, 0.1), norm weights 1 + N(0, 0.1), so that queries, frames and video
    # tokens visibly change the outputs.
    rescaled = []
    for pfx, mod in (("model.layers.", m.layers),
                     ("model.text_hidden_fcs.", m.text_hidden_fcs), ("model.mm_projector.", m.mm_projector),
                     ("model.grounding_encoder.mask_decoder.", m.grounding_encoder.mask_decoder),
                     ("model.grounding_encoder.prompt_encoder.", m.grounding_encoder.prompt_encoder)):
        for n, p in mod.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() > 1:
                normal_(p, 1.0 / math.sqrt(p[0].numel()), g)
            else:
                normal_(p, 0.1, g)
        rescaled.append(pfx)
    info["rescaled_modules"] = rescaled
    touched = perturb_constants(model, g, skip_prefixes=("model.region_encoder.",))
    info["constant_tensors_perturbed"] = touched
    return info


def _capture(model):
    """Wrap a few official methods of THIS instance to record intermediates while the
    official call runs."""
    cap = {}
    m = model.get_model()
    vt = m.get_vision_tower()

    def wrap(obj, name, key):
        orig = getattr(obj, name)

        def w(*a, **k):
            r = orig(*a, **k)
            cap[key] = r
            return r
        setattr(obj, name, w)
        return orig

    originals = [
        (model, "get_grounding_encoder_embs", wrap(model, "get_grounding_encoder_embs", "sam")),
        (model, "_process_hidden_states", wrap(model, "_process_hidden_states", "hs")),
        (model, "encode_images", wrap(model, "encode_images", "enc")),
        (vt, "forward", wrap(vt, "forward", "clip")),
    ]

    def restore():
        for obj, name, _ in originals:
            delattr(obj, name)
    return cap, restore


def cmd_model(a) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    T = Timer()
    t_all = time.time()
    setup_official(Path(a.official))
    clip_dir = write_clip_folder(out / "clip-vit-tiny-patch14-336", seed=a.seed)
    layout = check_region_standin(Path(a.official))
    assert layout["identical_layout"], layout
    model = build_grove_inference_model(clip_dir, a.seed, T)
    mp_info = make_every_path_matter(model, a.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"parameters: {n_params / 1e6:.1f}M")

    inp = model_inputs(a.seed)
    glob, grd = inp["global"], inp["grounding"]
    full_ids = torch.tensor([inp["full_ids"]])
    prompt_ids = torch.tensor([inp["prompt_ids"]])
    prefix_ids = torch.tensor([inp["full_ids"][:-1]])  # answer without eos
    orig = [ORIGINAL_SIZE]
    call_inf = dict(global_enc_images=glob, grounding_enc_images=grd, bboxes_region=None, labels=None,
                    attention_masks=None, offset=None, bboxes_list=None, temp_objectness_labels_list=None,
                    original_size_list=orig, inference=True)

    obj_head = model.get_model().grounding_encoder.mask_decoder.temporal_objectness_head
    with torch.no_grad():
        # pass 1: calibrate the objectness bias on the official inference path
        cap, restore = _capture(model)
        with T("inference pass 1 (objectness calibration)"):
            o1 = model(input_ids=full_ids, **call_inf)
        restore()
        logits1 = torch.cat(o1["logits_temp_objectness"][0])
        old_b = float(obj_head.bias)
        new_b, cal = bias_for_half_positive(logits1, old_b)
        obj_head.bias.fill_(new_b)
        cal.update({"old_bias": old_b, "new_bias": new_b})
        sam_cached = cap["sam"]
        del o1, cap
        gc.collect()

        # pass 2: the reference inference outputs
        cap, restore = _capture(model)
        with T("inference pass 2 (model(..., inference=True))"):
            o2 = model(input_ids=full_ids, **call_inf)
        restore()
        ref = {}
        kept_counts = []
        for t in range(8):
            ref[f"boxes_kept_f{t}"] = o2["pred_bboxes"][0][t].float()
            ref[f"objectness_logits_f{t}"] = o2["logits_temp_objectness"][0][t].float()
            ref[f"kept_f{t}"] = torch.sigmoid(o2["logits_temp_objectness"][0][t]) > 0.5
            kept_counts.append(int(ref[f"kept_f{t}"].sum()))
        clip_feats, _ = cap["clip"]
        ref["clip_features"] = clip_feats.float()
        ref["video_tokens"] = cap["enc"][0].float()
        ref["sam_embeddings"] = cap["sam"].float()
        ref["queries"] = cap["hs"][1][0].float()
        ref["queries_all_frames"] = torch.cat(cap["hs"][1]).float()
        ref["dense_pe"] = model.get_model().grounding_encoder.prompt_encoder.get_dense_pe().float()
        assert torch.equal(cap["sam"], sam_cached), "SAM embeddings not deterministic"
        sam_emb = cap["sam"]
        del o2, cap
        gc.collect()

        # pass 3: every box, objectness filter off (threshold -1 -> sigmoid > -1 always)
        # (the SAM embeddings of pass 2 are reused through an instance override of
        # get_grounding_encoder_embs: the same official function on the same input; saves ~3 min)
        model.config.temp_objectness_threshold = -1.0
        model.get_grounding_encoder_embs = lambda images: sam_emb
        with T("inference pass 3 (threshold -1: unfiltered boxes)"):
            o3 = model(input_ids=full_ids, **call_inf)
        del model.get_grounding_encoder_embs
        model.config.temp_objectness_threshold = 0.5
        for t in range(8):
            ref[f"boxes_all_f{t}"] = o3["pred_bboxes"][0][t].float()
            assert torch.equal(o3["logits_temp_objectness"][0][t], ref[f"objectness_logits_f{t}"])
            assert torch.equal(ref[f"boxes_all_f{t}"][ref[f"kept_f{t}"]], ref[f"boxes_kept_f{t}"])
        del o3
        gc.collect()

        # (a) LM logits of the teacher-forced sequence through the LLaVA forward
        with T("LLaVA forward (lm_logits)"):
            lm = super(type(model), model).forward(images=glob, input_ids=full_ids, output_hidden_states=True)
        ref["lm_logits"] = lm.logits.float()
        ref["final_hidden"] = lm.hidden_states.float()
        del lm

        # (d) generation through mode='evaluate', as processing_grove.generate calls it
        gen_meta = {}
        for tag, ids in (("gen", prompt_ids), ("gen_prefix", prefix_ids)):
            with T(f"evaluate ({tag})"):
                image_features, image_forward_outs = model(images=glob, mode="encode_images")
                # = model(images=S, mode="get_grounding_encoder_embs"): the tensor of pass 2 (saves ~3 min)
                image_embeddings = sam_emb
                dense_pe = model(mode="get_dense_pe")
                try:
                    ev = model(mode="evaluate", image_features=image_features, image_forward_outs=image_forward_outs,
                               images_dtype=glob.dtype, image_embeddings=image_embeddings, input_ids=ids,
                               original_size_list=orig, max_tokens_new=12, bboxes=None, token_embeddings=None,
                               dense_pe=dense_pe, device=torch.device("cpu"))
                    seq, boxes, logits = ev
                    ref[f"{tag}_ids"] = seq[0].clone()
                    n_det = int((seq[0] == DET).sum())
                    gen_meta[tag] = {"input_len": ids.shape[1], "sequence_len": int(seq.shape[1]),
                                     "new_tokens": seq[0, ids.shape[1]:].tolist(), "n_det_in_sequence": n_det,
                                     "error": None}
                    for t in range(8):
                        ref[f"{tag}_boxes_kept_f{t}"] = boxes[0][t].float()
                        ref[f"{tag}_objectness_logits_f{t}"] = logits[0][t].float()
                except Exception as e:  # recorded, e.g. when no [DET] was generated
                    gen_meta[tag] = {"input_len": ids.shape[1], "error": f"{type(e).__name__}: {e}"}
                    log(f"evaluate ({tag}) raised {type(e).__name__}: {e}")
                    # generation itself, to record the ids even when box decoding fails
                    go = model.generate(images=None, input_ids=ids, bboxes=None, image_features=image_features,
                                        image_forward_outs=image_forward_outs, images_dtype=glob.dtype,
                                        token_embeddings=None, max_new_tokens=12, num_beams=1,
                                        output_hidden_states=True, return_dict_in_generate=True,
                                        do_sample=False, use_cache=True, synced_gpus=False)
                    ref[f"{tag}_ids"] = go.sequences[0].clone()
                    gen_meta[tag]["new_tokens"] = go.sequences[0, ids.shape[1]:].tolist()
                    gen_meta[tag]["n_det_in_sequence"] = int((go.sequences[0] == DET).sum())

    # -------------------------------------------------------------- save references
    meta = {
        "seed": a.seed,
        "official_checkout": str(Path(a.official).resolve()),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "dtype": "float32", "device": "cpu", "attn_implementation": "eager",
        "det_token_idx": DET, "bop_token_idx": BOP, "eop_token_idx": EOP, "vid_start": VID_START, "vid_end": VID_END,
        "temp_objectness_threshold": 0.5, "original_size_WH": list(ORIGINAL_SIZE),
        "input_ids": inp["full_ids"], "prompt_ids": inp["prompt_ids"], "answer_ids": inp["answer_ids"],
        "n_parameters": n_params,
        "inputs": {
            "global_pixels": "torch.randn(1,3,8,336,336) (generator seed+7, first draw)",
            "grounding_pixels": "torch.randn(1,3,8,512,512) (second draw); [..., :, 410:] = 0 and [..., 287:, :] = 0",
            "stored_as": "input_global_pixels, input_grounding_pixels in reference.safetensors",
        },
        "calls": {
            "boxes_kept_f{t}, objectness_logits_f{t}, kept_f{t}": (
                "model(global_enc_images=G, grounding_enc_images=S, bboxes_region=None, input_ids=input_ids, labels=None, "
                "attention_masks=None, offset=None, bboxes_list=None, temp_objectness_labels_list=None, "
                "original_size_list=[(640, 360)], inference=True) -> pred_bboxes[0][t] (kept xyxy pixels), "
                "logits_temp_objectness[0][t] (one per [DET] query); kept_f{t} = sigmoid(logits) > 0.5"),
            "boxes_all_f{t}": ("the same call rerun with model.config.temp_objectness_threshold = -1.0 (every box "
                               "passes), the SAM embeddings of the first call reused"),
            "lm_logits, final_hidden": (
                "super(GroveForCausalLM, model).forward(images=G, input_ids=input_ids, output_hidden_states=True)"
                ".logits / .hidden_states (eval: the final-norm last hidden state), length len(input_ids)+575"),
            "clip_features": "model.get_model().get_vision_tower()(G)[0]: pooled CLIP features before mm_projector",
            "video_tokens": "model.encode_images(G)[0]: mm_projector output",
            "sam_embeddings": "model.get_grounding_encoder_embs(S)",
            "dense_pe": "model.get_model().grounding_encoder.prompt_encoder.get_dense_pe()",
            "queries": "model._process_hidden_states(...)[1][0]: text_hidden_fcs output at the [DET] mask (frame 0; "
                       "queries_all_frames = all 8 frames concatenated)",
            "gen_ids, gen_boxes_kept_f{t}, gen_objectness_logits_f{t}": (
                "image_features, image_forward_outs = model(images=G, mode='encode_images'); image_embeddings = "
                "model(images=S, mode='get_grounding_encoder_embs') (= sam_embeddings, reused); "
                "dense_pe = model(mode='get_dense_pe'); "
                "model(mode='evaluate', ..., input_ids=prompt_ids, original_size_list=[(640,360)], max_tokens_new=12, "
                "bboxes=None, token_embeddings=None, dense_pe=dense_pe, device='cpu') as processing_grove.generate"),
            "gen_prefix_*": "the same evaluate call on input_ids[:-1] (prompt + answer without eos): the prompt's "
                            "[DET] tokens are decoded through the cached-generation hidden states",
        },
        "generation": gen_meta,
        "kept_per_frame": kept_counts,
        "objectness_calibration": cal,
        "weights": mp_info | {"constant_tensors_perturbed": len(mp_info["constant_tensors_perturbed"])},
        "region_encoder_standin_layout_check": layout,
        "standins": STANDINS,
        "clip_folder": str(clip_dir),
    }
    ref["input_global_pixels"] = glob
    ref["input_grounding_pixels"] = grd
    ref["input_ids"] = full_ids[0]
    meta["shapes"] = {k: list(v.shape) for k, v in ref.items()}
    save_st(out / "reference.safetensors", ref)
    write_json(out / "reference.json", meta)
    log(f"kept boxes per frame: {kept_counts}; generation: {json.dumps(gen_meta)[:400]}")
    del ref
    gc.collect()

    # ---------------------------------------------------------- checkpoints
    with T("save_pretrained grove_release (fp32, sharded safetensors)"):
        shutil.rmtree(out / "grove_release", ignore_errors=True)
        model.save_pretrained(str(out / "grove_release"), safe_serialization=True, max_shard_size="500MB")

    train_info = save_training_layout(model, a, out, clip_dir, T)
    meta["training_layout"] = train_info
    gc.collect()

    with T("save_pretrained grove_release_bf16"):
        shutil.rmtree(out / "grove_release_bf16", ignore_errors=True)
        model.to(torch.bfloat16)
        model.save_pretrained(str(out / "grove_release_bf16"), safe_serialization=True, max_shard_size="500MB")
    meta["timings_s"] = T.t | {"total": round(time.time() - t_all, 1)}
    meta["peak_rss_gib"] = round(peak_rss_gib(), 2)
    write_json(out / "reference.json", meta)
    log(f"model: done in {time.time() - t_all:.0f}s, peak RSS {peak_rss_gib():.2f} GiB")


def save_training_layout(model, a, out: Path, clip_dir: Path, T: Timer) -> dict:
    """grove_train/grove_ckpt.bin: the state dict of the TRAINING-time class
    model/GROVE.py:GROVEForCausalLM holding the same weights, saved with torch.save as
    DeepSpeed's zero_to_fp32 writes it."""
    info = {}
    sd = model.state_dict()
    try:
        import train as official_train  # noqa: F401  (proves train.py imports with the stand-ins)
        from model.GROVE import GROVEForCausalLM
        from model.llava.model.language_model.llava_llama import Llava1Config
        cfgd = model.config.to_dict()
        for k in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path"):
            cfgd.pop(k, None)
        cfg = Llava1Config(**cfgd)
        cfg.vision_tower = str(clip_dir)
        cfg.mm_vision_tower = str(clip_dir)
        cfg.pretrain_mm_mlp_adapter = None
        cfg.mm_vision_select_feature = "patch"
        with T("build training-time GROVEForCausalLM (model/GROVE.py)"):
            tm = GROVEForCausalLM(cfg, det_token_idx=DET, vision_pretrained=None, use_mm_start_end=True,
                                  vision_module=str(clip_dir), with_region=True, num_frames=8,
                                  use_temp_objectness=True, bbox_token_idx=32002, num_level_reg_features=4,
                                  out_dim=256, train_mask_decoder=True, ce_loss_weight=1.0, giou_loss_weight=2.0,
                                  temp_objectness_loss_weight=2.0)
            # as train.py: the CLIP tower is (re)loaded by initialize_vision_modules(config) and gets its
            # adapters from initialize_custom_layers_in_global_encoder; SAM goes 1024 -> 512 px through
            # interpolate_positional_embeddings; then the released weights are loaded (strict=False)
            tm.get_model().initialize_vision_modules(tm.get_model().config)
            official_train.initialize_custom_layers_in_global_encoder(tm.get_model().get_vision_tower())
            official_train.interpolate_positional_embeddings(tm)
        tsd = tm.state_dict()
        info["keys_only_in_inference"] = sorted(set(sd) - set(tsd))
        info["keys_only_in_training"] = sorted(set(tsd) - set(sd))
        info["shape_mismatch"] = sorted(k for k in set(sd) & set(tsd) if sd[k].shape != tsd[k].shape)
        res = tm.load_state_dict(sd, strict=False)
        info["load_missing"] = list(res.missing_keys)
        info["load_unexpected"] = list(res.unexpected_keys)
        tsd = tm.state_dict()
        info["values_equal_after_load"] = all(torch.equal(tsd[k], sd[k]) for k in set(sd) & set(tsd))
        info["source"] = "model/GROVE.py:GROVEForCausalLM state_dict() after load_state_dict(inference weights)"
        to_save = {k: v.detach().clone() for k, v in tsd.items()}
        del tm
    except Exception as e:
        import traceback
        traceback.print_exc()
        info["error"] = f"{type(e).__name__}: {e}"
        info["source"] = "inference GroveForCausalLM.state_dict() (training class could not be built)"
        to_save = {k: v.detach().clone() for k, v in sd.items()}
    info["n_tensors"] = len(to_save)
    info["format"] = "torch.save(OrderedDict[str, Tensor]) of fp32 tensors, as zero_to_fp32 writes it"
    with T("torch.save grove_train/grove_ckpt.bin"):
        (out / "grove_train").mkdir(parents=True, exist_ok=True)
        tmp = out / "grove_train" / "grove_ckpt.bin.tmp"
        from collections import OrderedDict
        torch.save(OrderedDict(to_save), str(tmp))
        tmp.replace(out / "grove_train" / "grove_ckpt.bin")
    del to_save
    gc.collect()
    write_json(out / "grove_train" / "layout.json", info)
    return info


def cmd_release_roundtrip(a) -> None:
    """Put the GroveTokenizer files (tokenizer subcommand) next to grove_release*/ and load each
    copy back through the OFFICIAL GroveForCausalLM.from_pretrained (which also loads the
    tokenizer and sets det_token_idx); check every tensor against the files."""
    out = Path(a.out)
    setup_official(Path(a.official))
    from grove_transformers import GroveForCausalLM
    from safetensors.torch import load_file
    tok_dir = out / "grove_release_tokenizer"
    assert tok_dir.exists(), "run the tokenizer subcommand first"
    res = {}
    for name, dtype in (("grove_release_bf16", torch.bfloat16), ("grove_release", torch.float32)):
        d = out / name
        for f in tok_dir.iterdir():
            shutil.copy(f, d / f.name)
        t0 = time.time()
        m = GroveForCausalLM.from_pretrained(str(d), torch_dtype=dtype)
        sd = m.state_dict()
        files = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
        mismatch, n = [], 0
        for shard in sorted(set(files.values())):
            for k, v in load_file(str(d / shard)).items():
                n += 1
                if k not in sd or not torch.equal(sd[k], v):
                    mismatch.append(k)
        res[name] = {"load_s": round(time.time() - t0, 1), "det_token_idx": m.det_token_idx,
                     "config_special_ids": {k: getattr(m.config, k, None) for k in
                                            ("bbox_token_idx", "bop_token_idx", "eop_token_idx", "pad_token_id",
                                             "bos_token_id", "eos_token_id")},
                     "n_tensors_in_files": n, "n_tensors_in_model": len(sd),
                     "not_in_files": sorted(set(sd) - set(files)), "mismatch": mismatch}
        log(f"{name}: {res[name]}")
        del m, sd
        gc.collect()
    write_json(out / "release_roundtrip.json", res)


# ====================================================================== tokenizer
_WORDS = ("a the man woman person hand knife board onion tomato pan pot bowl spoon fork plate cup water oil salt "
          "pepper garlic butter flour sugar egg milk cheese bread meat chicken fish rice pasta sauce soup salad "
          "table kitchen stove oven fridge sink towel glass bottle jar lid box bag paper car wheel tire tool "
          "hammer nail screw drill saw wood plank wall floor door window paint brush roller bucket ladder rope "
          "dog cat ball child girl boy shirt hat shoe phone screen camera light lamp chair sofa bed book pen "
          "red green blue yellow white black small large big little hot cold fresh sharp wooden metal plastic "
          "cuts chops slices stirs pours adds mixes holds picks puts places takes opens closes washes cleans "
          "wipes turns moves lifts drops shows points uses fills empties peels grates fries boils bakes "
          "on in into onto with from of to at by over under near next behind front top bottom left right "
          "and then while after before again some more another one two three four five first second".split())
_SYL = ("ba be bi bo bu ca ce ci co cu da de di do du fa fe fi fo fu ga ge gi go gu ha he hi ho hu ja je ji jo "
        "ju ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu pa pe pi po pu ra re ri ro ru sa se si "
        "so su ta te ti to tu va ve vi vo vu wa we wi wo za ze zi zo zu an en in on un ar er ir or ur al el il "
        "ol ul as es is os us at et it ot ut st tr pl gr br cl fl sh ch th ng nd").split()


def _corpus(path: Path, n_lines: int, seed: int) -> None:
    rng = random.Random(seed)
    lex = list(_WORDS)
    for _ in range(60000):  # English-looking pseudo-words for a rich merge table
        w = "".join(rng.choice(_SYL) for _ in range(rng.choice((1, 2, 2, 3, 3, 4, 5))))
        lex.append(w)
    weights = [50.0] * len(_WORDS) + [1.0] * (len(lex) - len(_WORDS))
    cum = list(itertools.accumulate(weights))  # once: choices(weights=...) would re-sum 60k weights per line
    # the prompt template's words and every printable ASCII character, so that the llava_v1 prompt and
    # punctuation such as ':' get ordinary pieces (not byte fallback)
    template = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the human's questions. USER: The video provides an "
                "overview of the video. Could you please give me a description of the video? Please respond with "
                "interleaved bounding boxes for the corresponding parts of the answer. ASSISTANT: Sure, it is: "
                "(a) \"quoted\" [x] {y} #1 $2 %3 &4 *5 +6 -7 /8 <9> =0 @ \\ ^ _ ` | ~ ;")
    with open(path, "w") as f:
        for i in range(n_lines):
            if i % 50 == 0:
                f.write(template + "\n")
            n = rng.randint(6, 24)
            ws = rng.choices(lex, cum_weights=cum, k=n)
            if rng.random() < 0.3:
                ws.insert(rng.randrange(len(ws)), str(rng.randint(0, 2025)))
            s = " ".join(ws)
            s = s[0].upper() + s[1:] + rng.choice([".", ".", ",", "?", "!", ";"])
            if rng.random() < 0.1:
                s = s.replace(" ", "  ", 1)
            f.write(s + "\n")


def train_llama_like_spm(out_dir: Path, vocab: int, seed: int) -> dict:
    import sentencepiece as spm
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus = out_dir / "corpus.txt"
    _corpus(corpus, 400000, seed)
    prefix = out_dir / "llama_like"
    t0 = time.time()
    tried = []
    v = vocab
    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(seed + 1)
    cwd = os.getcwd()
    os.chdir(out_dir)  # relative paths: the trainer spec stored in the model does not depend on DIR
    while True:
        try:
            spm.SentencePieceTrainer.train(
                input=corpus.name, model_prefix=prefix.name, model_type="bpe", vocab_size=v,
                byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
                normalization_rule_name="identity", allow_whitespace_only_pieces=True,
                split_by_unicode_script=True, split_by_whitespace=True, split_by_number=True,
                max_sentencepiece_length=16, character_coverage=0.99995, unk_id=0, bos_id=1, eos_id=2,
                pad_id=-1, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>", num_threads=1,
                input_sentence_size=0, shuffle_input_sentence=False, train_extremely_large_corpus=False,
                minloglevel=2)
            break
        except RuntimeError as e:
            tried.append({"vocab": v, "error": str(e)[:200]})
            m = re.search(r"<= (\d+)", str(e))
            if not m or v <= 1000:
                os.chdir(cwd)
                raise
            v = int(m.group(1))
    os.chdir(cwd)
    corpus.unlink()
    return {"requested_vocab": vocab, "vocab": v, "train_s": round(time.time() - t0, 1), "retries": tried,
            "settings": "bpe, byte_fallback, split_digits, add_dummy_prefix, identity normalization, "
                        "remove_extra_whitespaces=False, <unk>=0 <s>=1 </s>=2, no pad; 1 thread, all lines, "
                        "no shuffling, seeded: deterministic",
            "corpus": "400k generated English-like lines (fixed cooking/DIY words + 60k syllable pseudo-words, "
                      "numbers, punctuation)",
            "model_file": str(prefix) + ".model"}


SAMPLE_ANSWERS = [
    "a man <p> the knife </p> [DET] cuts <p> a red onion </p> [DET] on <p> the board </p> [DET].",
    "  A woman <p> a wooden spoon </p> [DET] stirs <p> the soup </p> [DET] in <p> a pot </p> [DET].  ",
    "The person adds <p> 2 eggs </p> [DET] and 250 grams of <p> flour </p> [DET] to <p> the bowl </p> [DET].",
    "Someone is talking to the camera in a kitchen.",
]


def cmd_tokenizer(a) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    setup_official(Path(a.official))
    from transformers import AutoTokenizer, LlamaTokenizer, LlamaTokenizerFast
    T = Timer()
    res = {"transformers": transformers.__version__, "standins": STANDINS}
    llama_dir = out / "llama_tokenizer"
    if not (llama_dir / "tokenizer.model").exists():
        with T("train SentencePiece (LLaMA settings)"):
            spm_info = train_llama_like_spm(out / "_spm", a.vocab, a.seed)
        tok = LlamaTokenizer(vocab_file=spm_info["model_file"], legacy=False, add_bos_token=True,
                             add_eos_token=False, clean_up_tokenization_spaces=False, padding_side="right",
                             model_max_length=4096)
        tok.save_pretrained(str(llama_dir))
        shutil.rmtree(out / "_spm", ignore_errors=True)
        write_json(llama_dir / "spm_training.json", spm_info)
    res["base_tokenizer"] = json.loads((llama_dir / "spm_training.json").read_text())
    res["base_tokenizer"]["legacy"] = False
    res["base_tokenizer"]["note"] = ("LlamaTokenizer(legacy=False) like the Vicuna-v1.5/LLaMA-2 tokenizer_config; "
                                     "trained here, not the real LLaMA vocabulary")

    # GLaMM's tokenizer exactly as GLaMM's train.py (not-pretrained branch) builds it
    glamm_dir = out / "glamm_tokenizer"
    gtok = AutoTokenizer.from_pretrained(str(llama_dir), model_max_length=1536, padding_side="right", use_fast=False)
    gtok.pad_token = gtok.unk_token
    gtok.add_tokens(["<im_start>", "<im_end>"], special_tokens=True)
    gtok.add_tokens(["<bbox>", "<point>", "[SEG]", "<p>", "</p>"], special_tokens=True)
    shutil.rmtree(glamm_dir, ignore_errors=True)
    gtok.save_pretrained(str(glamm_dir))
    res["glamm_tokenizer"] = {
        "path": str(glamm_dir), "len": len(gtok),
        "ids": {t: gtok.convert_tokens_to_ids(t) for t in
                ["<im_start>", "<im_end>", "<bbox>", "<point>", "[SEG]", "<p>", "</p>"]},
        "glamm_train_py_ids([0])": {t: gtok(t, add_special_tokens=False).input_ids for t in
                                     ["<bbox>", "[SEG]", "<p>", "</p>"]},
    }
    # the same tokenizer in the file format of the released GLaMM checkpoints (added_tokens.json,
    # no added_tokens_decoder in tokenizer_config.json: an older transformers wrote them) [I]
    old_dir = out / "glamm_tokenizer_oldformat"
    shutil.rmtree(old_dir, ignore_errors=True)
    old_dir.mkdir(parents=True)
    shutil.copy(glamm_dir / "tokenizer.model", old_dir / "tokenizer.model")
    write_json(old_dir / "added_tokens.json", {t: i for t, i in res["glamm_tokenizer"]["ids"].items()})
    def _at(c):
        return {"content": c, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    write_json(old_dir / "special_tokens_map.json", {"bos_token": _at("<s>"), "eos_token": _at("</s>"),
                                                     "pad_token": _at("<unk>"), "unk_token": _at("<unk>")})
    write_json(old_dir / "tokenizer_config.json", {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "clean_up_tokenization_spaces": False,
        "eos_token": "</s>", "legacy": False, "model_max_length": 1536, "pad_token": None, "padding_side": "right",
        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer", "unk_token": "<unk>"})

    import train as official_train
    from model.llava import conversation as conversation_lib
    from model.llava.mm_utils import tokenizer_image_token

    def grove_setup(version, pretrained):
        argv = ["--version", str(version), "--model_max_length", "1536"] + (["--pretrained"] if pretrained else [])
        args = official_train.parse_args(argv)
        try:
            tk = official_train.setup_tokenizer_and_special_tokens(args)
        except Exception as e:
            # the official function adds the tokens, then reads ids with input_ids[1]/[0]: record the
            # failure, and rebuild the tokenizer with the same add_tokens calls to go on
            err = f"{type(e).__name__}: {e}"
            tk = AutoTokenizer.from_pretrained(str(version), model_max_length=1536, padding_side="right",
                                               use_fast=False)
            tk.pad_token = tk.unk_token
            tk.add_tokens(["<vid_start>", "<vid_end>"], special_tokens=True)
            tk.add_tokens(["[DET]"] if pretrained else ["<bbox>", "<point>", "[DET]", "<p>", "</p>"],
                          special_tokens=True)
            return tk, {"error": err, "len": len(tk),
                        "ids": {t: tk.convert_tokens_to_ids(t) for t in
                                ["<vid_start>", "<vid_end>", "[DET]", "<p>", "</p>", "<bbox>", "<point>", "[SEG]"]},
                        "tokenize_add_special_tokens_false": {t: tk(t, add_special_tokens=False).input_ids for t in
                                                              ["<bbox>", "[DET]", "<p>", "</p>"]},
                        "note": "official function raised; tokenizer rebuilt with the same add_tokens calls"}
        d = {"len": len(tk),
             "ids": {t: tk.convert_tokens_to_ids(t) for t in
                     ["<vid_start>", "<vid_end>", "[DET]", "<p>", "</p>", "<bbox>", "<point>", "[SEG]"]},
             "train_py_args": {k: getattr(args, k) for k in
                               ("det_token_idx", "bbox_token_idx", "bop_token_idx", "eop_token_idx")},
             "tokenize_add_special_tokens_false": {t: tk(t, add_special_tokens=False).input_ids for t in
                                                  ["<bbox>", "[DET]", "<p>", "</p>"]}}
        d["train_py_args_consistent"] = all(
            d["train_py_args"][k] == d["ids"][t] for k, t in
            (("det_token_idx", "[DET]"), ("bbox_token_idx", "<bbox>"), ("bop_token_idx", "<p>"),
             ("eop_token_idx", "</p>")))
        return tk, d

    tok_new, res["grove_pretrained_from_glamm"] = grove_setup(glamm_dir, True)
    tok_old, res["grove_pretrained_from_glamm_oldformat"] = grove_setup(old_dir, True)
    _, res["grove_not_pretrained_from_llama"] = grove_setup(llama_dir, False)
    # the prompts use the tokenizer of the first pretrained=True variant that the official function accepts
    if "error" not in res["grove_pretrained_from_glamm_oldformat"]:
        grove_tok, used = tok_old, "grove_pretrained_from_glamm_oldformat"
    else:
        grove_tok, used = tok_new, "grove_pretrained_from_glamm"
    res["prompts_tokenizer"] = used
    res["explanation"] = (
        "train.py reads <bbox>/<p>/</p> ids with input_ids[1] and [DET] with input_ids[0]. With legacy=False, "
        "LlamaTokenizer.tokenize prepends '\u2581' and drops it again only when the next token is in "
        "all_special_tokens. Tokens loaded from added_tokens.json (the released GLaMM file layout) are not in "
        "all_special_tokens, so '<p>' -> ['\u2581', '<p>'] and [1] is right; '[DET]', added in the session with "
        "special_tokens=True, is, so '[DET]' -> ['[DET]'] and [0] is right. A GLaMM tokenizer saved by "
        "transformers 4.46 (added_tokens_decoder + additional_special_tokens) makes '<bbox>' a single token and "
        "train.py raises IndexError; so does the not-pretrained branch (all tokens added in-session).")

    # (b) the official inference prompt (infer_iground.tokenize_prompt logic)
    def infer_prompt(tk, answer):
        import bleach
        conv = conversation_lib.conv_templates["llava_v1"].copy()
        conv.messages = []
        instructions = ("Could you please give me a description of the video? Please respond with interleaved "
                        "bounding boxes for the corresponding parts of the answer.")
        instructions = bleach.clean(instructions)
        instructions = instructions.replace("&lt;", "<").replace("&gt;", ">")
        instructions = instructions.replace("&lt;", "<").replace("&gt;", ">")
        prompt = "The <video> provides an overview of the video." + "\n" + instructions
        prompt = prompt.replace("<video>", "<vid_start><video><vid_end>")
        conv.append_message(conv.roles[0], prompt)
        conv.append_message(conv.roles[1], answer)
        p = conv.get_prompt()
        return p, tokenizer_image_token(p, tk, return_tensors="pt").tolist()

    try:
        import inspect
        import infer_iground  # noqa: F401  (only to prove the function exists as read)
        res["infer_iground_tokenize_prompt_source"] = inspect.getsource(infer_iground.tokenize_prompt).count("\n")
    except Exception as e:
        res["infer_iground_import"] = f"{type(e).__name__}: {e}"
    prompts = {}
    det_id = grove_tok.convert_tokens_to_ids("[DET]")
    for i, ans in enumerate([""] + SAMPLE_ANSWERS):
        p, ids = infer_prompt(grove_tok, ans)
        prompts[f"answer_{i}"] = {"answer": ans, "prompt": p, "input_ids": ids, "len": len(ids),
                                  "n_det": ids.count(det_id), "tokens": grove_tok.convert_ids_to_tokens(
                                      [t for t in ids if t >= 0])}
    res["infer_iground_prompts"] = prompts
    res["infer_iground_note"] = ("prompt built by the same steps as infer_iground.tokenize_prompt (llava_v1 conversation, "
                                 "bleach clean, <vid_start><video><vid_end>, DEFAULT instruction); conversation and "
                                 "tokenizer_image_token imported from the official training package")

    # (c) the release path: GroveTokenizer (a PreTrainedTokenizerFast) + GroveProcessor.tokenize_prompt
    rel = {}
    try:
        from grove_transformers import GroveProcessor, GroveTokenizer
        fast_dir = out / "glamm_tokenizer_fast"
        ft = LlamaTokenizerFast.from_pretrained(str(old_dir), from_slow=True, legacy=False)
        shutil.rmtree(fast_dir, ignore_errors=True)
        ft.save_pretrained(str(fast_dir))
        gt = GroveTokenizer.from_pretrained(str(fast_dir))
        rel["grove_special_token_ids"] = gt.grove_special_token_ids
        rel["ids"] = {t: gt.convert_tokens_to_ids(t) for t in
                      ["<vid_start>", "<vid_end>", "[DET]", "<p>", "</p>", "<bbox>", "<point>", "[SEG]"]}
        clip_dir = write_clip_folder(out / "clip-vit-tiny-patch14-336", seed=a.seed)
        proc = GroveProcessor(tokenizer=gt, vision_tower=str(clip_dir))
        rp = {}
        for i, ans in enumerate([""] + SAMPLE_ANSWERS):
            ids = proc.tokenize_prompt(None, answer=ans).tolist()
            rp[f"answer_{i}"] = {"input_ids": ids, "len": len(ids),
                                 "equals_training_path": prompts.get(f"answer_{i}", {}).get("input_ids") == ids}
        rel["prompts"] = rp
        rel["note"] = ("GroveTokenizer is a PreTrainedTokenizerFast: built from a tokenizer.json converted from the "
                       "GLaMM slow tokenizer in the released file layout (LlamaTokenizerFast.from_pretrained(from_slow=True, legacy=False))")
        gsave = out / "grove_release_tokenizer"
        shutil.rmtree(gsave, ignore_errors=True)
        gt.save_pretrained(str(gsave))
        rel["saved_to"] = str(gsave)
    except Exception as e:
        import traceback
        traceback.print_exc()
        rel["error"] = f"{type(e).__name__}: {e}"
    res["release_path"] = rel
    res["sample_answers"] = SAMPLE_ANSWERS
    write_json(out / "tokenizer_reference.json", res)

    # fixtures (small)
    fx = REPO / "tests" / "fixtures" / "official" / "tokenizer"
    size = sum(f.stat().st_size for d in (glamm_dir,) for f in d.iterdir()) + (out / "tokenizer_reference.json").stat().st_size
    if size < 1_000_000 and not a.no_fixtures:
        shutil.rmtree(fx, ignore_errors=True)
        fx.mkdir(parents=True)
        for d, name in ((llama_dir, "llama"), (glamm_dir, "glamm"), (old_dir, "glamm_oldformat")):
            (fx / name).mkdir()
            for f in d.iterdir():
                if f.name == "tokenizer.model" and name != "llama":
                    continue  # one copy of the sentencepiece model is enough
                shutil.copy(f, fx / name / f.name)
        shutil.copy(out / "tokenizer_reference.json", fx / "tokenizer_reference.json")
        (fx / "README.md").write_text(
            "Generated by scripts/official_parity/official_side.py tokenizer (see its README).\n"
            "llama/: LLaMA-style SentencePiece BPE trained on a generated corpus (LlamaTokenizer, legacy=False).\n"
            "glamm/ and glamm_oldformat/: GLaMM's tokenizer made from it as GLaMM's train.py does; they use\n"
            "llama/tokenizer.model (copy it next to them before loading).\n"
            "tokenizer_reference.json: ids recorded with the OFFICIAL GROVE code paths.\n")
    log(json.dumps({k: res[k] for k in ("grove_pretrained_from_glamm", "grove_not_pretrained_from_llama")}, indent=1))
    log(f"tokenizer: done ({T.t})")


# ========================================================================= glamm
def glamm_config(clip_dir: Path):
    from transformers import LlamaConfig
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=32007, rms_norm_eps=1e-5, max_position_embeddings=4096,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    # LLaVA-1.5/GLaMM-style multimodal keys the official code reads from the config [I]
    cfg.mm_vision_tower = str(clip_dir)
    cfg.vision_tower = str(clip_dir)
    cfg.mm_vision_select_layer = -2
    cfg.mm_vision_select_feature = "patch"
    cfg.mm_use_im_start_end = True
    cfg.mm_use_im_patch_token = False
    cfg.mm_hidden_size = 256
    cfg.tune_mm_mlp_adapter = False
    cfg.freeze_mm_mlp_adapter = False
    cfg.pretrain_mm_mlp_adapter = None
    cfg.image_aspect_ratio = "square"
    cfg.with_region = True
    cfg.out_dim = 256
    cfg.train_mask_decoder = True
    cfg.num_level_reg_features = 4
    return cfg


def cmd_glamm_build(a) -> None:
    """Runs in its own process (GLaMM's ``model`` package collides with GROVE's)."""
    out = Path(a.out)
    glamm = Path(a.glamm).resolve()
    install_torchvision_standin()
    sys.modules["model.layers"] = _standin_layers_module("model.layers")
    STANDINS["model.layers (GLaMM)"] = "same region-encoder stand-in as for GROVE (GLaMM's layers.py: same layout)"
    sys.path.insert(0, str(glamm))
    # GLaMM was written for transformers 4.28: its AutoConfig.register("llava", ...) collides with the
    # "llava" type built into 4.46.3 and raises.  Registration is made exist_ok while GLaMM imports.
    from transformers import AutoConfig, AutoModelForCausalLM
    reg_c, reg_m = AutoConfig.register, AutoModelForCausalLM.register
    AutoConfig.register = lambda *x, **k: reg_c(*x, **(k | {"exist_ok": True}))
    AutoModelForCausalLM.register = lambda *x, **k: reg_m(*x, **(k | {"exist_ok": True}))
    try:
        from model.GLaMM import GLaMMForCausalLM
        from model.llava.model.language_model.llava_llama import LlavaConfig as GLaMMConfig
    finally:
        AutoConfig.register, AutoModelForCausalLM.register = reg_c, reg_m
    STANDINS["AutoConfig.register (GLaMM)"] = ("GLaMM registers model type 'llava', which transformers 4.46.3 "
                                               "already has: registered with exist_ok=True while GLaMM imports")
    T = Timer()
    clip_dir = write_clip_folder(out / "clip-vit-tiny-patch14-336", seed=a.seed)
    d = glamm_config(clip_dir).to_dict()
    for k in ("model_type", "transformers_version", "architectures"):
        d.pop(k, None)
    cfg = GLaMMConfig(**d)  # model_type "llava", as GLaMM saves it
    torch.manual_seed(a.seed + 500)
    with T("build GLaMMForCausalLM (official GLaMM code, SAM at 1024)"):
        model = GLaMMForCausalLM(cfg, seg_token_idx=32004, vision_pretrained=None, vision_tower=str(clip_dir),
                                 use_mm_start_end=True, bbox_token_idx=32002, num_level_reg_features=4,
                                 with_region=True, ce_loss_weight=1.0, dice_loss_weight=0.5, bce_loss_weight=2.0,
                                 out_dim=256, train_mask_decoder=True).eval()
        # as GLaMM's train.py: the CLIP tower is loaded by initialize_vision_modules(config)
        model.get_model().initialize_vision_modules(model.get_model().config)
    g = torch.Generator().manual_seed(a.seed + 501)
    with torch.no_grad():
        sam = model.get_model().grounding_encoder.image_encoder
        normal_(sam.pos_embed, 0.1, g)
        for blk in sam.blocks:
            normal_(blk.attn.rel_pos_h, 0.1, g)
            normal_(blk.attn.rel_pos_w, 0.1, g)
        touched = perturb_constants(model, g, skip_prefixes=("model.region_encoder.", "model.vision_tower."))
    rel = out / "glamm_release"
    with T("save_pretrained glamm_release (pytorch_model-*.bin shards)"):
        shutil.rmtree(rel, ignore_errors=True)
        model.config.architectures = ["GLaMMForCausalLM"]
        model.save_pretrained(str(rel), safe_serialization=False, max_shard_size="2GB")
        # the released GLaMM checkpoints carry the older tokenizer file layout (added_tokens.json, no
        # added_tokens_decoder); only that one passes GROVE's setup_tokenizer_and_special_tokens
        for f in (out / "glamm_tokenizer_oldformat").iterdir():
            shutil.copy(f, rel / f.name)
    info = {"n_parameters": sum(p.numel() for p in model.parameters()),
            "vision_tower_in_checkpoint": any(k.startswith("model.vision_tower.") for k in model.state_dict()),
            "constant_tensors_perturbed": len(touched), "timings_s": T.t, "peak_rss_gib": round(peak_rss_gib(), 2),
            "standins": STANDINS, "files": sorted(p.name for p in rel.iterdir())}
    write_json(out / "glamm_release_build.json", info)
    log(f"glamm build: {info}")


def cmd_glamm(a) -> None:
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    if not (out / "glamm_tokenizer_oldformat" / "tokenizer_config.json").exists():
        log("glamm_tokenizer missing: running the tokenizer subcommand first")
        subprocess.check_call([sys.executable, __file__, "--official", a.official, "tokenizer", "--out", a.out,
                               "--seed", str(a.seed), "--vocab", str(a.vocab)] + (["--no-fixtures"] if a.no_fixtures else []))
    if not (out / "glamm_release" / "pytorch_model.bin.index.json").exists() or a.rebuild:
        subprocess.check_call([sys.executable, __file__, "--official", a.official, "--glamm", a.glamm,
                               "glamm-build", "--out", a.out, "--seed", str(a.seed)])
    build_info = json.loads((out / "glamm_release_build.json").read_text())

    setup_official(Path(a.official))
    import train as official_train
    T = Timer()
    clip_dir = out / "clip-vit-tiny-patch14-336"
    rel = out / "glamm_release"

    # train.py builds the model in bf16 with flash_attention_2 (CUDA only): the loader is wrapped to
    # keep everything else and use the chosen dtype and eager attention
    real_cls = official_train.GROVEForCausalLM
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[a.dtype]
    load_calls = []

    class _Loader:
        @staticmethod
        def from_pretrained(path, *args, **kw):
            load_calls.append({k: (str(v) if k in ("torch_dtype",) else v) for k, v in kw.items()})
            kw["torch_dtype"] = dtype
            kw["attn_implementation"] = "eager"
            return real_cls.from_pretrained(path, *args, **kw)
    official_train.GROVEForCausalLM = _Loader

    argv = ["--version", str(rel), "--vision-tower", str(clip_dir), "--pretrained", "--lora_r", "0",
            "--lr", "5e-5", "--train_mask_decoder", "--out_dim", "256", "--num_frames", "8",
            "--dataset", "HowToGround", "--ce_loss_weight", "1", "--giou_loss_weight", "2",
            "--temp_objectness_loss_weight", "2", "--model_max_length", "1536"]
    args = official_train.parse_args(argv)
    args.vision_pretrained = None  # no SAM .pth: every SAM tensor comes from the GLaMM checkpoint anyway
    args.local_rank = "cpu"        # prepare_model_for_training moves the vision tower to args.local_rank
    seed_all(a.seed + 900)
    with T("setup_tokenizer_and_special_tokens (pretrained=True)"):
        tokenizer = official_train.setup_tokenizer_and_special_tokens(args)
    ids = {k: getattr(args, k) for k in ("det_token_idx", "bbox_token_idx", "bop_token_idx", "eop_token_idx")}
    with T("initialize_model (GROVEForCausalLM.from_pretrained(GLaMM) + initialize_custom_layers_in_model)"):
        model = official_train.initialize_model(args, tokenizer)
    with T("prepare_model_for_training"):
        official_train.prepare_model_for_training(model, tokenizer, args)
    trainable_after_prepare = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    with T("interpolate_positional_embeddings"):
        official_train.interpolate_positional_embeddings(model)
    trainable_final = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    official_train.GROVEForCausalLM = real_cls

    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    dtypes = sorted({str(v.dtype) for v in sd.values()})
    del model
    gc.collect()

    # ------------------------------------------------------------ provenance
    with T("compare with the GLaMM checkpoint"):
        index = json.loads((rel / "pytorch_model.bin.index.json").read_text())
        by_file = {}
        for k, f in index["weight_map"].items():
            by_file.setdefault(f, []).append(k)
        from safetensors.torch import load_file as st_load
        clip_sd = st_load(str(clip_dir / "model.safetensors"))
        prov = {}
        glamm_keys = set(index["weight_map"])
        for f, keys in by_file.items():
            shard = torch.load(str(rel / f), map_location="cpu", weights_only=True)
            for k in keys:
                if k not in sd or k.startswith("model.vision_tower."):
                    continue  # the vision tower is re-loaded from --vision-tower: compared below
                g, s = shard[k], sd[k]
                prov[k] = _classify(k, g, s)
            del shard
            gc.collect()
        for k, s in sd.items():
            if k in prov:
                continue
            ck = k.replace("model.vision_tower.vision_tower.", "")
            if ck in clip_sd:
                c = clip_sd[ck]
                prov[k] = {"source": "clip_folder", "equal": torch.equal(c.to(s.dtype), s),
                           "equal_before_cast": torch.equal(c, s), "dtype": str(s.dtype)}
            else:
                prov[k] = {"source": "fresh", "shape": list(s.shape), "dtype": str(s.dtype)}
        for k, v in prov.items():
            v["requires_grad_after_prepare"] = k in trainable_after_prepare
            v["requires_grad_final"] = k in trainable_final
        not_loaded = sorted(glamm_keys - set(sd))
    summary = {}
    for v in prov.values():
        key = v["source"] + (":NOT_EQUAL" if v.get("equal") is False else "")
        summary[key] = summary.get(key, 0) + 1
    init_dir = out / ("glamm_init" if a.dtype == "float32" else f"glamm_init_{a.dtype}")
    with T(f"save {init_dir.name}/state.safetensors"):
        save_st(init_dir / "state.safetensors", sd)
    res = {
        "what": "GROVE state after the OFFICIAL initialisation from a GLaMM checkpoint, as grove/train.py main() "
                "does before DeepSpeed: setup_tokenizer_and_special_tokens, initialize_model (from_pretrained + "
                "initialize_custom_layers_in_model), prepare_model_for_training (vision tower re-load from "
                "--vision-tower, CLIP adapters, requires_grad, resize_token_embeddings), "
                "interpolate_positional_embeddings",
        "argv": argv, "args_overridden": {"vision_pretrained": None, "local_rank": "cpu"},
        "from_pretrained_kwargs_official": load_calls,
        "from_pretrained_overrides": {"torch_dtype": a.dtype + " (official: bfloat16)",
                                      "attn_implementation": "eager (official: flash_attention_2, CUDA only)"},
        "vision_tower_reloaded_from": str(clip_dir) + " (--vision-tower; the config's vision_tower key, which "
                                      "from_pretrained overrides with args.vision_tower)",
        "token_ids": ids, "len_tokenizer": len(tokenizer),
        "dtypes_in_state": dtypes,
        "note_dtypes": "prepare_model_for_training casts the vision tower to bfloat16 (official); "
                       "clip tensors are therefore bf16 even in a float32 run",
        "glamm_keys_not_in_grove": not_loaded,
        "summary": summary,
        "trainable_after_prepare_model_for_training": trainable_after_prepare,
        "trainable_after_interpolate_positional_embeddings": trainable_final,
        "tensors": prov,
        "glamm_build": build_info,
        "standins": STANDINS,
        "timings_s": T.t | {"total": round(time.time() - t_all, 1)},
        "peak_rss_gib": round(peak_rss_gib(), 2),
    }
    write_json(init_dir / "provenance.json", res)
    log(f"glamm: summary {summary}; ids {ids}; {len(trainable_final)} trainable tensors; "
        f"{time.time() - t_all:.0f}s")


def _classify(k: str, g: torch.Tensor, s: torch.Tensor) -> dict:
    d = {"glamm_shape": list(g.shape), "shape": list(s.shape), "dtype": str(s.dtype)}
    if g.shape == s.shape:
        d["source"] = "glamm"
        d["equal"] = torch.equal(g.to(s.dtype), s)
        if not d["equal"]:
            d["max_abs_diff"] = float((g.float() - s.float()).abs().max())
        return d
    if k.endswith(("embed_tokens.weight", "lm_head.weight")) and g.shape[1:] == s.shape[1:] and s.shape[0] > g.shape[0]:
        d["source"] = "resized"
        d["old_rows_equal"] = torch.equal(g.to(s.dtype), s[: g.shape[0]])
        d["equal"] = d["old_rows_equal"]
        d["new_rows"] = [g.shape[0], s.shape[0]]
        return d
    d["source"] = "interpolated"
    d["equal"] = None  # by train.py's resize_abs_pos_embedding / resize_rel_pos_embedding
    return d


# ======================================================================= modules
FIXTURE_DIR = REPO / "tests" / "fixtures" / "official"


def _fp16_exact_(t: torch.Tensor) -> torch.Tensor:
    """Round in place onto the float16 grid (values stay float32): stored as float16
    without loss."""
    with torch.no_grad():
        t.copy_(t.half().float())
    return t


def _fixture_weights(module: nn.Module, prefix: str) -> dict:
    return {f"weights.{prefix}{k}": v for k, v in module.state_dict().items()}


def _round_module_(m: nn.Module) -> None:
    for t in list(m.parameters()) + list(m.buffers()):
        if t.is_floating_point():
            _fp16_exact_(t.data)


def build_clip_fixture_modules(cfg: dict):
    from grove_transformers.model.llava.model.multimodal_encoder.modeling_clip import CLIPVisionModel
    from grove_transformers.model.llava.model.multimodal_encoder.pooling import AdaptiveAvgPooling3D
    from transformers import CLIPVisionConfig
    vc = CLIPVisionConfig(hidden_size=cfg["hidden"], intermediate_size=cfg["intermediate"],
                          num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                          image_size=cfg["image"], patch_size=cfg["patch"], hidden_act=cfg["act"],
                          layer_norm_eps=cfg["ln_eps"])
    clip = CLIPVisionModel(vc).eval()
    pool = AdaptiveAvgPooling3D(num_frames=cfg["num_frames"], output_tokens=576)
    proj = nn.Sequential(nn.Linear(cfg["hidden"], cfg["llm_hidden"]), nn.GELU(),
                         nn.Linear(cfg["llm_hidden"], cfg["llm_hidden"])).eval()
    return clip, pool, proj


def run_clip_fixture(mods, cfg, x):
    clip, pool, proj = mods
    with torch.no_grad():
        o = clip(x, output_hidden_states=True)
        hs = o.hidden_states[cfg["select_layer"]][:, 1:]
        pooled = pool(hs)
        return {"hidden_states_select": hs, "pooled": pooled, "projected": proj(pooled)}


def build_llm_fixture_modules(cfg: dict):
    from transformers import LlamaConfig, LlamaForCausalLM
    lc = LlamaConfig(hidden_size=cfg["hidden"], intermediate_size=cfg["intermediate"],
                     num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                     num_key_value_heads=cfg["kv_heads"], vocab_size=cfg["vocab"], rms_norm_eps=cfg["rms_eps"],
                     max_position_embeddings=cfg["max_pos"], rope_theta=cfg["rope_theta"],
                     attn_implementation="eager", tie_word_embeddings=False)
    lm = LlamaForCausalLM(lc).eval()
    fcs = nn.ModuleList([nn.Sequential(nn.Linear(cfg["hidden"], cfg["hidden"]), nn.ReLU(inplace=True),
                                       nn.Linear(cfg["hidden"], cfg["out_dim"]), nn.Dropout(0.0))]).eval()
    return lm, fcs


def run_llm_fixture(mods, cfg, e):
    lm, fcs = mods
    with torch.no_grad():
        o = lm(inputs_embeds=e, output_hidden_states=True)
        last = o.hidden_states[-1]
        q = fcs[0](last)[0, cfg["query_rows"]]
        return {"logits": o.logits, "last_hidden_state": last, "queries": q}


def build_sam_fixture_modules(cfg: dict):
    from grove_transformers.model.SAM.modeling.image_encoder import ImageEncoderViT
    enc = ImageEncoderViT(img_size=cfg["img_size"], patch_size=cfg["patch"], in_chans=3, embed_dim=cfg["embed"],
                          depth=cfg["depth"], num_heads=cfg["heads"], mlp_ratio=cfg["mlp_ratio"],
                          out_chans=cfg["out_chans"], qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=cfg["ln_eps"]),
                          use_rel_pos=True, window_size=cfg["window"], global_attn_indexes=tuple(cfg["global_attn"]),
                          adapter_type="conv").eval()
    return (enc,)


def run_sam_fixture(mods, cfg, x):
    with torch.no_grad():
        return {"image_embeddings": mods[0](x)}


def build_decoder_fixture_modules(cfg: dict):
    from grove_transformers.model.SAM.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
    pe = PromptEncoder(embed_dim=cfg["dim"], image_embedding_size=tuple(cfg["image_embedding_size"]),
                       input_image_size=tuple(cfg["input_image_size"]), mask_in_chans=cfg["mask_in_chans"]).eval()
    md = MaskDecoder(num_multimask_outputs=3,
                     transformer=TwoWayTransformer(depth=cfg["depth"], embedding_dim=cfg["dim"],
                                                   mlp_dim=cfg["mlp_dim"], num_heads=cfg["heads"]),
                     transformer_dim=cfg["dim"], iou_head_depth=3, iou_head_hidden_dim=cfg["iou_hidden"],
                     decoding_type="query", use_temp_objectness=True).eval()
    return pe, md


def run_decoder_fixture(mods, cfg, image_embeddings, queries):
    """Exactly GroveForCausalLM._generate_and_postprocess_masks (the official method, called
    on a minimal stand-in for ``self`` that holds these modules and the config)."""
    from grove_transformers.modeling_grove import GroveForCausalLM
    pe, md = mods
    nf = cfg["num_frames"]
    fake = types.SimpleNamespace(
        model=types.SimpleNamespace(grounding_encoder=types.SimpleNamespace(prompt_encoder=pe, mask_decoder=md)),
        config=types.SimpleNamespace(use_temp_objectness=True, num_frames=nf, temp_objectness_threshold=-1.0))
    pred_embeddings = [queries for _ in range(nf)]  # what _process_hidden_states gives for one video
    with torch.no_grad():
        dense_pe = pe.get_dense_pe()
        boxes, logits = GroveForCausalLM._generate_and_postprocess_masks(fake, pred_embeddings, image_embeddings,
                                                                          [tuple(cfg["original_size_WH"])], dense_pe,
                                                                          infer=False)
        px, _ = GroveForCausalLM._generate_and_postprocess_masks(fake, pred_embeddings, image_embeddings,
                                                                [tuple(cfg["original_size_WH"])], dense_pe, infer=True)
    return {"dense_pe": dense_pe, "bbox_pred": torch.cat(boxes[0]), "objectness_logits": torch.cat(logits[0]),
            "boxes_xyxy_pixels_all": torch.cat(px[0])}


FIXTURES = {
    "clip_tower": {
        "config": {"hidden": 32, "layers": 6, "heads": 2, "intermediate": 64, "image": 48, "patch": 2,
                   "act": "quick_gelu", "ln_eps": 1e-5, "num_frames": 8, "select_layer": -2, "llm_hidden": 64,
                   "pool": "AdaptiveAvgPool3d((8, 8, 9)) over '(b t) (h w) c -> b c t h w' (24x24 grid)",
                   "adapter_quirk": "adapters after layers idx%3==0 reshape the 576 patches as t=8, h=16 (w=36)"},
        "call": ("grove_transformers...modeling_clip.CLIPVisionModel(cfg)(input.pixels, output_hidden_states=True)"
                 ".hidden_states[-2][:, 1:] -> output.hidden_states_select; pooling.AdaptiveAvgPooling3D(num_frames=8)"
                 " -> output.pooled; mm_projector Sequential(Linear(32,64), GELU, Linear(64,64)) -> output.projected"),
        "prefixes": ("model.vision_tower.vision_tower.", None, "model.mm_projector."),
        "build": build_clip_fixture_modules, "run": run_clip_fixture, "inputs": {"pixels": (8, 3, 48, 48)},
    },
    "llm": {
        "config": {"hidden": 64, "layers": 2, "heads": 4, "kv_heads": 4, "intermediate": 128, "vocab": 300,
                   "rms_eps": 1e-5, "max_pos": 4096, "rope_theta": 10000.0, "rope": "default", "out_dim": 32,
                   "query_rows": [20, 27, 35], "attn_implementation": "eager"},
        "call": ("transformers 4.46.3 LlamaForCausalLM(cfg)(inputs_embeds=input.inputs_embeds, "
                 "output_hidden_states=True): .logits -> output.logits, .hidden_states[-1] (after the final norm) -> "
                 "output.last_hidden_state; text_hidden_fcs[0](last_hidden_state)[0, query_rows] -> output.queries"),
        "prefixes": ("", "model.text_hidden_fcs."),
        "build": build_llm_fixture_modules, "run": run_llm_fixture, "inputs": {"inputs_embeds": (1, 40, 64)},
    },
    "sam_encoder": {
        "config": {"img_size": 64, "patch": 2, "embed": 32, "depth": 4, "heads": 2, "mlp_ratio": 4.0,
                   "out_chans": 32, "window": 8, "global_attn": [1, 3], "ln_eps": 1e-6, "qkv_bias": True,
                   "use_rel_pos": True, "adapter_type": "conv", "num_frames": 8},
        "call": ("grove_transformers.model.SAM.modeling.image_encoder.ImageEncoderViT(cfg)(input.pixels) with "
                 "input (1,3,8,64,64) -> output.image_embeddings (8,32,32,32); adapters after the global blocks "
                 "(t=8, h=32)"),
        "prefixes": ("model.grounding_encoder.image_encoder.",),
        "build": build_sam_fixture_modules, "run": run_sam_fixture, "inputs": {"pixels": (1, 3, 8, 64, 64)},
    },
    "grounding_decoder": {
        "config": {"dim": 32, "image_embedding_size": [32, 32], "input_image_size": [64, 64], "mask_in_chans": 16,
                   "depth": 2, "mlp_dim": 64, "heads": 2, "iou_hidden": 32, "decoding_type": "query",
                   "use_temp_objectness": True, "num_frames": 8, "num_queries": 3,
                   "original_size_WH": [640, 360], "order": "row = frame * 3 + query"},
        "call": ("GroveForCausalLM._generate_and_postprocess_masks(self-with-these-modules, [input.queries]*8, "
                 "input.image_embeddings, [(640,360)], prompt_encoder.get_dense_pe(), infer=False) -> "
                 "output.bbox_pred (normalised cx,cy,w,h; rows frame-major), output.objectness_logits; the same with "
                 "infer=True and threshold -1 -> output.boxes_xyxy_pixels_all; output.dense_pe"),
        "prefixes": ("model.grounding_encoder.prompt_encoder.", "model.grounding_encoder.mask_decoder."),
        "build": build_decoder_fixture_modules, "run": run_decoder_fixture,
        "inputs": {"image_embeddings": (8, 32, 32, 32), "queries": (3, 32)},
    },
}


def _run(name, spec, mods, cfg, inputs):
    return spec["run"](mods, cfg, *[inputs[k] for k in spec["inputs"]])


def cmd_modules(a) -> None:
    setup_official(Path(a.official), training_package=False)
    out = Path(a.out) if a.out else FIXTURE_DIR
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    for i, (name, spec) in enumerate(FIXTURES.items()):
        cfg = spec["config"]
        torch.manual_seed(a.seed + 10 * i)
        mods = spec["build"](cfg)
        g = torch.Generator().manual_seed(a.seed + 10 * i + 1)
        with torch.no_grad():
            for m in mods:
                if name == "grounding_decoder":  # random non-zero values in every weight
                    for n, p in m.named_parameters():
                        if "norm" in n and n.endswith("weight"):
                            p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                        elif p.dim() > 1:
                            normal_(p, 1.0 / math.sqrt(p[0].numel()), g)
                        else:
                            normal_(p, 0.1, g)
                perturb_constants(m, g, std=0.05)
                for n, p in m.named_parameters():
                    if n.endswith("alpha"):
                        uniform_(p, 0.3, 0.8, g)
                    elif n.endswith("pos_embed") or ".rel_pos_" in n or n.endswith("position_embedding.weight"):
                        normal_(p, 0.1, g)
                _round_module_(m)
        inputs = {k: _fp16_exact_(torch.randn(shape, generator=g) * (1.0 if k != "queries" else 1.0))
                  for k, shape in spec["inputs"].items()}
        outs = _run(name, spec, mods, cfg, inputs)
        if name == "grounding_decoder":  # objectness bias so that about half pass
            head = mods[1].temporal_objectness_head
            nb, cal = bias_for_half_positive(outs["objectness_logits"], float(head.bias))
            with torch.no_grad():
                head.bias.fill_(nb)
                _fp16_exact_(head.bias.data)
            outs = _run(name, spec, mods, cfg, inputs)
            cal["n_positive_after"] = int((outs["objectness_logits"] > 0).sum())
            cal["min_abs_logit_final"] = float(outs["objectness_logits"].abs().min())
            cal["new_bias_fp16"] = float(head.bias)
            cfg = dict(cfg, objectness_calibration=cal)
        tensors = {}
        for m, pfx in zip(mods, spec["prefixes"]):
            if pfx is None:
                continue
            tensors.update({k: v.half() if v.is_floating_point() else v for k, v in _fixture_weights(m, pfx).items()})
        tensors.update({f"input.{k}": v.half() for k, v in inputs.items()})
        tensors.update({f"output.{k}": v.float() for k, v in outs.items()})
        meta = {"config": json.dumps(cfg), "call": spec["call"], "seed": str(a.seed),
                "dtypes": "weights.* and input.* are stored as float16 and are EXACT (generated on the float16 grid); "
                          "cast them to float32 and compute in float32; output.* are float32",
                "generator": "scripts/official_parity/official_side.py modules (official GROVE code, "
                             f"transformers {transformers.__version__}, torch {torch.__version__})"}
        path = out / f"{name}.safetensors"
        save_st(path, tensors, meta)
        report[name] = {"bytes": path.stat().st_size, "n_weights": sum(k.startswith("weights.") for k in tensors),
                        "outputs": {k: list(v.shape) for k, v in outs.items()}}
        log(f"{name}: {path} {path.stat().st_size / 1e6:.2f} MB")
    log(json.dumps(report, indent=1))


# ====================================================================== glamm gcg
# (H, W) of the fixed test images: landscape 16:9, portrait 3:4, and HowTo100M's usual 455 x 256
GCG_IMAGE_SIZES = ((360, 640), (480, 360), (256, 455))
# teacher-forced answer start (as GROVE's gen_prefix): its [SEG]s are decoded whatever the weights generate
GCG_PREFIX_ANSWER = "<p> A man </p> [SEG] is cutting <p> a red tomato </p> [SEG] on <p> a wooden board </p> [SEG]"
GCG_PREFIX_NEW_TOKENS = 8
# inference() asks evaluate() for up to 512 new tokens; without a KV cache (GLaMM's use_cache=False) each
# step reruns CLIP and the LLM on the whole sequence: about 40 CPU-minutes for 3 images on 2 shared cores
GCG_MAX_NEW_TOKENS = 48


def gcg_images(seed: int) -> list[np.ndarray]:
    """Smooth random colour fields plus pixel noise (RGB uint8), one per GCG_IMAGE_SIZES."""
    from PIL import Image
    rng = np.random.default_rng(seed + 31)
    images = []
    for h, w in GCG_IMAGE_SIZES:
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)).astype(np.int16)
        images.append(np.clip(base + rng.integers(-24, 25, (h, w, 3)), 0, 255).astype(np.uint8))
    return images


def install_torchvision_pil_standin() -> None:
    """SAM's ResizeLongestSide.apply_image calls torchvision's to_pil_image and resize on a uint8 HWC
    array; for PIL input torchvision runs `Image.fromarray` and `img.resize((w, h), BILINEAR)` (its
    default interpolation). Where torchvision cannot be imported, the stand-in does exactly that."""
    install_torchvision_standin()
    if "torchvision" not in STANDINS:
        return
    from PIL import Image
    fn = sys.modules["torchvision.transforms.functional"]

    def to_pil_image(pic, mode=None):
        return Image.fromarray(np.asarray(pic), mode)

    def resize(img, size, interpolation=None, max_size=None, antialias=True):
        assert isinstance(img, Image.Image) and len(size) == 2 and interpolation is None, "stand-in: PIL, (h, w) only"
        return img.resize((int(size[1]), int(size[0])), Image.BILINEAR)

    fn.to_pil_image, fn.resize = to_pil_image, resize
    STANDINS["torchvision (GCG)"] = ("transforms.functional.to_pil_image / resize for SAM's ResizeLongestSide: "
                                     "Image.fromarray and PIL bilinear resize to (h, w), as torchvision does for PIL")


def _import_glamm_gcg(glamm: Path):
    """GLaMM's eval/gcg/infer.py as a module (its __main__ block is not run), with its imports."""
    install_torchvision_pil_standin()
    sys.modules["model.layers"] = _standin_layers_module("model.layers")
    STANDINS["model.layers (GLaMM)"] = "same region-encoder stand-in as for GROVE (GLaMM's layers.py: same layout)"
    sys.path.insert(0, str(glamm))
    from transformers import AutoConfig, AutoModelForCausalLM
    reg_c, reg_m = AutoConfig.register, AutoModelForCausalLM.register
    AutoConfig.register = lambda *x, **k: reg_c(*x, **(k | {"exist_ok": True}))
    AutoModelForCausalLM.register = lambda *x, **k: reg_m(*x, **(k | {"exist_ok": True}))
    try:
        infer = importlib.import_module("eval.gcg.infer")
    finally:
        AutoConfig.register, AutoModelForCausalLM.register = reg_c, reg_m
    return infer


def _official_instruction(glamm: Path) -> str:
    """The GCG instruction exactly as eval/gcg/infer.py's __main__ assigns it (read from the source)."""
    import ast
    tree = ast.parse((glamm / "eval" / "gcg" / "infer.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "instruction" for t in node.targets):
            return ast.literal_eval(node.value)
    raise RuntimeError("eval/gcg/infer.py: no `instruction = ...` found")


@contextlib.contextmanager
def _cpu_float32():
    """GLaMM's GCG code moves tensors with `.cuda()` and casts pixels with `.bfloat16()`: on this CPU-only,
    float32 run both are the identity."""
    cuda, bf16 = torch.Tensor.cuda, torch.Tensor.bfloat16
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.Tensor.bfloat16 = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda, torch.Tensor.bfloat16 = cuda, bf16


def _load_glamm_as_infer_does(infer, rel: Path, tmp: Path):
    """eval/gcg/infer.py __main__'s model set-up, float32 on the CPU (official: bf16 on cuda)."""
    from transformers import AutoTokenizer, CLIPImageProcessor
    argv = sys.argv
    sys.argv = ["infer.py", "--hf_model_path", str(rel), "--output_dir", str(tmp)]
    try:
        args = infer.parse_args()
    finally:
        sys.argv = argv
    tokenizer = AutoTokenizer.from_pretrained(args.hf_model_path, cache_dir=None, model_max_length=args.model_max_length,
                                              padding_side="right", use_fast=False)
    tokenizer.pad_token = tokenizer.unk_token
    seg_official = tokenizer("[SEG]", add_special_tokens=False).input_ids[0]
    seg_token_idx = tokenizer.convert_tokens_to_ids("[SEG]")
    if seg_official != seg_token_idx:  # the stand-in tokenizer is legacy=False: "[SEG]" -> ["▁", "[SEG]"]
        STANDINS["seg_token_idx"] = (f"tokenizer('[SEG]').input_ids[0] is {seg_official} with this SentencePiece "
                                     f"stand-in; the [SEG] id {seg_token_idx} is used (GLaMM's released tokenizer gives it)")
    model = infer.GLaMMForCausalLM.from_pretrained(args.hf_model_path, low_cpu_mem_usage=True, seg_token_idx=seg_token_idx,
                                                   torch_dtype=torch.float32)
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.get_model().initialize_vision_modules(model.get_model().config)
    model.get_model().get_vision_tower().to(dtype=torch.float32)
    model = model.float().eval()
    # GLaMM reads the [SEG] states from the LAST generation step's hidden states, which cover the whole
    # sequence only without a KV cache. Under GLaMM's transformers 4.28, generate() rebuilds a generation
    # config made from the model config when that changed (GLaMMModel sets use_cache=False); 4.46.3 keeps
    # the saved generation_config.json (use_cache defaults to True) and the read-out fails at step 2.
    model.generation_config.use_cache = model.config.use_cache
    STANDINS["generation_config.use_cache"] = (
        f"set to the model config's {model.config.use_cache} as transformers 4.28 (GLaMM's pin) does in generate(); "
        "4.46.3 would keep the saved default True, and GLaMM's evaluate() then fails")
    clip_image_processor = CLIPImageProcessor.from_pretrained(model.config.vision_tower)
    transform = infer.ResizeLongestSide(args.image_size)
    infer.args, infer.tokenizer, infer.model = args, tokenizer, model
    infer.clip_image_processor, infer.transform = clip_image_processor, transform
    return model, tokenizer, seg_token_idx


@torch.no_grad()
def _gcg_rescale(model, seed: int) -> None:
    """Give the reduced GLaMM a grounding path that matters, as make_every_path_matter does for GROVE
    (LLaMA's N(0, 0.02) init leaves the [SEG] queries and their masks nearly constant): weights
    N(0, 1/fan_in), biases N(0, 0.1), norm weights 1 + N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed + 1301)
    m = model.get_model()
    for mod in (m.layers, m.text_hidden_fcs, m.mm_projector, m.grounding_encoder.mask_decoder,
                m.grounding_encoder.prompt_encoder):
        for n, p in mod.named_parameters():
            if "norm" in n and n.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() > 1:
                normal_(p, 1.0 / math.sqrt(p[0].numel()), g)
            else:
                normal_(p, 0.1, g)


@torch.no_grad()
def _gcg_tag_rows(model, frequent: list[int], ids: dict) -> dict:
    """Make the model answer with GCG tags: the lm_head rows of `[SEG]`, `<p>`, `</p>` become 1.05 x the
    rows of the three tokens its greedy answers use most, so the tags appear where those tokens would."""
    head = model.lm_head.weight
    for tag, source in zip(("seg", "bop", "eop"), frequent):
        head[ids[tag]] = 1.05 * head[source]
    return {tag: int(source) for tag, source in zip(("seg", "bop", "eop"), frequent)}


def cmd_glamm_gcg(a) -> None:
    """GLaMM's GCG inference (eval/gcg/infer.py `inference`, run verbatim) on fixed images, with a
    reduced-width GLaMM made to answer with GCG tags; writes DIR/glamm_gcg/ (the checkpoint, GLaMM layout)
    and DIR/glamm_gcg_reference/ (images, pixels, ids, mask logits, texts)."""
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "glamm_tokenizer_oldformat" / "tokenizer_config.json").exists():
        subprocess.check_call([sys.executable, __file__, "--official", a.official, "tokenizer", "--out", a.out,
                               "--seed", str(a.seed), "--vocab", str(a.vocab), "--no-fixtures"])
    if not (out / "glamm_release" / "pytorch_model.bin.index.json").exists():
        subprocess.check_call([sys.executable, __file__, "--official", a.official, "--glamm", a.glamm,
                               "glamm-build", "--out", a.out, "--seed", str(a.seed)])
    import cv2
    glamm = Path(a.glamm).resolve()
    infer = _import_glamm_gcg(glamm)
    T = Timer()
    ref = out / "glamm_gcg_reference"
    ref.mkdir(exist_ok=True)
    ids = {"seg": 32004, "bop": 32005, "eop": 32006, "im_start": 32000, "im_end": 32001}
    images = gcg_images(a.seed)
    paths = []
    for i, image in enumerate(images):
        paths.append(ref / f"image_{i}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))  # PNG: lossless
    instruction = _official_instruction(glamm)

    ckpt = out / "glamm_gcg"
    tweak = None
    if not (ckpt / "pytorch_model.bin.index.json").exists() or a.rebuild:
        with T("load glamm_release as infer.py does"), _cpu_float32():
            model, tokenizer, _ = _load_glamm_as_infer_does(infer, out / "glamm_release", ref)
        with T("greedy answers of the rescaled model (choose the tag rows)"), _cpu_float32():
            _gcg_rescale(model, a.seed)
            counts: dict[int, int] = {}
            for path in paths:  # generate only (evaluate() would also run SAM)
                image_np = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
                clip = infer.clip_image_processor.preprocess(image_np, return_tensors="pt")["pixel_values"]
                input_ids = _gcg_prompt_ids(infer, tokenizer, instruction)
                seq = model.generate(images=clip, input_ids=input_ids, max_new_tokens=48, num_beams=1)
                for t in seq[0, input_ids.shape[1]:].tolist():
                    counts[t] = counts.get(t, 0) + 1
            frequent = [t for t, _ in sorted(counts.items(), key=lambda kv: -kv[1]) if t not in (1, 2)][:3]
            rows = _gcg_tag_rows(model, frequent, ids)
        tweak = {"rescaled": "model.layers, text_hidden_fcs, mm_projector, mask_decoder, prompt_encoder: weights "
                             "N(0, 1/fan_in), biases N(0, 0.1), norm weights 1 + N(0, 0.1)",
                 "lm_head_rows": "1.05 x the rows of the three most frequent greedy tokens (48 per image) of the "
                                 "rescaled model", "lm_head_rows_from": rows,
                 "greedy_token_counts_top10": sorted(counts.items(), key=lambda kv: -kv[1])[:10]}
        with T("save glamm_gcg (GLaMM layout)"):
            shutil.rmtree(ckpt, ignore_errors=True)
            model.save_pretrained(str(ckpt), safe_serialization=False, max_shard_size="2GB")
            for f in (out / "glamm_tokenizer_oldformat").iterdir():
                shutil.copy(f, ckpt / f.name)
            write_json(ckpt / "gcg_weights.json", tweak)
        del model
        gc.collect()
    tweak = json.loads((ckpt / "gcg_weights.json").read_text())

    with T("load glamm_gcg as infer.py does"), _cpu_float32():
        model, tokenizer, seg_token_idx = _load_glamm_as_infer_does(infer, ckpt, ref)
    captured: dict = {}

    def wrap(obj, name, key, record_args=False):  # record what the official call passes and returns
        orig = getattr(obj, name)

        def w(*args, **kw):
            r = orig(*args, **kw)
            captured.setdefault(key, []).append((args, kw, r) if record_args else r)
            return r
        setattr(obj, name, w)

    wrap(model, "_process_hidden_states", "queries")
    wrap(model.get_model().grounding_encoder, "postprocess_masks", "low_res", record_args=True)
    # stand-ins for time, not for behaviour: inference()'s 512-token budget is capped, and SAM's embedding
    # of the same pixels is computed once per image (the prefix run reuses it: the same values)
    evaluate, embed = model.evaluate, model.get_grounding_encoder_embs  # evaluate() calls self.get_...
    memo: dict = {}

    def capped_evaluate(*args, **kw):
        kw["max_tokens_new"] = min(kw.get("max_tokens_new", 32), GCG_MAX_NEW_TOKENS)
        result = evaluate(*args, **kw)
        captured.setdefault("evaluate", []).append((args, kw, result))
        return result

    def embed_once(pixels):
        if "pixels" not in memo or not torch.equal(memo["pixels"], pixels):
            memo["pixels"], memo["embeddings"] = pixels.clone(), embed(pixels)
        captured.setdefault("sam", []).append(memo["embeddings"])
        return memo["embeddings"]

    model.evaluate, model.get_grounding_encoder_embs = capped_evaluate, embed_once
    STANDINS["evaluate max_tokens_new"] = (f"capped at {GCG_MAX_NEW_TOKENS} (inference() asks for 512; "
                                           "a CPU-time limit, the same cap on the project side)")
    STANDINS["get_grounding_encoder_embs"] = "memoised per image (the prefix run of an image reuses its SAM embedding)"

    tensors: dict[str, torch.Tensor] = {}
    records = []
    for i, path in enumerate(paths):
        captured.clear()
        with T(f"image {i} {GCG_IMAGE_SIZES[i]}: inference() of eval/gcg/infer.py"), _cpu_float32():
            caption, pred_masks, phrases = infer.inference(instruction, str(path))
        (e_args, _, (output_ids, masks)), = captured["evaluate"]
        image_clip, image_sam, input_ids, resize_list, original_size_list = e_args[:5]
        tensors[f"image_{i}"] = torch.from_numpy(images[i].copy())
        tensors[f"clip_pixels_{i}"] = image_clip[0].float()
        tensors[f"sam_pixels_{i}"] = image_sam[0].float()
        tensors[f"sam_embeddings_{i}"] = captured["sam"][0][0].float()
        free = _gcg_outputs(tensors, f"free_{i}", input_ids, output_ids, masks, captured)
        text_output = tokenizer.decode(output_ids[0][output_ids[0] != infer.IMAGE_TOKEN_INDEX], skip_special_tokens=False)
        # the same image with a teacher-forced answer start: evaluate() decodes every [SEG] of the sequence
        prefixed = _gcg_prompt_ids(infer, tokenizer, instruction, " " + GCG_PREFIX_ANSWER)
        assert torch.equal(prefixed[0, : input_ids.shape[1]], input_ids[0]), "prompt + prefix does not extend the prompt"
        captured.clear()
        with T(f"image {i}: evaluate() on prompt + answer prefix (+{GCG_PREFIX_NEW_TOKENS} tokens)"), _cpu_float32():
            out_ids, pmasks = model.evaluate(image_clip, image_sam, prefixed, resize_list, original_size_list,
                                             max_tokens_new=GCG_PREFIX_NEW_TOKENS, bboxes=None)
        prefix = _gcg_outputs(tensors, f"prefix_{i}", prefixed, out_ids, pmasks, captured)
        records.append({"image": path.name, "size_hw": list(GCG_IMAGE_SIZES[i]), "resize_hw": list(resize_list[0]),
                        "original_hw": list(original_size_list[0]), "free": free | {"text_output": text_output,
                        "caption": caption, "phrases": phrases}, "prefix": prefix | {"answer_prefix": GCG_PREFIX_ANSWER}})
        log(f"image {i}: {free['n_generated']} generated ids, {free['n_seg']} [SEG]; caption {caption[:100]!r}; "
            f"phrases {phrases[:6]}; prefix run: {prefix['n_seg']} [SEG]")
    save_st(ref / "reference.safetensors", tensors)
    write_json(ref / "reference.json", {
        "what": "GLaMM GCG inference (eval/gcg/infer.py inference(), verbatim) on the reduced-width GLaMM in "
                "DIR/glamm_gcg, float32 on the CPU, plus evaluate() on prompt + a teacher-forced answer start",
        "checkpoint": str(ckpt), "instruction": instruction, "seg_token_idx": seg_token_idx, "ids": ids,
        "max_new_tokens": {"free": GCG_MAX_NEW_TOKENS, "prefix": GCG_PREFIX_NEW_TOKENS},
        "images": records, "weights": tweak, "standins": STANDINS,
        "deviations": {"dtype": "float32 (official: bf16: model.bfloat16() and image.bfloat16())",
                       "device": "CPU (official: cuda; Tensor.cuda is the identity here)"},
        "timings_s": T.t, "peak_rss_gib": round(peak_rss_gib(), 2)})
    log(f"glamm-gcg: wrote {ref}")


def _gcg_prompt_ids(infer, tokenizer, instruction: str, answer: str = "") -> torch.Tensor:
    """(1, L) ids of inference()'s prompt (conversation llava_v1, `<im_start><image><im_end>`), optionally
    followed by the start of an answer, through the official tokenizer_image_token."""
    conv = infer.conversation_lib.conv_templates["llava_v1"].copy()
    conv.messages = []
    image = infer.DEFAULT_IM_START_TOKEN + infer.DEFAULT_IMAGE_TOKEN + infer.DEFAULT_IM_END_TOKEN
    conv.append_message(conv.roles[0], f"The {image} provides an overview of the picture.\n" + instruction)
    conv.append_message(conv.roles[1], "")
    return infer.tokenizer_image_token(conv.get_prompt() + answer, tokenizer, return_tensors="pt")[None]


def _gcg_outputs(tensors: dict, key: str, input_ids, output_ids, masks, captured) -> dict:
    """Record one evaluate() call: ids, [SEG] queries, low-res and final mask logits."""
    tensors[f"{key}_input_ids"] = input_ids[0].long()
    tensors[f"{key}_output_ids"] = output_ids[0].long()
    n_seg = int(masks[0].shape[0])
    if n_seg:
        tensors[f"{key}_mask_logits"] = masks[0].float()
        tensors[f"{key}_queries"] = captured["queries"][0][1][0].float()
        (args, _, _), = captured["low_res"]  # postprocess_masks(low_res_masks (S, 1, h, w), input_size=, original_size=)
        tensors[f"{key}_low_res"] = args[0][:, 0].float()
    return {"n_prompt": int(input_ids.shape[1]), "n_generated": int(output_ids.shape[1] - input_ids.shape[1]), "n_seg": n_seg}


# ================================================================== entry point
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", required=True, help="path to the official GROVE checkout (read-only)")
    p.add_argument("--glamm", default="/work/official/glamm", help="path to the official GLaMM checkout (glamm)")
    p.add_argument("command", choices=["model", "glamm", "glamm-build", "glamm-gcg", "tokenizer", "modules",
                                       "check-standin", "release-roundtrip"])
    p.add_argument("--out", default=None, help="output directory (modules: default tests/fixtures/official)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab", type=int, default=32000, help="tokenizer: SentencePiece vocabulary size")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="glamm: dtype of the GROVE initialisation (official: bfloat16)")
    p.add_argument("--rebuild", action="store_true", help="glamm: rebuild the GLaMM checkpoint")
    p.add_argument("--no-fixtures", action="store_true", help="tokenizer: do not copy into tests/fixtures")
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.command != "modules" and not a.out and a.command != "check-standin":
        p.error("--out is required")
    if a.command == "check-standin":
        print(json.dumps(check_region_standin(Path(a.official).resolve()), indent=1))
        return
    {"model": cmd_model, "glamm": cmd_glamm, "glamm-build": cmd_glamm_build, "glamm-gcg": cmd_glamm_gcg,
     "tokenizer": cmd_tokenizer,
     "modules": cmd_modules, "release-roundtrip": cmd_release_roundtrip}[a.command](a)


if __name__ == "__main__":
    main()
