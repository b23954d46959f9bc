"""GroveProcessor: frames, caption, phrases and boxes in; the model's batch out. Also the answer format.

Facts (grove_spec 1.2-1.6, 4.1):
- Global encoder input: shortest side -> `global_image_size`, centre crop, CLIP mean / std.
- Grounding encoder input: longest side -> `grounding_image_size` (SAM's ResizeLongestSide), SAM
  mean / std on the 0-255 scale, zero padding on the right and bottom.
- Prompt (llava_v1): `{SYSTEM} USER: The <vid_start><video><vid_end> provides an overview of the
  video.\\n{question} ASSISTANT: {answer}</s>`. `<video>` is ONE id (VIDEO_TOKEN_INDEX, -200) that the
  model expands into the video tokens. Labels are -100 everywhere except the answer and its `</s>`.
- Answer: the lower-cased caption with each grounded phrase written `<p> phrase </p> [DET]`, phrases
  in order of appearance; the j-th `[DET]` pairs with the j-th phrase.
- GT boxes: normalised (cx, cy, w, h), divided by the ORIGINAL frame width and height.

Resizing uses torch's antialiased bicubic (CLIP) / bilinear (SAM) interpolation, which approximates
the PIL resizes of the official pipeline to within a grey level or so.

Batch (from `collate`): global_pixels (B,T,3,Sg,Sg), grounding_pixels (B,T,3,Sd,Sd), input_ids (B,L),
attention_mask (B,L), labels (B,L), gt_boxes (B,T,P,4), gt_present (B,T,P) bool, phrase_mask (B,P)
bool, original_sizes (B,2) as (width, height), plus python lists `phrases` and `answers`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from grove.model.config import GroveConfig
from grove.model.tokenizer import DET, P_END, P_START, VIDEO_PLACEHOLDER, VIDEO_TOKEN_INDEX, load_tokenizer, token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
VIDEO_INTRO = f"The <vid_start>{VIDEO_PLACEHOLDER}<vid_end> provides an overview of the video.\n"
VIDEO_GROUNDING_QUESTIONS = (
    "Could you please give me a description of the video? Please respond with interleaved bounding boxes for the corresponding parts of the answer.",
    "Can you provide a description of the this video? Please output with interleaved bounding boxes for the corresponding phrases.",
    "Please describe the contents of the video. Please respond with interleaved bounding boxes for the corresponding parts of the answer.",
    "Could you give an explanation of what can be found within this video? Please output with interleaved bounding boxes for the corresponding phrases.",
    "Could you give me an explanation of this video? Please respond with interleaved bounding boxes for the corresponding phrases.",
    "Could you provide me with an analysis of this video? Please output with interleaved bounding boxes for the corresponding parts of the answer.",
)
VIDEO_STG_QUESTIONS = (
    "Could you please give me a description of the video? Please include a single bounding box per frame capturing the activity described in the caption.",
    "Can you provide a description of this video? Each frame should have one bounding box that encapsulates the activity described by the caption.",
    "Please describe the contents of the video. Include one bounding box per frame that highlights the activity mentioned in the caption.",
    "Could you give an explanation of what can be found within this video? For each frame, provide a bounding box that encapsulates the described activity.",
    "Could you give me an explanation of this video? Ensure there is one bounding box per frame to represent the activity described in the caption.",
    "Could you provide me with an analysis of this video? Include a bounding box in each frame encapsulating the activity outlined in the caption.",
)
INFERENCE_QUESTION = VIDEO_GROUNDING_QUESTIONS[0]
QUESTIONS = {"grounding": VIDEO_GROUNDING_QUESTIONS, "stg": VIDEO_STG_QUESTIONS}

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)
IGNORE_INDEX = -100

_PHRASE_RE = re.compile(r"<p>(.*?)</p>", re.DOTALL)
_TAG_RE = re.compile(r"<[^>]*>")


class AnswerFormatError(ValueError):
    """A caption, its phrases and its tagged caption do not fit together."""


# ---------------------------------------------------------------------------- answer format
@dataclass(frozen=True)
class TaggedAnswer:
    """The assistant answer and, for its j-th [DET], the phrase and its index in the input phrase list."""

    text: str
    phrases: tuple[str, ...]
    order: tuple[int, ...]


@dataclass(frozen=True)
class ParsedAnswer:
    caption: str
    phrases: tuple[str, ...]
    tagged: str


def _clean_caption(text: str) -> str:
    return text.strip().strip('"').strip().lower()


def _phrase_span(phrase: str, caption: str, tagged: str, taken: list[tuple[int, int]]) -> int | None:
    """Start of `phrase` in `caption`: from its `<p>` tag in the tagged caption, else its first free word match."""
    if tagged:
        match = re.search(r"<p>\s*" + re.escape(phrase) + r"\s*</p>", tagged)
        if match:
            start = len(_TAG_RE.sub("", tagged[: match.start()]))
            if caption[start : start + len(phrase)] == phrase:
                return start
    for match in re.finditer(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", caption):
        if all(match.end() <= s or match.start() >= e for s, e in taken):
            return match.start()
    return None


def tag_answer(caption: str, phrases: Sequence[str], tagged_caption: str = "") -> TaggedAnswer:
    """Build `<p> phrase </p> [DET]` answers from a caption and its phrases (as the official loader does).

    Phrase positions come from the `<p>phrase</p>` tags of `tagged_caption` when given, else from the
    first whole-word match in `caption`. With only a tagged caption, the caption is the tagged text
    without its tags. Raises AnswerFormatError for a phrase that is not in the caption.
    """
    tagged = _clean_caption(tagged_caption)
    text = _clean_caption(caption) or re.sub(r"\s+", " ", _TAG_RE.sub("", tagged)).strip()
    spans: list[tuple[int, int, int]] = []
    for index, phrase in enumerate(phrases):
        needle = _clean_caption(phrase)
        if not needle:
            raise AnswerFormatError(f"phrase {index} is empty (caption {caption!r})")
        start = _phrase_span(needle, text, tagged, [(s, e) for s, e, _ in spans])
        if start is None:
            raise AnswerFormatError(f"phrase {phrase!r} is not in the caption {text!r}")
        spans.append((start, start + len(needle), index))
    spans.sort()
    for (s0, e0, i0), (s1, _, i1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise AnswerFormatError(f"phrases {phrases[i0]!r} and {phrases[i1]!r} overlap in {text!r}")
    answer = text
    for start, end, _ in reversed(spans):
        answer = f"{answer[:start]}{P_START} {answer[start:end]} {P_END} {DET}{answer[end:]}"
    return TaggedAnswer(answer, tuple(text[s:e] for s, e, _ in spans), tuple(i for _, _, i in spans))


def single_phrase_answer(caption: str) -> TaggedAnswer:
    """VidSTG-style answer: the whole sentence is one phrase, `<p> caption </p> [DET]`, only stripped, as GROVE's
    VidSTG dataset and infer_vidstg.py build it (HowToGround captions, unlike these, are lower-cased)."""
    text = caption.strip()
    return TaggedAnswer(f"{P_START} {text} {P_END} {DET}", (text,), (0,))


def parse_answer(text: str) -> ParsedAnswer:
    """Phrases by the regex `<p>(.*?)</p>`; caption = text without `<...>` tags and [DET], whitespace collapsed."""
    phrases = tuple(p.strip() for p in _PHRASE_RE.findall(text))
    caption = _TAG_RE.sub("", text).replace(DET, "")
    return ParsedAnswer(" ".join(caption.split()), phrases, text.strip())


# ---------------------------------------------------------------------------- pixels and boxes
def _as_frames(frames: np.ndarray) -> torch.Tensor:
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3 or array.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {array.dtype} {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float()


def clip_pixels(frames: np.ndarray, size: int, aspect: str = "crop") -> torch.Tensor:
    """(T,H,W,3) uint8 -> (T,3,size,size), CLIP mean / std. aspect "crop": shortest side to `size`, centre
    crop (CLIPImageProcessor); "pad": longest side to `size`, centred on CLIP's mean colour (LLaVA's expand2square)."""
    x = _as_frames(frames)
    new_hw, (top, left) = clip_geometry(x.shape[-2], x.shape[-1], size, aspect)
    x = F.interpolate(x, size=new_hw, mode="bicubic", antialias=True, align_corners=False).clamp_(0, 255) / 255.0
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    if aspect == "pad":  # zero after normalisation = the mean colour
        return F.pad(x, (left, size - new_hw[1] - left, top, size - new_hw[0] - top))
    return x[:, :, -top : -top + size, -left : -left + size]


def clip_geometry(height: int, width: int, size: int, aspect: str = "crop") -> tuple[tuple[int, int], tuple[int, int]]:
    """Where `clip_pixels` puts a height x width frame: its resized (h, w) and the (top, left) of the
    resized frame on the size x size image (negative for "crop": the part cut off)."""
    if aspect == "pad":
        new_hw = sam_resize_shape(height, width, size)
        return new_hw, ((size - new_hw[0]) // 2, (size - new_hw[1]) // 2)
    short, long = min(height, width), max(height, width)
    long_new = int(size * long / short)
    new_hw = (size, long_new) if height <= width else (long_new, size)
    return new_hw, (-((new_hw[0] - size) // 2), -((new_hw[1] - size) // 2))


def sam_resize_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """SAM's ResizeLongestSide.get_preprocess_shape."""
    scale = size / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def sam_pixels(frames: np.ndarray, size: int) -> torch.Tensor:
    """(T,H,W,3) uint8 -> (T,3,size,size): longest side to `size`, SAM mean / std, zero pad right / bottom."""
    x = _as_frames(frames)
    new_hw = sam_resize_shape(x.shape[-2], x.shape[-1], size)
    x = F.interpolate(x, size=new_hw, mode="bilinear", antialias=True, align_corners=False).clamp_(0, 255)
    mean = torch.tensor(SAM_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(SAM_STD).view(1, 3, 1, 1)
    x = (x - mean) / std
    return F.pad(x, (0, size - new_hw[1], 0, size - new_hw[0]))


def normalize_boxes(boxes_xyxy: np.ndarray, width: float, height: float) -> np.ndarray:
    """xyxy pixels -> (cx, cy, w, h) divided by the original frame size."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64)
    x1, y1, x2, y2 = np.moveaxis(boxes, -1, 0)
    out = np.stack([(x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height], -1)
    return out.astype(np.float32)


def denormalize_boxes(boxes_cxcywh: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Normalised (cx, cy, w, h) -> xyxy pixels of a frame of the given original size."""
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    return torch.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], -1)


# ---------------------------------------------------------------------------- processor
class GroveProcessor:
    """Turns a clip into model inputs and a list of clips into a padded batch. Picklable (for workers)."""

    def __init__(self, config: GroveConfig, tokenizer: "PreTrainedTokenizerBase | None" = None) -> None:
        self.config = config
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(config.tokenizer_source, config.tiny_vocab_size)
        self.ids = token_ids(self.tokenizer)

    # -- text
    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def question(self, question: str | None = None, task: str = "grounding", rng: np.random.Generator | None = None) -> str:
        """The given question, a random one of the task's templates (training, with `rng`), or the inference one."""
        if question is not None:
            return question
        if task not in QUESTIONS:
            raise ValueError(f"unknown task {task!r}; expected one of {sorted(QUESTIONS)}")
        if rng is None:
            return QUESTIONS[task][0]
        return QUESTIONS[task][int(rng.integers(len(QUESTIONS[task])))]

    def prompt_ids(self, question: str = INFERENCE_QUESTION) -> list[int]:
        """`<s>{SYSTEM} USER: {intro}{question} ASSISTANT:` with one VIDEO_TOKEN_INDEX for `<video>`."""
        before, after = f"{SYSTEM} USER: {VIDEO_INTRO}{question} ASSISTANT:".split(VIDEO_PLACEHOLDER)
        bos = [self.ids.bos] if self.ids.bos is not None else []
        return bos + self.encode_text(before) + [VIDEO_TOKEN_INDEX] + self.encode_text(after)

    def answer_ids(self, answer: str) -> list[int]:
        """Ids of an answer as the model emits it after `ASSISTANT:` (without `</s>`)."""
        return self.encode_text(" " + answer)

    def conversation_ids(self, answer: str, question: str = INFERENCE_QUESTION) -> tuple[list[int], list[int]]:
        """input_ids and labels of one conversation; labels are -100 outside the answer and its `</s>`."""
        prompt = self.prompt_ids(question)
        answer_part = self.answer_ids(answer) + [self.ids.eos]
        limit = self.config.max_length - self.config.num_video_tokens + 1
        if len(prompt) + len(answer_part) > limit:
            raise AnswerFormatError(
                f"conversation of {len(prompt) + len(answer_part)} tokens exceeds max_length {self.config.max_length} "
                f"with {self.config.num_video_tokens} video tokens: {answer[:80]!r}..."
            )
        return prompt + answer_part, [IGNORE_INDEX] * len(prompt) + answer_part

    def decode_answer(self, ids: Sequence[int]) -> str:
        """Generated ids -> tagged answer text, stopping at `</s>` and dropping bos / pad."""
        ids = list(ids)
        if self.ids.eos in ids:
            ids = ids[: ids.index(self.ids.eos)]
        ids = [i for i in ids if i not in (self.ids.pad, self.ids.bos)]
        return " ".join(self.tokenizer.decode(ids, skip_special_tokens=False).split())

    # -- pixels
    def pixels(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(T,H,W,3) uint8 frames -> (global_pixels (T,3,Sg,Sg), grounding_pixels (T,3,Sd,Sd))."""
        return clip_pixels(frames, self.config.global_image_size, self.config.global_image_aspect), sam_pixels(frames, self.config.grounding_image_size)

    # -- one clip
    def __call__(
        self,
        frames: np.ndarray,
        caption: str = "",
        phrases: Sequence[str] = (),
        tagged_caption: str = "",
        boxes: np.ndarray | None = None,
        present: np.ndarray | None = None,
        original_size: tuple[int, int] | None = None,
        question: str | None = None,
        task: str = "grounding",
        rng: np.random.Generator | None = None,
    ) -> dict[str, Any]:
        """One training / teacher-forcing sample.

        `boxes` are (T, len(phrases), 4) xyxy in original pixels, aligned with `phrases` as given
        (the canonical `phrase_index`); `present` (T, len(phrases)) says which exist (default: the
        rows of `boxes` that are finite). They are reordered to the answer's [DET] order.
        `task="stg"` makes the whole caption the single phrase (VidSTG). `original_size` is
        (width, height); default: the frames' own size.
        """
        num_frames = len(frames)
        answer = single_phrase_answer(caption) if task == "stg" else tag_answer(caption, phrases, tagged_caption)
        input_ids, labels = self.conversation_ids(answer.text, self.question(question, task, rng))
        width, height = original_size if original_size is not None else (frames.shape[2], frames.shape[1])
        num_in = 1 if task == "stg" else len(phrases)
        gt_boxes = np.zeros((num_frames, len(answer.order), 4), np.float32)
        gt_present = np.zeros((num_frames, len(answer.order)), bool)
        if boxes is not None:
            boxes = np.asarray(boxes, dtype=np.float64)
            if boxes.shape != (num_frames, num_in, 4):
                raise ValueError(f"boxes must be ({num_frames}, {num_in}, 4), got {boxes.shape}")
            if present is None:
                present = np.isfinite(boxes).all(-1)
            present = np.asarray(present, bool)
            if present.shape != (num_frames, num_in):
                raise ValueError(f"present must be ({num_frames}, {num_in}), got {present.shape}")
            order = list(answer.order)
            gt_present = present[:, order]
            gt_boxes = np.where(gt_present[..., None], normalize_boxes(np.nan_to_num(boxes[:, order]), width, height), 0)
        global_pixels, grounding_pixels = self.pixels(frames)
        return {
            "global_pixels": global_pixels,
            "grounding_pixels": grounding_pixels,
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "gt_boxes": torch.from_numpy(gt_boxes.astype(np.float32)),
            "gt_present": torch.from_numpy(gt_present),
            "original_size": (int(width), int(height)),
            "phrases": list(answer.phrases),
            "answer": answer.text,
        }

    # -- batch
    def collate(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Pad a list of samples into a batch (right padding of text; phrases padded with phrase_mask False)."""
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        num_frames = {s["global_pixels"].shape[0] for s in samples}
        if len(num_frames) != 1:
            raise ValueError(f"samples have different frame counts: {sorted(num_frames)}")
        batch_size = len(samples)
        max_len = max(len(s["input_ids"]) for s in samples)
        max_phrases = max(s["gt_boxes"].shape[1] for s in samples)
        frames = next(iter(num_frames))
        input_ids = torch.full((batch_size, max_len), self.ids.pad, dtype=torch.long)
        labels = torch.full((batch_size, max_len), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((batch_size, max_len), dtype=torch.long)
        gt_boxes = torch.zeros((batch_size, frames, max_phrases, 4))
        gt_present = torch.zeros((batch_size, frames, max_phrases), dtype=torch.bool)
        phrase_mask = torch.zeros((batch_size, max_phrases), dtype=torch.bool)
        for b, sample in enumerate(samples):
            length, phrases = len(sample["input_ids"]), sample["gt_boxes"].shape[1]
            input_ids[b, :length] = sample["input_ids"]
            labels[b, :length] = sample["labels"]
            attention_mask[b, :length] = 1
            gt_boxes[b, :, :phrases] = sample["gt_boxes"]
            gt_present[b, :, :phrases] = sample["gt_present"]
            phrase_mask[b, :phrases] = True
        return {
            "global_pixels": torch.stack([s["global_pixels"] for s in samples]),
            "grounding_pixels": torch.stack([s["grounding_pixels"] for s in samples]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "gt_boxes": gt_boxes,
            "gt_present": gt_present,
            "phrase_mask": phrase_mask,
            "original_sizes": torch.tensor([s["original_size"] for s in samples], dtype=torch.long),
            "phrases": [s["phrases"] for s in samples],
            "answers": [s["answer"] for s in samples],
        }


def batch_to(batch: dict[str, Any], device: torch.device | str, non_blocking: bool = False) -> dict[str, Any]:
    """Move the tensors of a batch to `device`; other values pass through."""
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
