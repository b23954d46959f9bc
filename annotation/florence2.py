"""Stage-1 backend `florence2`: transformers' Florence-2, a detailed caption then caption-to-phrase grounding.

Also the worked example of a stage-1 plug-in (see annotation/stage1.py): a class taking
`(context, **options)` with `describe()` and `caption_clips(clips)`. Frames are decoded through
grove.data.video on the clip's 5 fps grid; each frame gets `<MORE_DETAILED_CAPTION>` (or the task in
`caption_task`), then `<CAPTION_TO_PHRASE_GROUNDING>` with that caption, both batched over frames.
Boxes come back in the decoded frame's pixels and are rescaled to the clip's width and height.
Weights: a local folder or a hub id (`model=`, or `$GROVE_ANNOTATION_FLORENCE2`) in transformers' own Florence-2
layout (`florence-community/Florence-2-large`; `microsoft/Florence-2-*` hold remote code, which this backend
does not run); offline tests use a tiny random-weight model.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Sequence

import numpy as np

from annotation.records import Box, ClipFailure, ClipFrames, ClipRequest, FrameAnnotation
from annotation.stage1 import Stage1Context

logger = logging.getLogger(__name__)

GROUNDING_TASK = "<CAPTION_TO_PHRASE_GROUNDING>"
_SPECIAL = re.compile(r"<[^>]*>")


def clean_caption(text: str) -> str:
    """A generated caption without special tokens (`<loc_12>`, `<pad>`, ...) and with collapsed spaces."""
    return " ".join(_SPECIAL.sub(" ", text).split())


def grounding_result(parsed: dict[str, Any], scale: tuple[float, float], size: tuple[int, int]) -> tuple[list[str], list[Box]]:
    """Phrases and boxes of a post-processed grounding answer, rescaled and clamped to `size` (w, h)."""
    phrases, boxes = [], []
    sx, sy = scale
    width, height = size
    for label, box in zip(parsed.get("labels", []), parsed.get("bboxes", [])):
        phrase = clean_caption(label).lower()
        x1, y1, x2, y2 = (float(v) for v in box)
        x1, x2 = sorted((min(max(x1 * sx, 0.0), width), min(max(x2 * sx, 0.0), width)))
        y1, y2 = sorted((min(max(y1 * sy, 0.0), height), min(max(y2 * sy, 0.0), height)))
        if phrase and x2 > x1 and y2 > y1:
            phrases.append(phrase)
            boxes.append((round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)))
    return phrases, boxes


class Florence2Captioner:
    def __init__(
        self,
        context: Stage1Context,
        model: str = "florence-community/Florence-2-large",
        caption_task: str = "<MORE_DETAILED_CAPTION>",
        batch_size: int = 16,
        max_new_tokens: int = 128,
        num_beams: int = 1,
        device: str | None = None,
        dtype: str = "float32",
    ) -> None:
        self.context = context
        self.model_name = model
        self.caption_task = caption_task
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.device = device
        self.dtype = dtype
        self._model: Any = None
        self._processor: Any = None

    def describe(self) -> dict[str, Any]:
        return {"backend": "florence2", "model": self.model_name, "caption_task": self.caption_task,
                "max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams, "dtype": self.dtype}

    def _load(self) -> None:
        import torch
        from transformers import Florence2ForConditionalGeneration, Florence2Processor

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu":
            logger.info("florence2: no GPU, running %s on the CPU", self.model_name)
        self._processor = Florence2Processor.from_pretrained(self.model_name)
        model = Florence2ForConditionalGeneration.from_pretrained(self.model_name, dtype=getattr(torch, self.dtype))
        self._model, self.device = model.to(device).eval(), device

    def _generate(self, images: Sequence[np.ndarray], prompts: Sequence[str], task: str) -> list[Any]:
        import torch

        results = []
        for start in range(0, len(images), self.batch_size):
            batch_images = list(images[start : start + self.batch_size])
            inputs = self._processor(text=list(prompts[start : start + self.batch_size]), images=batch_images,
                                     return_tensors="pt", padding=True).to(self.device)
            inputs["pixel_values"] = inputs["pixel_values"].to(self._model.dtype)
            with torch.inference_mode():
                generated = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                                 num_beams=self.num_beams, do_sample=False)
            texts = self._processor.batch_decode(generated, skip_special_tokens=False)
            for text, image in zip(texts, batch_images):
                size = (image.shape[1], image.shape[0])
                results.append(self._processor.post_process_generation(text, task=task, image_size=size)[task])
        return results

    def _caption_frames(self, clip: ClipRequest, frames: np.ndarray) -> ClipFrames:
        captions = [clean_caption(c) for c in self._generate(frames, [self.caption_task] * len(frames), self.caption_task)]
        grounded = [i for i, c in enumerate(captions) if c]
        answers = dict(zip(grounded, self._generate([frames[i] for i in grounded],
                                                    [GROUNDING_TASK + captions[i] for i in grounded], GROUNDING_TASK)))
        height, width = frames.shape[1:3]
        scale = (clip.width / width, clip.height / height)
        out = []
        for t, (index, frame_id) in enumerate(zip(clip.frame_indices, clip.frame_ids)):
            phrases, boxes = grounding_result(answers.get(t, {}), scale, (clip.width, clip.height))
            out.append(FrameAnnotation(index, frame_id, captions[t], phrases, boxes))
        return ClipFrames(clip.key, out)

    def caption_clips(self, clips: Sequence[ClipRequest]) -> list[ClipFrames | ClipFailure]:
        from grove.data.video import DecodeError, open_video

        if self._model is None:
            self._load()
        results: list[ClipFrames | ClipFailure] = []
        for clip in clips:
            try:
                with open_video(clip.video_file, self.context.video_backend) as reader:
                    frames = reader.get_frames(list(clip.frame_ids))
            except (DecodeError, OSError, IndexError) as exc:
                results.append(ClipFailure(clip.key, f"cannot decode {clip.video_file}: {exc}"))
                continue
            results.append(self._caption_frames(clip, frames))
        return results
