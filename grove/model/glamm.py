"""GLaMM's grounded conversation generation (GCG) on single images, run by this project's modules.

GLaMM (Rasheed et al., CVPR 2024) is GROVE's starting point and the paper's stage-1 annotator
(grove_spec 5): every 5 fps frame gets GLaMM's GCG prompt, and each `[SEG]` of the answer becomes a
mask and the mask a box. The weights are an imported GLaMM checkpoint,

    grove weights import --from glamm GLaMM-GranD-Pretrained --grounding-size 1024 --out DIR

loaded as a GroveModel whose modules are GLaMM's: `global_encoder.clip` (CLIP ViT-L/14-336),
`vl_projector` (mm_projector), `llm`, `lq_projector` (text_hidden_fcs), `grounding_encoder.vision`
(SAM's image encoder) and `box_decoder.{mask_decoder, no_mask_embed, image_positional_embedding}` (SAM's
mask decoder and prompt encoder). GROVE's additions (adapters, temporal pooling, box and objectness
heads) are not run: GLaMM has none of them.

    gcg = GlammGcg.from_checkpoint(DIR)                 # cuda + bfloat16 where there is a GPU
    answers = gcg([frame_rgb_uint8, ...])               # one GcgAnswer per frame, frames batched
    answers[0].caption, answers[0].grounded()           # GLaMM's cleaned caption; (phrases, boxes)

What runs, as GLaMM's eval/gcg/infer.py and model/GLaMM.py `evaluate` do it:
1. Pixels of an RGB frame of H x W (`GlammPreprocessor`):
   - CLIP: GLaMM's CLIPImageProcessor (openai/clip-vit-large-patch14-336's settings): shortest side to
     336 with PIL bicubic, centre crop 336 x 336, / 255, CLIP mean and std;
   - SAM: ResizeLongestSide(1024), i.e. PIL bilinear to (int(H s + 0.5), int(W s + 0.5)) with
     s = 1024 / max(H, W), SAM mean and std on the 0-255 scale, zero padding right and bottom to 1024.
2. The prompt (conversation template llava_v1, GCG_INSTRUCTION verbatim, with its five spaces):
   `{system} USER: The <im_start><image><im_end> provides an overview of the picture.\\n{instruction}
   ASSISTANT:`. `<image>` is one id (-200, tokenised in two chunks around it as tokenizer_image_token
   does) that becomes the 576 projected CLIP tokens: the penultimate layer's patch tokens (CLS dropped),
   one image, so no temporal pooling (GROVE's video encoder pools 8 frames to 576 tokens instead).
   Text is tokenised as GLaMM's pinned transformers (4.28) does it, the whitespace around added tokens
   dropped (`GlammGcg.encode_text`); transformers 4.3x+ keeps it as a "▁" piece (85 vs 87 prompt ids).
3. Greedy decoding until `</s>` or `max_new_tokens` (GLaMM's GCG evaluation allows 512).
4. Each `[SEG]`: the final-norm hidden state of the token before it (the state whose next-token
   prediction is `[SEG]`) -> text_hidden_fcs -> the one sparse prompt of SAM's mask decoder (dense
   prompt `no_mask_embed`, SAM's dense positional encoding), multimask_output=False -> low-resolution
   mask logits (4x the feature grid: 256 x 256) -> GLaMM's postprocess_masks: bilinear to 1024 x 1024,
   crop to the resized frame, bilinear to H x W -> mask = logits > 0 (GLaMM's GCG evaluation).
5. Text as GLaMM's infer.py cleans it (`gcg_caption`); phrases are the `<p> ... </p>` spans.

Defined here (the official code stops at masks):
- Box of a mask: its tight bounds in pixel edges, (x1, y1, x2, y2) = (first column, first row, last
  column + 1, last row + 1), as COCO's mask-to-box; a one-pixel mask is a 1 x 1 box. An empty mask
  (no logit > 0 anywhere in the frame) has no box (`None`): its phrase stays in the caption but is not
  grounded.
- Pairing: a `[SEG]` grounds the latest `<p> ... </p>` phrase before it that no `[SEG]` grounds yet. For
  GLaMM's answers (`<p> phrase </p> [SEG]`, one [SEG] after each phrase) this is the official pairing
  (the i-th regex phrase with the i-th mask); a `[SEG]` with no free phrase before it has a mask and
  no phrase, a phrase with no `[SEG]` after it (an answer cut off by max_new_tokens) no box.

Where this differs from the official run (none changes ids, masks or boxes beyond float rounding):
frames go through in batches (one prompt for all, so no padding); the LLM keeps a KV cache (GLaMM's
config sets use_cache=False, so its generate recomputes the whole sequence at every step); the [SEG]
queries are the last position's states as they are produced (GLaMM re-reads them from the last step's
full hidden states); SAM runs only on frames whose answer has a `[SEG]`; the caption is cleaned from the
answer alone (GLaMM decodes the whole sequence and keeps what follows "ASSISTANT: ", so an answer whose
first token has no leading space would leave the whole prompt in its caption: a quirk not reproduced).
scripts/official_parity/compare_glamm_gcg.py measures the deviations against the official code.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from grove.model.processor import CLIP_MEAN, CLIP_STD, SAM_MEAN, SAM_STD, SYSTEM, sam_resize_shape
from grove.model.sequence import det_query_positions, expand_video_tokens, gather_positions
from grove.model.tokenizer import P_END, P_START, VIDEO_TOKEN_INDEX

if TYPE_CHECKING:
    from grove.model.grove import GroveModel

logger = logging.getLogger(__name__)

Box = tuple[float, float, float, float]

SEG = "[SEG]"
IM_START = "<im_start>"
IM_END = "<im_end>"
IMAGE_PLACEHOLDER = "<image>"
# eval/gcg/infer.py: the string literal continues over a line break with a backslash, so the four spaces
# of the next line's indentation are part of it ("interleaved" + 5 spaces + "segmentation")
GCG_INSTRUCTION = (
    "Could you please give me a detailed description of the image? Please respond with interleaved "
    "    segmentation masks for the corresponding parts of the answer."
)
IMAGE_INTRO = f"The {IM_START}{IMAGE_PLACEHOLDER}{IM_END} provides an overview of the picture.\n"
GLAMM_IMAGE_SIZE = 1024  # GLaMM's SAM input (build_sam_vit_h); GROVE's is 512
_TAG_RE = re.compile(r"<.*?>")


# ---------------------------------------------------------------------------- text
def gcg_prompt(instruction: str = GCG_INSTRUCTION) -> str:
    """The llava_v1 conversation GLaMM's GCG inference builds (the assistant turn left open)."""
    return f"{SYSTEM} USER: {IMAGE_INTRO}{instruction} ASSISTANT:"


def gcg_caption(text: str) -> str:
    """GLaMM's infer.py clean-up of a decoded answer: tags and `[SEG]` removed, whitespace collapsed."""
    text = text.replace("\n", "").replace("  ", " ").split("ASSISTANT: ")[-1]
    cleaned = _TAG_RE.sub("", text).replace(SEG, "")
    return " ".join(cleaned.split()).strip("'").strip()


def mask_box(mask: torch.Tensor) -> Box | None:
    """Tight bounds (x1, y1, x2, y2) of a (H, W) boolean mask in pixel edges; None for an empty mask."""
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    if rows.numel() == 0:
        return None
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


# ---------------------------------------------------------------------------- pixels
@dataclass
class GlammInputs:
    clip_pixels: torch.Tensor  # (N, 3, Sc, Sc), float32
    sam_pixels: torch.Tensor  # (N, 3, Ss, Ss), float32, zero padded right and bottom
    resized_sizes: list[tuple[int, int]]  # (h, w) of each frame inside the SAM canvas
    original_sizes: list[tuple[int, int]]  # (h, w) of each frame


class GlammPreprocessor:
    """GLaMM's two image pipelines (module docstring, step 1), PIL resizes as the official code's."""

    def __init__(self, clip_size: int = 336, sam_size: int = GLAMM_IMAGE_SIZE) -> None:
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        self.clip_size = clip_size
        self.sam_size = sam_size
        # openai/clip-vit-large-patch14-336's preprocessor_config.json, scaled to the tower's input size
        self.clip_processor = CLIPImageProcessorPil(
            size={"shortest_edge": clip_size}, crop_size={"height": clip_size, "width": clip_size},
            resample=3, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
        )

    def clip(self, frame: np.ndarray) -> torch.Tensor:
        pixels = self.clip_processor(images=frame, return_tensors="pt")["pixel_values"][0]
        return pixels.float()

    def sam(self, frame: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """(3, S, S) and the (h, w) the frame was resized to (ResizeLongestSide.apply_image: PIL bilinear)."""
        from PIL import Image

        height, width = frame.shape[:2]
        new_h, new_w = sam_resize_shape(height, width, self.sam_size)
        resized = np.array(Image.fromarray(frame).resize((new_w, new_h), Image.BILINEAR))
        x = torch.from_numpy(resized).permute(2, 0, 1).float()
        x = (x - torch.tensor(SAM_MEAN).view(3, 1, 1)) / torch.tensor(SAM_STD).view(3, 1, 1)
        return F.pad(x, (0, self.sam_size - new_w, 0, self.sam_size - new_h)), (new_h, new_w)

    def __call__(self, frames: Sequence[np.ndarray]) -> GlammInputs:
        clips, sams, resized, original = [], [], [], []
        for frame in frames:
            frame = np.asarray(frame)
            if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"a frame must be uint8 (H, W, 3) RGB, got {frame.dtype} {frame.shape}")
            clips.append(self.clip(frame))
            pixels, size = self.sam(frame)
            sams.append(pixels)
            resized.append(size)
            original.append((int(frame.shape[0]), int(frame.shape[1])))
        return GlammInputs(torch.stack(clips), torch.stack(sams), resized, original)


# ---------------------------------------------------------------------------- answers
@dataclass
class GroundedSegment:
    """One `[SEG]` of an answer: the phrase it grounds (None if none), its box (None for an empty mask)."""

    phrase: str | None
    box: Box | None
    mask: torch.Tensor | None = None  # (H, W) bool at the frame's size, kept with keep_masks=True


@dataclass
class GcgAnswer:
    answer_ids: list[int]  # the generated ids (after the prompt and any answer prefix), `</s>` included
    text: str  # answer prefix + generated answer, decoded with its special tokens
    caption: str  # GLaMM's cleaned caption
    phrases: list[str]  # the `<p> ... </p>` phrases, in order
    segments: list[GroundedSegment] = field(default_factory=list)  # one per [SEG], in order
    mask_logits: torch.Tensor | None = None  # (S, H, W) float32 at the frame's size, with keep_masks=True

    def grounded(self) -> tuple[list[str], list[Box]]:
        """The phrases that a [SEG] grounds with a non-empty mask, and their boxes (one entry per [SEG])."""
        pairs = [(s.phrase, s.box) for s in self.segments if s.phrase is not None and s.box is not None]
        return [p for p, _ in pairs], [b for _, b in pairs]


@dataclass(frozen=True)
class _SpecialIds:
    seg: int
    p_start: int
    p_end: int
    im_start: int
    im_end: int
    bos: int | None
    eos: int
    pad: int


def parse_segments(ids: Sequence[int], special: _SpecialIds, decode) -> tuple[list[str], list[str | None]]:
    """The `<p> ... </p>` phrases of an answer (a `<p>` opened again restarts the span) and, for each
    `[SEG]`, the phrase it grounds: the latest closed phrase before it that no [SEG] grounds yet."""
    phrases: list[str] = []
    seg_phrases: list[str | None] = []
    span: list[int] | None = None
    free: int | None = None  # index of the phrase waiting for its [SEG]
    for token in ids:
        if token == special.p_start:
            span = []
        elif token == special.p_end and span is not None:
            phrases.append(decode(span).strip())
            free, span = len(phrases) - 1, None
        elif token == special.seg:
            seg_phrases.append(phrases[free] if free is not None else None)
            free = None
        elif span is not None:
            span.append(token)
    return phrases, seg_phrases


# ---------------------------------------------------------------------------- the model
class GlammGcg:
    """GLaMM's GCG inference on a GroveModel that holds GLaMM's weights (module docstring)."""

    def __init__(self, model: "GroveModel", instruction: str = GCG_INSTRUCTION) -> None:
        if model.processor is None:
            raise ValueError("the model was built without a tokenizer")
        self.model = model
        self.instruction = instruction
        tokenizer = model.processor.tokenizer
        vocab = tokenizer.get_vocab()
        missing = [t for t in (SEG, IM_START, IM_END, P_START, P_END) if t not in vocab]
        if missing:
            raise ValueError(f"not a GLaMM tokenizer: it lacks {missing} (import a GLaMM checkpoint with `grove weights import --from glamm`)")
        ids = model.processor.ids
        self.special = _SpecialIds(
            seg=vocab[SEG], p_start=ids.p_start, p_end=ids.p_end, im_start=vocab[IM_START], im_end=vocab[IM_END],
            bos=ids.bos, eos=ids.eos, pad=ids.pad,
        )
        config = model.config
        self.image_size = config.grounding_image_size
        if self.image_size != GLAMM_IMAGE_SIZE:
            logger.info("SAM runs at %d px (GLaMM's is %d px)", self.image_size, GLAMM_IMAGE_SIZE)
        self.preprocessor = GlammPreprocessor(config.global_image_size, config.grounding_image_size)
        self.prompt_ids = self.encode_prompt(instruction)

    @classmethod
    def from_checkpoint(
        cls, folder: str | Path, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
        instruction: str = GCG_INSTRUCTION,
    ) -> "GlammGcg":
        """Load an imported GLaMM checkpoint. Default device: cuda if there is one (bfloat16, as GLaMM's
        inference), else the CPU (float32: bfloat16 matmuls are slow there)."""
        from grove.model.components import torch_dtype
        from grove.train import load_model

        folder = Path(folder)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cpu":
            logger.info("glamm: no GPU in use, running %s on the CPU", folder)
        if dtype is None:
            dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        dtype = torch_dtype(dtype) if isinstance(dtype, str) else dtype
        warn_if_sam_resized(folder)
        model = load_model(folder, device="cpu")
        model = model.to(device=device, dtype=dtype).eval()
        model.requires_grad_(False)
        return cls(model, instruction)

    # -- pieces (each usable with gradients, for fine-tuning and tests)
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.lq_projector[0].weight.dtype

    def encode_text(self, text: str) -> list[int]:
        """GLaMM's tokenisation (its pinned transformers, 4.28): the text is split at the added tokens
        (`<im_start>`, `[SEG]`, `<p>`, ...), the whitespace on either side of each is dropped, and every
        piece is SentencePiece-encoded on its own. (Since transformers 4.3x a LLaMA tokenizer keeps that
        whitespace as a separate "▁" piece: GROVE's official code, on 4.46, tokenises so.)"""
        tokenizer = self.model.processor.tokenizer
        added = {token: index for token, index in tokenizer.get_added_vocab().items() if token in text}
        if not added:
            return list(tokenizer.encode(text, add_special_tokens=False))
        pieces = re.split("(" + "|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)) + ")", text)
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if piece in added:
                ids.append(added[piece])
                continue
            piece = piece.lstrip() if k > 0 else piece  # after an added token
            piece = piece.rstrip() if k < len(pieces) - 1 else piece  # before one
            if piece:
                ids.extend(tokenizer.encode(piece, add_special_tokens=False))
        return ids

    def encode_prompt(self, instruction: str = GCG_INSTRUCTION) -> list[int]:
        """bos + the prompt's ids with one IMAGE_TOKEN_INDEX for `<image>` (each side tokenised on its own,
        as tokenizer_image_token does)."""
        before, after = gcg_prompt(instruction).split(IMAGE_PLACEHOLDER)
        bos = [self.special.bos] if self.special.bos is not None else []
        return bos + self.encode_text(before) + [VIDEO_TOKEN_INDEX] + self.encode_text(after)

    def answer_ids(self, answer: str) -> list[int]:
        """The ids of an assistant answer as it follows `ASSISTANT:` in a conversation (no `</s>`)."""
        return self.encode_text(answer)

    def encode_images(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, Sc, Sc) -> the 576 projected image tokens per image (N, 576, D): CLIP's penultimate-layer
        patch tokens (GlobalVideoEncoder computes no later layer), mm_projector. No adapters, no pooling."""
        encoder = self.model.global_encoder
        clip = encoder.clip
        hidden = clip.pre_layrnorm(clip.embeddings(clip_pixels.to(self.device, clip.embeddings.patch_embedding.weight.dtype)))
        for index in range(encoder.num_computed_layers):
            hidden = clip.encoder.layers[index](hidden, None)
        projector = self.model.vl_projector
        return projector(hidden[:, 1:].to(projector[0].weight.dtype))

    def llm_hidden(self, clip_pixels: torch.Tensor, sequences: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced final-norm hidden states of whole sequences (ids with the image placeholder,
        right-padded here): (B, L + 575, D) and the expanded ids (B, L + 575)."""
        length = max(len(row) for row in sequences)
        input_ids = torch.full((len(sequences), length), self.special.pad, dtype=torch.long)
        attention = torch.zeros((len(sequences), length), dtype=torch.long)
        for b, row in enumerate(sequences):
            input_ids[b, : len(row)] = torch.tensor(list(row))
            attention[b, : len(row)] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        image = self.encode_images(clip_pixels)
        expanded = expand_video_tokens(input_ids, image, self.model.llm.get_input_embeddings(), attention)
        hidden = self.model.llm.model(
            inputs_embeds=expanded.inputs_embeds, attention_mask=expanded.attention_mask, use_cache=False
        ).last_hidden_state
        return hidden, expanded.input_ids

    def seg_queries(self, hidden: torch.Tensor, expanded_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The [SEG] prompts of teacher-forced sequences: text_hidden_fcs of the state before each [SEG],
        (B, Q, C), and their validity (B, Q)."""
        positions, valid = det_query_positions(expanded_ids, self.special.seg)
        return self.model.lq_projector(gather_positions(hidden, positions)), valid

    def encode_grounding(self, sam_pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) -> SAM image embeddings (N, C, S/16, S/16): SAM's ViT and neck, no adapters."""
        vision = self.model.grounding_encoder.vision
        hidden = vision.patch_embed(sam_pixels.to(self.device, vision.pos_embed.dtype)) + vision.pos_embed
        for layer in vision.layers:
            hidden = layer(hidden)
        return vision.neck(hidden)

    def decode_masks(self, features: torch.Tensor, queries: torch.Tensor, frame_index: torch.Tensor) -> torch.Tensor:
        """Low-resolution mask logits (Q, 4s, 4s) of queries (Q, C) on the features (N, C, s, s) of their
        frames (frame_index (Q,)): SAM's mask decoder, multimask_output=False; each (frame, query) pair
        is decoded on its own, as GLaMM's per-image decoder calls."""
        decoder = self.model.box_decoder
        count = queries.shape[0]
        image = features[frame_index]
        size = image.shape[-1]
        dense = decoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(count, -1, size, size).to(image.dtype)
        position = decoder.image_positional_embeddings().to(image.dtype).expand(count, -1, -1, -1)
        masks, _ = decoder.mask_decoder(
            image_embeddings=image, image_positional_embeddings=position,
            sparse_prompt_embeddings=queries[:, None, None, :].to(image.dtype), dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return masks[:, 0, 0]

    def postprocess_masks(self, low_res: torch.Tensor, resized: tuple[int, int], original: tuple[int, int]) -> torch.Tensor:
        """GLaMM's postprocess_masks: (Q, h, w) logits -> bilinear to the SAM canvas, crop to the resized
        frame, bilinear to the original (H, W); float32."""
        masks = F.interpolate(low_res[:, None].float(), (self.image_size, self.image_size), mode="bilinear", align_corners=False)
        masks = masks[..., : resized[0], : resized[1]]
        return F.interpolate(masks, original, mode="bilinear", align_corners=False)[:, 0]

    # -- inference
    @torch.inference_mode()
    def generate(
        self, clip_pixels: torch.Tensor, max_new_tokens: int = 512, answer_prefix: Sequence[int] = ()
    ) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Greedy answers of a batch of images (one prompt [+ answer prefix] for all): the generated ids
        per image (`</s>` included where reached) and the [SEG] query states per image (S_b, D): those of
        the prefix's [SEG]s, then of the generated ones."""
        batch = clip_pixels.shape[0]
        prompt = torch.tensor(self.prompt_ids + list(answer_prefix), device=self.device).expand(batch, -1)
        image = self.encode_images(clip_pixels)
        expanded = expand_video_tokens(prompt, image, self.model.llm.get_input_embeddings())
        out = self.model.llm.model(inputs_embeds=expanded.inputs_embeds, use_cache=True)
        positions, _ = det_query_positions(expanded.input_ids, self.special.seg)  # same for every row
        states: list[list[torch.Tensor]] = [[row] for row in gather_positions(out.last_hidden_state, positions)]
        hidden = out.last_hidden_state[:, -1]
        finished = torch.zeros(batch, dtype=torch.bool, device=self.device)
        tokens: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            next_ids = self.model.llm.lm_head(hidden).argmax(dim=-1)
            next_ids = torch.where(finished, torch.full_like(next_ids, self.special.pad), next_ids)
            for b in torch.nonzero(next_ids == self.special.seg).flatten().tolist():
                states[b].append(hidden[b : b + 1])
            tokens.append(next_ids)
            finished |= next_ids == self.special.eos
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            out = self.model.llm.model(input_ids=next_ids[:, None], cache=out.cache, use_cache=True)
            hidden = out.last_hidden_state[:, -1]
        generated = torch.stack(tokens, dim=1).tolist() if tokens else [[] for _ in range(batch)]
        answers = []
        for row in generated:
            end = row.index(self.special.eos) + 1 if self.special.eos in row else len(row)
            answers.append(row[:end])
        return answers, [torch.cat(s, dim=0) for s in states]

    @torch.inference_mode()
    def __call__(
        self, frames: Sequence[np.ndarray], max_new_tokens: int = 512, answer_prefix: Sequence[int] = (),
        keep_masks: bool = False,
    ) -> list[GcgAnswer]:
        """GCG on RGB uint8 frames (H, W, 3), all in one batch: one GcgAnswer per frame."""
        if len(frames) == 0:
            return []
        inputs = self.preprocessor(frames)
        return self.run(inputs, max_new_tokens, answer_prefix, keep_masks)

    @torch.inference_mode()
    def run(
        self, inputs: GlammInputs, max_new_tokens: int = 512, answer_prefix: Sequence[int] = (), keep_masks: bool = False
    ) -> list[GcgAnswer]:
        """GCG on preprocessed inputs (GlammPreprocessor): generation, then masks and boxes for the [SEG]s."""
        generated, states = self.generate(inputs.clip_pixels, max_new_tokens, answer_prefix)
        counts = [s.shape[0] for s in states]
        segmenting = [b for b, c in enumerate(counts) if c]
        masks_per_frame: dict[int, torch.Tensor] = {}
        if segmenting:
            features = self.encode_grounding(inputs.sam_pixels[segmenting])
            queries = self.model.lq_projector(torch.cat([states[b] for b in segmenting]).to(self.dtype))
            owner = torch.cat([torch.full((counts[b],), i, dtype=torch.long) for i, b in enumerate(segmenting)])
            low_res = self.decode_masks(features, queries, owner.to(self.device))
            for chunk, b in zip(low_res.split([counts[b] for b in segmenting]), segmenting):
                masks_per_frame[b] = self.postprocess_masks(chunk, inputs.resized_sizes[b], inputs.original_sizes[b])
        tokenizer = self.model.processor.tokenizer
        decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
        answers = []
        for b, ids in enumerate(generated):
            full = list(answer_prefix) + ids
            text = decode([t for t in full if t != self.special.pad])
            phrases, seg_phrases = parse_segments(full, self.special, decode)
            logits = masks_per_frame.get(b)
            segments = []
            for s, phrase in enumerate(seg_phrases):
                binary = logits[s] > 0
                segments.append(GroundedSegment(phrase, mask_box(binary), binary.cpu() if keep_masks else None))
            answers.append(GcgAnswer(ids, text, gcg_caption(text), phrases, segments,
                                     logits.cpu() if keep_masks and logits is not None else None))
        return answers


def warn_if_sam_resized(folder: str | Path) -> None:
    """Warn when an imported checkpoint's SAM position embeddings were interpolated (a GLaMM import at
    GROVE's 512 px): GLaMM's masks come from SAM at its own resolution (`--grounding-size 1024`)."""
    report = Path(folder) / "import_report.json"
    if not report.is_file():
        return
    mapped = json.loads(report.read_text()).get("mapped", [])
    for item in mapped:
        if item.get("target") == "grounding_encoder.vision.pos_embed" and item.get("transform") != "copy":
            logger.warning(
                "%s: SAM's position embeddings were resized on import (%s); GLaMM runs SAM at its own "
                "resolution: re-import with `grove weights import --from glamm --grounding-size 1024`",
                folder, item.get("transform"),
            )


__all__ = [
    "GCG_INSTRUCTION",
    "GcgAnswer",
    "GlammGcg",
    "GlammInputs",
    "GlammPreprocessor",
    "GroundedSegment",
    "gcg_caption",
    "gcg_prompt",
    "mask_box",
    "parse_segments",
]
