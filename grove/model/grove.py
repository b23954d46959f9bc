"""GroveModel: the GROVE grounded video captioner (grove_spec 1, 2.1).

    global_pixels (B,T,3,Sg,Sg) -> CLIP (penultimate layer) -> [adapters] -> AdaptiveAvgPool3d -> VL projector
        -> N video tokens spliced into the llava_v1 conversation in place of `<video>` -> LLaMA
        (video_token_selection="objectness", tiny only: the tokens a box-supervised head scores as
        background get attention mask 0; video_selection.py)
    hidden state just before each [DET] -> LQ projector -> one query per phrase
    grounding_pixels (B,T,3,Sd,Sd) -> SAM ViT + adapters after its global blocks -> (B,T,C,s,s)
    per (frame, phrase): SAM two-way decoder with the query as the sparse prompt -> box head (sigmoid
        normalised cxcywh) and objectness head (logit); with config.box_readout="mask" the box is
        read from SAM's mask logits instead (box_decoder.mask_to_box)

Interface (stable; what training and inference build on):
- `GroveModel.from_config(config, device="cpu", tokenizer=None, pretrained=True)`; `model.processor` is
  the GroveProcessor that shares the model's tokenizer.
- `forward(batch) -> GroveOutput(loss, losses={"ce","giou","l1","tobj"[,"vobj"]}, pred_boxes, objectness_logits)`,
  `batch` as made by `GroveProcessor.collate`.
- `generate(global_pixels, max_new_tokens=64, question=None)`: greedy tagged answer(s); one clip
  (T,3,S,S) gives a str, a batch (B,T,3,S,S) a list. `generate_ids` returns the token ids instead.
  The caption needs only the global encoder, so no grounding pixels are taken.
- `ground(global_pixels, grounding_pixels, answer)`: teacher-forced boxes for an answer (tagged text or
  answer ids, one for all clips or one per clip): GroundingResult(boxes (T,P,4) normalised cxcywh,
  objectness_logits (T,P), phrases), with a leading B for batched input.
- `trainable_state_dict()` / `load_trainable_state_dict(state)`: the trainable weights only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from grove.model.box_decoder import BoxDecoder, DecoderOutput, PixelFeatures, content_extent, mask_to_box
from grove.model.components import build_clip, build_llm, build_sam, torch_dtype
from grove.model.config import GroveConfig
from grove.model.encoders import GlobalVideoEncoder, Sam2VideoEncoder, SamVideoEncoder
from grove.model.freezing import FreezeSummary, apply_freezing
from grove.model.heads import BoxHead, LQProjector, ObjectnessHead, VLProjector
from grove.model.losses import IGNORE_INDEX, LossWeights, causal_lm_loss, grove_loss
from grove.model.processor import INFERENCE_QUESTION, GroveProcessor, parse_answer
from grove.model.sequence import det_query_positions, expand_video_tokens, gather_positions, phrase_means
from grove.model.tokenizer import load_tokenizer, token_ids
from grove.model.video_selection import video_selection_loss, video_token_targets

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


@dataclass
class GroveOutput:
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    pred_boxes: torch.Tensor  # (B, T, P, 4) normalised cxcywh
    objectness_logits: torch.Tensor  # (B, T, P)
    mask_logits: torch.Tensor | None = None  # (B, T, P, H, W) on the padded SAM canvas (mask readout)


@dataclass
class GroundingResult:
    boxes: torch.Tensor  # (T, P, 4) or (B, T, P, 4), normalised cxcywh
    objectness_logits: torch.Tensor  # (T, P) or (B, T, P)
    phrases: list[str] | list[list[str]]


class GroveModel(nn.Module):
    def __init__(
        self, config: GroveConfig, tokenizer: "PreTrainedTokenizerBase | None" = None, pretrained: bool = False
    ) -> None:
        """Build the modules. Without a tokenizer the LLM keeps `config.llm["vocab_size"]` and
        generate / ground are unavailable (enough for counting parameters on the meta device)."""
        super().__init__()
        self.config = config
        self.processor = GroveProcessor(config, tokenizer) if tokenizer is not None else None
        vocab_size = len(tokenizer) if tokenizer is not None else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.init_seed)
            self.llm = build_llm(config, vocab_size, pretrained)
            clip = build_clip(config, pretrained)
            sam = build_sam(config, pretrained)
            llm_dim = self.llm.config.hidden_size
            self.global_encoder = GlobalVideoEncoder(
                clip,
                config.num_frames,
                config.video_pool,
                config.clip_select_layer,
                config.clip_adapters,
                config.clip_adapter_every,
                config.adapter_kernel_size,
                config.clip_adapter_rows,
            )
            self.vl_projector = VLProjector(clip.config.hidden_size, llm_dim)
            selecting = config.video_token_selection == "objectness"
            self.video_selector = ObjectnessHead(llm_dim) if selecting else None
            if config.grounding_encoder == "sam":
                self.grounding_encoder: nn.Module = SamVideoEncoder(
                    sam.vision, config.num_frames, config.sam_adapters, config.adapter_kernel_size
                )
            else:
                self.grounding_encoder = Sam2VideoEncoder(
                    sam.vision, sam.no_memory_embedding, config.num_frames, config.sam_adapters, config.adapter_kernel_size
                )
            self.box_decoder = BoxDecoder(
                sam.mask_decoder,
                sam.no_mask_embed,
                sam.image_positional_embedding,
                config.grounding_feature_size,
                config.grounding_encoder,
                config.box_readout,
                _pixel_features(config),
            )
            self.lq_projector = LQProjector(llm_dim, config.decoder_dim)
            self.box_head = BoxHead(config.decoder_dim)
            self.objectness_head = ObjectnessHead(config.decoder_dim)
        self.loss_weights = LossWeights(
            config.ce_weight, config.giou_weight, config.l1_weight, config.tobj_weight, config.mask_loss_weight,
            config.mask_dice_weight,
        )
        self.freeze_summary: FreezeSummary = apply_freezing(self, config)

    @classmethod
    def from_config(
        cls,
        config: GroveConfig,
        device: torch.device | str = "cpu",
        tokenizer: "PreTrainedTokenizerBase | None" = None,
        pretrained: bool = True,
    ) -> "GroveModel":
        """The tokenizer (built or loaded from `config.tokenizer_source`), the components (from the
        full-weights folder `config.base_weights`, else from their sources when `pretrained`, else
        random), cast to `config.dtype` and moved to `device`."""
        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.tokenizer_source, config.tiny_vocab_size)
        if pretrained and config.base_weights is not None:
            from grove.model.store import model_from_base

            return model_from_base(config, tokenizer, device)
        model = cls(config, tokenizer, pretrained=pretrained)
        return model.to(device=torch.device(device), dtype=torch_dtype(config.dtype))

    # ------------------------------------------------------------------ pieces
    @property
    def device(self) -> torch.device:
        return self.box_head.mlp[0].weight.device

    def _require_processor(self) -> GroveProcessor:
        if self.processor is None:
            raise RuntimeError("this GroveModel was built without a tokenizer; use GroveModel.from_config")
        return self.processor

    def encode_video(self, global_pixels: torch.Tensor) -> torch.Tensor:
        """(B,T,3,S,S) -> projected video tokens (B, N, D_llm). A frozen, adapter-free CLIP runs without autograd."""
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.global_encoder.parameters())
        with torch.set_grad_enabled(needs_grad):
            features = self.global_encoder(global_pixels)
        return self.vl_projector(features.to(self.vl_projector[0].weight.dtype))

    def select_video(self, video: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Projected video tokens (B, N, D) -> (objectness logits (B, N), keep mask (B, N)), or (None, None)
        when every token reaches the LLM (video_token_selection="all")."""
        if self.video_selector is None:
            return None, None
        logits = self.video_selector(video)
        return logits, (logits > 0).long()

    def decode_boxes(
        self, features: torch.Tensor, queries: torch.Tensor, grounding_pixels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B,T,C,s,s), queries (B,P,C) -> boxes (B,T,P,4), objectness logits (B,T,P).
        The mask readout also needs the grounding pixels (B,T,3,S,S): the frame's extent on the canvas."""
        decoded = self._decode(features, queries, grounding_pixels)
        return decoded.boxes, decoded.logits

    def _decode(self, features: torch.Tensor, queries: torch.Tensor, grounding_pixels: torch.Tensor | None) -> "_Decoded":
        batch, frames = features.shape[:2]
        phrases = queries.shape[1]
        if phrases == 0:
            return _Decoded(queries.new_zeros(batch, frames, 0, 4), queries.new_zeros(batch, frames, 0))
        pixels = grounding_pixels.flatten(0, 1) if grounding_pixels is not None else None
        decoded: DecoderOutput = self.box_decoder(features.flatten(0, 1), queries.repeat_interleave(frames, dim=0), pixels)
        logits = self.objectness_head(decoded.query).reshape(batch, frames, phrases)
        if decoded.masks is None:
            return _Decoded(self.box_head(decoded.query).reshape(batch, frames, phrases, 4), logits)
        if pixels is None:
            raise ValueError("the mask box readout needs the grounding pixels (the frame's extent on the canvas)")
        extent = content_extent(pixels)
        boxes = mask_to_box(decoded.masks, extent).reshape(batch, frames, phrases, 4)
        masks = decoded.masks.reshape(batch, frames, phrases, *decoded.masks.shape[-2:])
        return _Decoded(boxes, logits, masks, extent.reshape(batch, frames, 2))

    def _llm_hidden(self, input_ids, attention_mask, labels, global_pixels):
        """-> (last hidden states, ExpandedInputs, video-token objectness logits or None)."""
        video = self.encode_video(global_pixels)
        selection_logits, keep = self.select_video(video)
        embed = self.llm.get_input_embeddings()
        expanded = expand_video_tokens(input_ids, video, embed, attention_mask, labels, video_mask=keep)
        hidden = self.llm.model(
            inputs_embeds=expanded.inputs_embeds, attention_mask=expanded.attention_mask, use_cache=False
        ).last_hidden_state
        return hidden, expanded, selection_logits

    def _queries(self, hidden: torch.Tensor, expanded) -> tuple[torch.Tensor, torch.Tensor]:
        """expanded: the ExpandedInputs the LLM read (its ids; its embeddings for phrase pooling)."""
        ids = self._require_processor().ids
        positions, valid = det_query_positions(expanded.input_ids, ids.det)
        states = gather_positions(hidden, positions)
        pooling = self.config.query_phrase_pooling
        if pooling != "none":
            source = hidden if pooling == "hidden" else expanded.inputs_embeds.to(hidden.dtype)
            states = states + phrase_means(source, expanded.input_ids, ids.p_start, ids.p_end, positions.shape[1])
        return self.lq_projector(states), valid

    def _require_det_id(self) -> int:
        return self._require_processor().ids.det

    # ------------------------------------------------------------------ training
    def forward(self, batch: dict) -> GroveOutput:
        hidden, expanded, selection_logits = self._llm_hidden(
            batch["input_ids"], batch["attention_mask"], batch["labels"], batch["global_pixels"]
        )
        targets = expanded.labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        ce = causal_lm_loss(self.llm.lm_head(hidden[:, :-1][supervised]), targets[supervised])

        queries, valid = self._queries(hidden, expanded)
        phrase_mask = batch["phrase_mask"]
        if valid.shape != phrase_mask.shape or not bool((valid == phrase_mask).all()):
            raise ValueError(
                f"[DET] counts {valid.sum(1).tolist()} differ from phrase counts {phrase_mask.sum(1).tolist()}: "
                "the j-th [DET] must pair with the j-th phrase"
            )
        features = self.grounding_encoder(batch["grounding_pixels"])
        decoded = self._decode(features, queries.to(features.dtype), batch["grounding_pixels"])
        loss, losses = grove_loss(
            ce,
            decoded.boxes,
            decoded.logits,
            batch["gt_boxes"],
            batch["gt_present"],
            phrase_mask,
            self.loss_weights,
            self.config.use_objectness,
            decoded.masks,
            decoded.extent,
        )
        if selection_logits is not None:
            losses["vobj"] = video_selection_loss(selection_logits, self.video_token_targets(batch))
            loss = loss + self.config.video_selection_weight * losses["vobj"]
        return GroveOutput(loss, {k: v.detach() for k, v in losses.items()}, decoded.boxes, decoded.logits, decoded.masks)

    def video_token_targets(self, batch: dict) -> torch.Tensor:
        """(B, N) object / background targets of the video tokens from the batch's ground-truth boxes."""
        config = self.config
        return video_token_targets(
            batch["gt_boxes"],
            batch["gt_present"],
            batch["phrase_mask"],
            batch["original_sizes"],
            config.video_pool,
            self.global_encoder.grid,
            config.global_image_size,
            config.global_image_aspect,
        )

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def generate_ids(
        self,
        global_pixels: torch.Tensor,
        max_new_tokens: int = 64,
        question: str | None = None,
        prompt_ids: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Greedy answer ids (B, n) after `ASSISTANT:` (or after the given `prompt_ids`, which hold the
        video placeholder), `</s>` included where reached, pad after it."""
        processor = self._require_processor()
        pixels = global_pixels.unsqueeze(0) if global_pixels.dim() == 4 else global_pixels
        batch = pixels.shape[0]
        ids = prompt_ids if prompt_ids is not None else processor.prompt_ids(question or INFERENCE_QUESTION)
        prompt = torch.tensor(list(ids), device=pixels.device)
        video = self.encode_video(pixels.to(self.device))
        expanded = expand_video_tokens(
            prompt.expand(batch, -1), video, self.llm.get_input_embeddings(), video_mask=self.select_video(video)[1]
        )
        attention = expanded.attention_mask
        out = self.llm(inputs_embeds=expanded.inputs_embeds, attention_mask=attention, use_cache=True, logits_to_keep=1)
        eos, pad = processor.ids.eos, processor.ids.pad
        finished = torch.zeros(batch, dtype=torch.bool, device=pixels.device)
        tokens: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            next_ids = out.logits[:, -1].argmax(dim=-1)
            next_ids = torch.where(finished, torch.full_like(next_ids, pad), next_ids)
            tokens.append(next_ids)
            finished |= next_ids == eos
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            attention = torch.cat([attention, attention.new_ones(batch, 1)], dim=1)
            out = self.llm(
                input_ids=next_ids[:, None], attention_mask=attention, cache=out.cache, use_cache=True
            )
        if not tokens:
            return torch.zeros(batch, 0, dtype=torch.long, device=pixels.device)
        return torch.stack(tokens, dim=1)

    @torch.no_grad()
    def generate(
        self, global_pixels: torch.Tensor, max_new_tokens: int = 64, question: str | None = None
    ) -> str | list[str]:
        """Greedy tagged answer(s) `... <p> phrase </p> [DET] ...` for one clip (str) or a batch (list)."""
        ids = self.generate_ids(global_pixels, max_new_tokens, question)
        texts = [self._require_processor().decode_answer(row.tolist()) for row in ids]
        return texts[0] if global_pixels.dim() == 4 else texts

    @torch.no_grad()
    def ground(
        self,
        global_pixels: torch.Tensor,
        grounding_pixels: torch.Tensor,
        answer: str | Sequence[int] | Sequence[str] | Sequence[Sequence[int]],
        question: str | None = None,
    ) -> GroundingResult:
        """Teacher-forced boxes and objectness of the answer's phrases on every frame."""
        processor = self._require_processor()
        single = global_pixels.dim() == 4
        g_pixels = global_pixels.unsqueeze(0) if single else global_pixels
        d_pixels = grounding_pixels.unsqueeze(0) if single else grounding_pixels
        batch = g_pixels.shape[0]
        answers = _per_clip(answer, batch)
        ids = [a if not isinstance(a, str) else processor.answer_ids(a) for a in answers]
        texts = [a if isinstance(a, str) else processor.decode_answer(a) for a in answers]
        prompt = processor.prompt_ids(question or INFERENCE_QUESTION)
        boxes, logits, valid = self.ground_sequences(g_pixels, d_pixels, [prompt + list(a) for a in ids])
        phrases = [list(parse_answer(t).phrases) for t in texts]
        for b, count in enumerate(valid.sum(1).tolist()):
            if len(phrases[b]) != count:
                text = texts[b] if len(texts[b]) <= 160 else f"{texts[b][:160]}… ({len(texts[b])} characters)"
                logger.warning("answer %d has %d [DET] but %d <p> phrases: %r", b, count, len(phrases[b]), text)
        if single:
            return GroundingResult(boxes[0], logits[0], phrases[0])
        return GroundingResult(boxes, logits, phrases)

    @torch.no_grad()
    def ground_sequences(
        self, global_pixels: torch.Tensor, grounding_pixels: torch.Tensor, sequences: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Boxes (B,T,Q,4) normalised cxcywh and objectness logits (B,T,Q) of the [DET] queries of whole
        conversations (ids with the video placeholder, right-padded here), and the queries' validity (B,Q)."""
        processor = self._require_processor()
        length = max(len(r) for r in sequences)
        input_ids = torch.full((len(sequences), length), processor.ids.pad, dtype=torch.long)
        attention = torch.zeros((len(sequences), length), dtype=torch.long)
        for b, row in enumerate(sequences):
            input_ids[b, : len(row)] = torch.tensor(list(row))
            attention[b, : len(row)] = 1
        device = self.device
        hidden, expanded, _ = self._llm_hidden(input_ids.to(device), attention.to(device), None, global_pixels.to(device))
        queries, valid = self._queries(hidden, expanded)
        pixels = grounding_pixels.to(device)
        features = self.grounding_encoder(pixels)
        boxes, logits = self.decode_boxes(features, queries.to(features.dtype), pixels)
        return boxes, logits, valid

    # ------------------------------------------------------------------ checkpoints
    def trainable_parameter_names(self) -> list[str]:
        return [name for name, p in self.named_parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable weights only (detached, on their devices): what a checkpoint must carry."""
        return {name: p.detach() for name, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> list[str]:
        """Load weights saved by `trainable_state_dict`; returns the trainable names the state lacked.

        Unknown keys are always an error; with `strict`, so is a missing trainable weight (fine-tuning
        from a checkpoint of another freezing mode passes strict=False, as GROVE loads with strict=False).
        """
        parameters = dict(self.named_parameters())
        unknown = sorted(set(state) - set(parameters))
        if unknown:
            raise KeyError(f"checkpoint has weights this model lacks: {unknown[:5]}{'...' if len(unknown) > 5 else ''}")
        for name, tensor in state.items():
            if parameters[name].shape != tensor.shape:
                raise ValueError(f"checkpoint weight {name} has shape {tuple(tensor.shape)}, model {tuple(parameters[name].shape)}")
        missing = sorted(set(self.trainable_parameter_names()) - set(state))
        if strict and missing:
            raise KeyError(f"checkpoint lacks trainable weights: {missing[:5]}{'...' if len(missing) > 5 else ''}")
        with torch.no_grad():
            for name, tensor in state.items():
                parameters[name].copy_(tensor.to(parameters[name].device, parameters[name].dtype))
        return missing

    def enable_gradient_checkpointing(self) -> None:
        """Recompute LLM / CLIP / SAM layer activations in backward (GPU memory for time).

        Non-reentrant (torch.utils.checkpoint's use_reentrant=False), said explicitly rather than left
        to transformers' default: the reentrant kind re-runs the forward inside backward, so DDP with
        find_unused_parameters=True sees a parameter marked ready twice (tests/train/test_precision.py
        shows both); and it needs an input that requires grad, which a frozen backbone's input lacks."""
        options = {"use_reentrant": False}
        self.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
        for module in (self.global_encoder.clip, self.grounding_encoder.vision):
            module.activation_checkpointing_enable(activation_checkpointing_kwargs=options)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


@dataclass
class _Decoded:
    boxes: torch.Tensor  # (B, T, P, 4)
    logits: torch.Tensor  # (B, T, P)
    masks: torch.Tensor | None = None  # (B, T, P, H, W)
    extent: torch.Tensor | None = None  # (B, T, 2)


def _pixel_features(config: GroveConfig) -> PixelFeatures | None:
    """The mask path's stride-4 pixel features (config.mask_pixel_features), at the mask grid."""
    if not config.mask_pixel_features:
        return None
    return PixelFeatures(config.decoder_dim // 8, config.grounding_image_size // config.mask_size)


def _per_clip(answer, batch: int) -> list:
    """One answer (text or ids) for every clip, or a list with one answer per clip."""
    if isinstance(answer, torch.Tensor):
        return [row.tolist() for row in answer] if answer.dim() == 2 else [answer.tolist()] * batch
    if isinstance(answer, str):
        return [answer] * batch
    if len(answer) == 0 or isinstance(answer[0], int):
        return [list(answer)] * batch
    if len(answer) != batch:
        raise ValueError(f"{len(answer)} answers for {batch} clips")
    return [a.tolist() if isinstance(a, torch.Tensor) else a for a in answer]
