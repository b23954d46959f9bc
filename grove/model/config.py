"""One configuration class for the GROVE model, with named profiles.

`GroveConfig.paper()` is the GLaMM-based setup of the paper (grove_spec.md 1, 2): Vicuna-7B-class
LLaMA, CLIP ViT-L/14-336 read at its penultimate layer, SAM ViT-H at 512 px with 4 spatio-temporal
adapters after its global-attention blocks, 8 frames, 576 video tokens, a 256-d query.
`GroveConfig.tiny()` keeps every class and every code path but shrinks the dimensions so that one
training step of one clip takes a few tens of milliseconds on one CPU core.

The transformers sub-configs are plain dicts (keyword arguments of LlamaConfig, CLIPVisionConfig,
SamVisionConfig, SamMaskDecoderConfig and, for `grounding_encoder="sam2"`, Sam2HieraDetConfig /
Sam2VisionConfig), so the whole config round-trips through JSON (`to_dict` / `from_dict`) and a
checkpoint can carry it. `*_source` fields name a local folder or hub id to load pretrained weights
from (`save_pretrained` layout); `None` means random initialisation from the dict.

`GroveConfig.paper_small()` (profile "paper-small") is `paper()` with only widths and depths reduced
(and random weights, float32, the download-free tokenizer): the paper's code path on a CPU.

CLIP adapters as the official code runs them (official_interop.md): after every third CLIP layer,
with `clip_adapter_rows=16` the 24x24 patch raster is read as 16 rows of 36 tokens before the 3-D
convolution (the official `rearrange(..., h=16)`; None reads the true grid), and the tower runs under
`no_grad`, so the adapters never train (`train_clip_adapters=False`). `paper()` keeps both quirks.
`base_weights` names a full-weights checkpoint (an imported GROVE or GLaMM model, grove/weights/):
a trainable-only checkpoint whose config names it loads everything else from there.

Freezing (grove_spec 2.2): `freezing="paper"` trains the adapters, the interpolated SAM position
embeddings, the box decoder, both heads, both projectors and the LLM's `embed_tokens` and `lm_head`;
`freezing="full"` trains everything the forward pass uses (the `tiny` default: a randomly initialised
backbone has nothing to keep frozen). Table 6's ablations: `unfreeze=False` also freezes the box
decoder and the VL/LQ projectors; `sam_adapters=False` removes the adapters.

Box readout (how a box comes out of the SAM decoder; box_decoder.py):
- `box_readout="query_mlp"` (the paper, grove_spec 1.6): the box head (MLP -> sigmoid cxcywh) on
  the query token's output. With a pretrained SAM + GLaMM decoder this localises from the start; from
  random weights the MLP must untangle position from image content first, which the tiny model does
  not manage in a few CPU minutes (AP50 ~0 after 2000 steps).
- `box_readout="mask"` (the `tiny` default): SAM's own localisation path, as LISA / GLaMM use it.
  Mask logits = hypernetwork(mask token 0 output + the query) . upscaled image embedding; the box is
  the soft-argmax centre and the soft extent (sqrt(12 var), the width of a uniform box of that
  variance) of the softmax over the frame's mask cells. Position is then given by the mask grid, not
  learnt. Options that help a randomly initialised model learn it (measured in
  benchmarks/bench_learning.py; each off in `paper()`):
  - `mask_pixel_features`: high-resolution features for the mask, as SAM2's `conv_s0` adds stride-4
    backbone features to the upscaled embedding; a plain ViT has none, so a small stride-4 conv stem
    reads them from the grounding pixels (a 16 px token averages a 20 px object into the background).
  - `mask_loss_weight`: a BCE term on the mask logits against the GT box rasterised onto the mask grid
    (each cell's covered fraction): SAM's decoder is pre-trained on masks; from scratch, the boxes
    are the only masks there are. The filled box is also the mask whose soft moments give the box.
  - `decoder_init="xavier"`: Glorot-uniform Linear layers (zero bias) and PyTorch's default conv init
    in a randomly initialised SAM decoder. transformers' N(0, 0.02) suits width 256+ checkpoints that
    get overwritten; at width 64 it shrinks the signal ~6x per layer and leaves the mask logits ~1e-4.
    Pretrained decoders (`sam_source`) are never re-initialised.

Query (grove_spec 1.5): the hidden state just before each [DET]. `query_phrase_pooling` adds the
mean of the phrase's own tokens (between its `<p>` and `</p>`) before the LQ projector: "hidden"
(their last hidden states; the `tiny` default) or "embedding" (their input embeddings), "none" in
`paper()`. A pretrained LLM already writes the phrase into the state at `</p>`; a randomly
initialised one does not for thousands of steps, and every phrase of a frame got the same box
(measured: near-identical boxes for all phrases of a clip after 1,000 steps).
Global encoder input (`global_image_aspect`): "crop" is CLIP's own preprocessing (shortest side to
the input size, centre crop; grove_spec 1.2), which the paper uses; on a 16:9 frame it cuts 44 % of
the width, so objects at the sides never reach the captioner. "pad" (LLaVA-1.5's `expand2square`)
keeps the whole frame: longest side to the input size, padded to a square with
CLIP's mean colour.
Mask-loss option `mask_dice_weight`: GLaMM's / LISA's dice term beside the BCE one (losses.py).
Video tokens (`video_token_selection`): "all" N pooled tokens reach the LLM (the paper); "objectness"
(not in the paper; video_selection.py) hides the tokens a box-supervised head scores as background,
weighted by `video_selection_weight` in the loss ("vobj"). A pre-trained LLM finds the object tokens
among the background ones by itself; a randomly initialised one does not learn to in a CPU budget.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

GroundingEncoder = Literal["sam", "sam2"]
Freezing = Literal["paper", "full"]
BoxReadout = Literal["query_mlp", "mask"]
DecoderInit = Literal["hf", "xavier"]
QueryPooling = Literal["none", "hidden", "embedding"]
ImageAspect = Literal["crop", "pad"]
VideoTokenSelection = Literal["all", "objectness"]

PROFILES = ("tiny", "paper", "paper-small")
FREEZING_MODES = ("paper", "full")
GROUNDING_ENCODERS = ("sam", "sam2")
BOX_READOUTS = ("query_mlp", "mask")
DECODER_INITS = ("hf", "xavier")
QUERY_POOLINGS = ("none", "hidden", "embedding")
IMAGE_ASPECTS = ("crop", "pad")
VIDEO_TOKEN_SELECTIONS = ("all", "objectness")
# the options that only box_readout="mask" uses, at their "off" values
MASK_ONLY_OFF = {"mask_pixel_features": False, "mask_loss_weight": 0.0, "mask_dice_weight": 0.0}


@dataclass
class GroveConfig:
    profile: str = "tiny"
    num_frames: int = 8
    global_image_size: int = 64
    # how a non-square frame becomes the global encoder's square input (module docstring)
    global_image_aspect: ImageAspect = "crop"
    grounding_image_size: int = 128
    grounding_encoder: GroundingEncoder = "sam"

    # global encoder: CLIP hidden_states[clip_select_layer] patch tokens, pooled to video_pool (t, h, w)
    clip_select_layer: int = -2
    video_pool: tuple[int, int, int] = (8, 4, 4)
    clip_adapters: bool = False
    clip_adapter_every: int = 3
    # how a CLIP adapter reads the patch raster (module docstring): None = the true square grid;
    # R = as R rows of N / R tokens (the official code reads 24x24 tokens as 16x36, `paper()`)
    clip_adapter_rows: int | None = None
    # the official CLIP tower runs under no_grad, so its adapters never train (`paper()`: False)
    train_clip_adapters: bool = True
    # which video tokens the LLM sees (module docstring): "all" (paper) or "objectness"
    video_token_selection: VideoTokenSelection = "all"
    video_selection_weight: float = 1.0
    sam_adapters: bool = True
    adapter_kernel_size: int = 3

    llm: dict[str, Any] = field(default_factory=dict)
    clip: dict[str, Any] = field(default_factory=dict)
    sam: dict[str, Any] = field(default_factory=dict)
    sam_decoder: dict[str, Any] = field(default_factory=dict)
    sam2: dict[str, Any] = field(default_factory=dict)

    # a full-weights checkpoint folder (grove weights import) that gives every weight a trainable-only
    # checkpoint leaves out; relative paths resolve against the folder of the config that names it
    base_weights: str | None = None
    # pretrained components: a local folder or hub id each (None: random init from the dicts above)
    llm_source: str | None = None
    clip_source: str | None = None
    sam_source: str | None = None
    # "tiny-wordpiece" builds the download-free tokenizer; anything else is a path or hub id
    tokenizer_source: str = "tiny-wordpiece"
    tiny_vocab_size: int = 8192
    max_length: int = 1536

    ce_weight: float = 1.0
    giou_weight: float = 2.0
    l1_weight: float = 2.0
    tobj_weight: float = 2.0
    use_objectness: bool = True
    objectness_threshold: float = 0.5

    # how the box is read from the decoder (module docstring): the paper's MLP or SAM's mask
    box_readout: BoxReadout = "query_mlp"
    mask_pixel_features: bool = False
    mask_loss_weight: float = 0.0
    mask_dice_weight: float = 0.0
    # query = hidden state before [DET] + the mean hidden state of its phrase's tokens (module docstring)
    query_phrase_pooling: QueryPooling = "none"
    decoder_init: DecoderInit = "hf"

    freezing: Freezing = "full"
    unfreeze: bool = True
    dtype: str = "float32"
    # the LLM's attention kernel: "sdpa", "eager", or "flash_attention_2" where flash-attn is installed
    attn_implementation: str = "sdpa"
    # seed of the random initialisation, so frozen random weights are the same in every process
    init_seed: int = 0

    def __post_init__(self) -> None:
        self.video_pool = tuple(int(v) for v in self.video_pool)  # type: ignore[assignment]
        self.validate()

    # ------------------------------------------------------------------ profiles
    @classmethod
    def tiny(cls, **overrides: Any) -> "GroveConfig":
        """Small random-init model: trains on 2 CPU cores in minutes on the synthetic dataset."""
        base = dict(
            profile="tiny",
            global_image_size=64,
            grounding_image_size=128,
            # every CLIP patch of every frame, shown to the LLM only where the selector sees an object
            # (module docstring): caption CE gain from the video 0.17 vs 0.006 nats/token with all of
            # (8, 4, 4), generated-caption AP50 8.3 vs 3.7 (bench_learning, seed 42)
            video_pool=(8, 8, 8),
            video_token_selection="objectness",
            clip_adapters=False,
            llm=dict(
                vocab_size=8192,
                hidden_size=128,
                intermediate_size=256,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=4,
                max_position_embeddings=1024,
                rms_norm_eps=1e-5,
                tie_word_embeddings=False,
            ),
            clip=dict(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=3,
                num_attention_heads=4,
                image_size=64,
                patch_size=8,
                hidden_act="quick_gelu",
            ),
            sam=dict(
                hidden_size=48,
                output_channels=64,
                num_hidden_layers=3,
                num_attention_heads=4,
                image_size=128,
                patch_size=16,
                window_size=4,
                global_attn_indexes=[1, 2],
                mlp_ratio=2.0,
                num_pos_feats=32,
                # SamVisionConfig's default (1e-10) leaves a randomly initialised ViT dead
                initializer_range=0.02,
            ),
            sam_decoder=dict(
                hidden_size=64,
                mlp_dim=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                iou_head_hidden_dim=64,
            ),
            sam2=dict(
                backbone=dict(
                    hidden_size=32,
                    num_attention_heads=1,
                    blocks_per_stage=[1, 1, 3, 1],
                    embed_dim_per_stage=[32, 64, 96, 128],
                    num_attention_heads_per_stage=[1, 1, 2, 2],
                    window_size_per_stage=[4, 2, 4, 2],
                    # inside a stage, as in Hiera-L: a stage's first block pools and cannot be global
                    global_attention_blocks=[3, 4],
                    window_positional_embedding_background_size=[4, 4],
                ),
                fpn_hidden_size=64,
            ),
            tokenizer_source="tiny-wordpiece",
            tiny_vocab_size=8192,
            max_length=1024,
            freezing="full",
            # a random-init decoder localises through SAM's mask path (module docstring)
            box_readout="mask",
            mask_pixel_features=True,
            mask_loss_weight=2.0,
            decoder_init="xavier",
            mask_dice_weight=2.0,
            query_phrase_pooling="hidden",
        )
        base.update(overrides)
        if base["box_readout"] != "mask":  # tiny(box_readout="query_mlp"): the mask-only options go too
            base.update({k: v for k, v in MASK_ONLY_OFF.items() if k not in overrides})
        return cls(**base)

    @classmethod
    def paper(cls, **overrides: Any) -> "GroveConfig":
        """The paper's model (grove_spec 1): Vicuna-7B, CLIP ViT-L/14-336, SAM ViT-H at 512 px.

        Sources default to the public HF-format checkpoints of each component; point them at local
        folders on an offline cluster. GLaMM's own projector / LQ weights are not in these sources.
        """
        base = dict(
            profile="paper",
            global_image_size=336,
            grounding_image_size=512,
            video_pool=(8, 8, 9),
            clip_adapters=True,
            clip_adapter_rows=16,
            train_clip_adapters=False,
            llm=dict(
                vocab_size=32000,
                hidden_size=4096,
                intermediate_size=11008,
                num_hidden_layers=32,
                num_attention_heads=32,
                num_key_value_heads=32,
                max_position_embeddings=4096,
                rms_norm_eps=1e-5,
                tie_word_embeddings=False,
            ),
            clip=dict(
                hidden_size=1024,
                intermediate_size=4096,
                num_hidden_layers=24,
                num_attention_heads=16,
                image_size=336,
                patch_size=14,
                projection_dim=768,
                hidden_act="quick_gelu",
            ),
            sam=dict(
                hidden_size=1280,
                output_channels=256,
                num_hidden_layers=32,
                num_attention_heads=16,
                image_size=512,
                patch_size=16,
                window_size=14,
                global_attn_indexes=[7, 15, 23, 31],
                mlp_ratio=4.0,
                num_pos_feats=128,
                initializer_range=0.02,
            ),
            sam_decoder=dict(
                hidden_size=256,
                mlp_dim=2048,
                num_hidden_layers=2,
                num_attention_heads=8,
                iou_head_hidden_dim=256,
            ),
            # SAM2.1 Hiera-L, for grounding_encoder="sam2"
            sam2=dict(
                backbone=dict(
                    hidden_size=144,
                    num_attention_heads=2,
                    blocks_per_stage=[2, 6, 36, 4],
                    embed_dim_per_stage=[144, 288, 576, 1152],
                    num_attention_heads_per_stage=[2, 4, 8, 16],
                    window_size_per_stage=[8, 4, 16, 8],
                    global_attention_blocks=[23, 33, 43],
                    window_positional_embedding_background_size=[7, 7],
                ),
                fpn_hidden_size=256,
            ),
            llm_source="lmsys/vicuna-7b-v1.5",
            clip_source="openai/clip-vit-large-patch14-336",
            sam_source="facebook/sam-vit-huge",
            tokenizer_source="lmsys/vicuna-7b-v1.5",
            max_length=1536,
            freezing="paper",
            dtype="bfloat16",
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def paper_small(cls, **overrides: Any) -> "GroveConfig":
        """`paper()` at reduced widths and depths, for CPUs: every option and code path of the paper
        (its image sizes, grids, 576 video tokens, adapters and their official reshape, query MLP,
        freezing), with random weights (no sources), float32 and the download-free tokenizer."""
        base = dict(
            profile="paper-small",
            llm=dict(
                vocab_size=32000,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=4,
                max_position_embeddings=4096,
                rms_norm_eps=1e-5,
                tie_word_embeddings=False,
            ),
            clip=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=6,
                num_attention_heads=2,
                image_size=336,
                patch_size=14,
                projection_dim=32,
                hidden_act="quick_gelu",
            ),
            sam=dict(
                hidden_size=32,
                output_channels=32,
                num_hidden_layers=4,
                num_attention_heads=2,
                image_size=512,
                patch_size=16,
                window_size=14,
                global_attn_indexes=[1, 3],
                mlp_ratio=4.0,
                num_pos_feats=16,
                initializer_range=0.02,
            ),
            sam_decoder=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32),
            llm_source=None,
            clip_source=None,
            sam_source=None,
            tokenizer_source="tiny-wordpiece",
            dtype="float32",
        )
        base.update(overrides)
        return cls.paper(**base)

    @classmethod
    def from_profile(cls, name: str, **overrides: Any) -> "GroveConfig":
        if name not in PROFILES:
            raise ValueError(f"unknown model profile {name!r}; expected one of {PROFILES}")
        return getattr(cls, name.replace("-", "_"))(**overrides)

    # ------------------------------------------------------------------ derived sizes
    @property
    def num_video_tokens(self) -> int:
        t, h, w = self.video_pool
        return t * h * w

    @property
    def decoder_dim(self) -> int:
        return int(self.sam_decoder.get("hidden_size", 256))

    @property
    def mask_size(self) -> int:
        """Side of SAM's mask logits: the feature grid upscaled 4x by the decoder's two transposed convs."""
        return 4 * self.grounding_feature_size

    @property
    def grounding_feature_size(self) -> int:
        """Side of the grounding feature map the decoder attends to (stride 16 for SAM2's lowest level)."""
        if self.grounding_encoder == "sam":
            return self.grounding_image_size // int(self.sam.get("patch_size", 16))
        return self.grounding_image_size // 16

    # ------------------------------------------------------------------ checks and (de)serialisation
    def validate(self) -> None:
        if self.grounding_encoder not in GROUNDING_ENCODERS:
            raise ValueError(f"grounding_encoder must be one of {GROUNDING_ENCODERS}, got {self.grounding_encoder!r}")
        if self.freezing not in FREEZING_MODES:
            raise ValueError(f"freezing must be one of {FREEZING_MODES}, got {self.freezing!r}")
        if len(self.video_pool) != 3:
            raise ValueError(f"video_pool must be (t, h, w), got {self.video_pool!r}")
        if self.video_pool[0] > self.num_frames:
            raise ValueError(f"video_pool t={self.video_pool[0]} exceeds num_frames={self.num_frames}")
        if self.clip_select_layer >= 0:
            raise ValueError("clip_select_layer counts from the end (e.g. -2 for the penultimate layer)")
        sam_patch = int(self.sam.get("patch_size", 16))
        if self.grounding_encoder == "sam" and self.grounding_image_size % sam_patch:
            raise ValueError(f"grounding_image_size {self.grounding_image_size} is not a multiple of the SAM patch {sam_patch}")
        if self.grounding_encoder == "sam2" and self.grounding_image_size % 32:
            raise ValueError(f"grounding_image_size {self.grounding_image_size} must be a multiple of 32 for SAM2")
        self._validate_clip_adapters()
        if self.sam.get("num_pos_feats", 128) * 2 != self.decoder_dim:
            raise ValueError("sam.num_pos_feats * 2 must equal sam_decoder.hidden_size (the image PE width)")
        self._validate_readout()

    def _validate_clip_adapters(self) -> None:
        rows = self.clip_adapter_rows
        if rows is None or not self.clip_adapters or "image_size" not in self.clip:
            return
        patches = (int(self.clip["image_size"]) // int(self.clip.get("patch_size", 14))) ** 2
        if rows <= 0 or patches % rows:
            raise ValueError(f"clip_adapter_rows={rows} does not divide the {patches} CLIP patches")

    def _validate_readout(self) -> None:
        if self.box_readout not in BOX_READOUTS:
            raise ValueError(f"box_readout must be one of {BOX_READOUTS}, got {self.box_readout!r}")
        if self.query_phrase_pooling not in QUERY_POOLINGS:
            raise ValueError(f"query_phrase_pooling must be one of {QUERY_POOLINGS}, got {self.query_phrase_pooling!r}")
        if self.global_image_aspect not in IMAGE_ASPECTS:
            raise ValueError(f"global_image_aspect must be one of {IMAGE_ASPECTS}, got {self.global_image_aspect!r}")
        if self.video_token_selection not in VIDEO_TOKEN_SELECTIONS:
            raise ValueError(
                f"video_token_selection must be one of {VIDEO_TOKEN_SELECTIONS}, got {self.video_token_selection!r}"
            )
        if self.video_selection_weight < 0:
            raise ValueError(f"video_selection_weight must be >= 0, got {self.video_selection_weight}")
        if self.decoder_init not in DECODER_INITS:
            raise ValueError(f"decoder_init must be one of {DECODER_INITS}, got {self.decoder_init!r}")
        if self.mask_loss_weight < 0 or self.mask_dice_weight < 0:
            raise ValueError(f"mask loss weights must be >= 0, got {self.mask_loss_weight}, {self.mask_dice_weight}")
        if self.box_readout != "mask" and (self.mask_pixel_features or self.mask_loss_weight > 0 or self.mask_dice_weight > 0):
            raise ValueError("mask_pixel_features, mask_loss_weight and mask_dice_weight need box_readout='mask'")
        if self.mask_pixel_features and self.grounding_image_size % (4 * self.grounding_feature_size):
            raise ValueError(
                f"mask_pixel_features: grounding_image_size {self.grounding_image_size} is not a multiple of the "
                f"mask grid {4 * self.grounding_feature_size}"
            )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["video_pool"] = list(self.video_pool)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GroveConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown GroveConfig fields: {unknown}")
        return cls(**copy.deepcopy(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "GroveConfig":
        """Read a config; its relative `base_weights` and a relative `tokenizer_source` that exists there
        resolve against the file's folder (an imported checkpoint names itself and its tokenizer so)."""
        path = Path(path)
        try:
            config = cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a valid GroveConfig: {exc}") from exc
        folder = path.parent.resolve()
        if config.base_weights is not None and not Path(config.base_weights).is_absolute():
            config.base_weights = str((folder / config.base_weights).resolve())
        tokenizer = Path(config.tokenizer_source)
        if not tokenizer.is_absolute() and (folder / tokenizer).is_dir():
            config.tokenizer_source = str(folder / tokenizer)
        return config

    def replace(self, **changes: Any) -> "GroveConfig":
        return dataclasses.replace(self, **changes)
