"""Inference by the official GROVE protocol (grove_spec 4.1, `infer_iground.py`), on dataset clips or on any video file.

Frames: every frame of the 5 fps grid. Windows: `grove.data.frames.inference_windows`, GROVE's
`sliding_segment_with_mask` (strided windows {i·s + k}, the F % 8 leftover frames from windows
shifted by s, each frame from the first window that covers it; clips under 8 frames: see
`short_clips` there). Caption: greedy, from window `last_index_all_ones // 2` (the segment centres),
`max_new_tokens` 64, cleaned as `infer_iground.py` cleans it (`clean_answer`). Boxes: the generated
answer teacher-forced on every window, so every frame gets one box per `[DET]` query and an
objectness probability.

Dataset predictions are written in the official layout (`grove.data.predictions`): per frame the boxes
whose objectness passes the threshold (strict >), in query order, as the official model filters them
inside its inference branch; their labels `[phrases[i] for kept i if i < len(phrases)]`; the
probabilities of all queries. Every query's box is kept as well, under `all_bboxes`.

Also here: the single-phrase teacher-forced mode of VidSTG (the sentence is the one phrase, one box
per frame, no objectness) and temporal grounding of a query sentence from the objectness curve.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from grove.data.dataset import load_dataset
from grove.data.frames import ANNOTATION_FPS, annotated_frame_ids, caption_window_index, inference_windows
from grove.data.loader import decode_frames
from grove.data.predictions import ClipPrediction, clean_answer, official_record
from grove.model import GroveModel
from grove.model.processor import (
    INFERENCE_QUESTION,
    VIDEO_STG_QUESTIONS,
    denormalize_boxes,
    single_phrase_answer,
    tag_answer,
)
from grove.train import load_model

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
INFERENCE_MODES = ("caption", "reference", "phrase")


@dataclass
class GroundedCaption:
    """A grounded caption of F frames: one box and one objectness probability per (frame, [DET] query).

    `boxes` and `objectness` hold EVERY [DET] query of the answer (Q of them); a malformed answer can
    have more [DET] than phrases (the extra queries have no phrase) or fewer. `caption` and `phrases`
    are cleaned as `infer_iground.py` cleans them; `tagged` is the answer as generated (or given).
    """

    caption: str
    tagged: str
    phrases: list[str]
    boxes: np.ndarray  # (F, Q, 4) xyxy in original pixels
    objectness: np.ndarray  # (F, Q) sigmoid probabilities

    @property
    def paired(self) -> int:
        """How many queries have a phrase: the j-th [DET] pairs with the j-th phrase."""
        return min(self.boxes.shape[1], len(self.phrases))

    def kept(self, threshold: float) -> tuple[list[np.ndarray], list[list[str]]]:
        """Per frame, the boxes and phrases of the paired queries whose objectness passes the threshold (strict >)."""
        boxes, labels = [], []
        for frame_boxes, probs in zip(self.boxes, self.objectness):
            keep = [j for j in range(self.paired) if probs[j] > threshold]
            boxes.append(frame_boxes[keep])
            labels.append([self.phrases[j] for j in keep])
        return boxes, labels

    def to_prediction(self, threshold: float) -> ClipPrediction:
        """The official record: per frame the boxes kept by objectness (all queries, query order), their
        labels as `infer_iground.py` derives them, every query's probability; every box under `all_bboxes`."""
        tagged = clean_answer(self.tagged)[2]
        return official_record(self.boxes, self.objectness, self.phrases, self.caption, tagged, threshold)


@dataclass
class TemporalGrounding:
    """Where a query sentence is visible: the longest run of frames above the threshold."""

    query: str
    start_s: float
    end_s: float
    start_frame: int
    end_frame: int
    times_s: list[float]
    probs: list[float]
    boxes: np.ndarray  # (F, 4) xyxy pixels


def _answer_ids(ids: torch.Tensor, eos: int) -> list[int]:
    row = ids.tolist()
    return row[: row.index(eos)] if eos in row else row


def _ground_windows(
    model: GroveModel,
    global_pixels: torch.Tensor,
    grounding_pixels: torch.Tensor,
    windows: Sequence[Sequence[int]],
    masks: Sequence[Sequence[int]],
    answer: Sequence[int] | str,
    question: str,
    window_batch: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced boxes (F, Q, 4) normalised cxcywh and logits (F, Q); frame f comes from the window
    position whose mask is 1 for it (the first window that covers it)."""
    num_frames = global_pixels.shape[0]
    boxes: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    assigned = torch.zeros(num_frames, dtype=torch.bool)
    for start in range(0, len(windows), window_batch):
        chunk = [list(w) for w in windows[start : start + window_batch]]
        index = torch.tensor(chunk)
        result = model.ground(global_pixels[index], grounding_pixels[index], answer, question=question)
        if boxes is None:
            queries = result.boxes.shape[2]
            boxes = result.boxes.new_zeros(num_frames, queries, 4)
            logits = result.objectness_logits.new_zeros(num_frames, queries)
        for w, frame_ids in enumerate(chunk):
            for i, frame in enumerate(frame_ids):
                if masks[start + w][i] and not assigned[frame]:
                    boxes[frame] = result.boxes[w, i]
                    logits[frame] = result.objectness_logits[w, i]
                    assigned[frame] = True
    assert boxes is not None and logits is not None and bool(assigned.all()), "windows must cover every frame"
    return boxes, logits


@torch.no_grad()
def grounded_caption(
    model: GroveModel,
    frames: np.ndarray,
    original_size: tuple[int, int] | None = None,
    max_new_tokens: int = 64,
    window_batch: int = 8,
    answer: str | None = None,
    short_clips: str = "pad_last",
) -> GroundedCaption:
    """The official protocol on F frames of the 5 fps grid: caption from the centre window, boxes on all.
    With `answer` (a `<p> phrase </p> [DET]` answer, e.g. the reference caption's), that answer is
    teacher-forced instead of a generated one: grounding alone, apart from captioning. `short_clips`:
    the windows of a clip under 8 frames (`grove.data.frames.inference_windows`)."""
    processor = model.processor
    if len(frames) == 0:
        raise ValueError("no frames to caption")
    width, height = original_size if original_size is not None else (frames.shape[2], frames.shape[1])
    global_pixels, grounding_pixels = processor.pixels(frames)
    window = model.config.num_frames
    windows, masks = inference_windows(len(frames), window, short_clips)
    if answer is None:
        centre = windows[caption_window_index(len(frames), window, short_clips)]
        ids: list[int] | str = _answer_ids(model.generate_ids(global_pixels[centre], max_new_tokens)[0], processor.ids.eos)
        tagged = processor.decode_answer(ids)
    else:
        ids = tagged = answer
    phrases, caption, _ = clean_answer(tagged)
    boxes, logits = _ground_windows(model, global_pixels, grounding_pixels, windows, masks, ids, INFERENCE_QUESTION, window_batch)
    return GroundedCaption(
        caption=caption,
        tagged=tagged,
        phrases=phrases,
        boxes=denormalize_boxes(boxes.float(), width, height).cpu().numpy(),
        objectness=torch.sigmoid(logits.float()).cpu().numpy(),
    )


@torch.no_grad()
def single_phrase_boxes(
    model: GroveModel,
    frames: np.ndarray,
    sentence: str,
    original_size: tuple[int, int] | None = None,
    question: str = VIDEO_STG_QUESTIONS[0],
    window_batch: int = 8,
    short_clips: str = "pad_last",
) -> tuple[np.ndarray, np.ndarray]:
    """VidSTG mode: `<p> sentence </p> [DET]` teacher-forced on every window; one xyxy box (F, 4) per
    frame and its objectness probability (F,) (ignored by VidSTG, used for temporal grounding)."""
    processor = model.processor
    width, height = original_size if original_size is not None else (frames.shape[2], frames.shape[1])
    global_pixels, grounding_pixels = processor.pixels(frames)
    windows, masks = inference_windows(len(frames), model.config.num_frames, short_clips)
    answer = single_phrase_answer(sentence).text
    boxes, logits = _ground_windows(model, global_pixels, grounding_pixels, windows, masks, answer, question, window_batch)
    return denormalize_boxes(boxes[:, 0].float(), width, height).cpu().numpy(), torch.sigmoid(logits[:, 0].float()).cpu().numpy()


def longest_run(mask: np.ndarray) -> tuple[int, int] | None:
    """First and last index of the longest run of True (the earliest one on ties); None without any."""
    best: tuple[int, int] | None = None
    start = None
    for i, value in enumerate(list(mask) + [False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            if best is None or (i - 1 - start) > (best[1] - best[0]):
                best = (start, i - 1)
            start = None
    return best


@torch.no_grad()
def temporal_grounding(
    model: GroveModel,
    frames: np.ndarray,
    times_s: Sequence[float],
    query: str,
    threshold: float = 0.5,
    original_size: tuple[int, int] | None = None,
    frame_step_s: float = 1.0 / ANNOTATION_FPS,
) -> TemporalGrounding:
    """When is `query` visible? The query is teacher-forced as one phrase with the grounding question;
    the answer is the longest run of frames whose objectness is above `threshold` (the single best
    frame when none is), from its first frame's time to one grid step past its last."""
    boxes, probs = single_phrase_boxes(model, frames, query, original_size, question=INFERENCE_QUESTION)
    run = longest_run(probs > threshold)
    if run is None:
        best = int(np.argmax(probs))
        run = (best, best)
    return TemporalGrounding(
        query=query,
        start_s=float(times_s[run[0]]),
        end_s=float(times_s[run[1]]) + frame_step_s,
        start_frame=run[0],
        end_frame=run[1],
        times_s=[float(t) for t in times_s],
        probs=[float(p) for p in probs],
        boxes=boxes,
    )


def predict_dataset(
    checkpoint: str | Path,
    dataset_dir: str | Path,
    split: str = "test",
    threshold: float = 0.5,
    mode: str = "caption",
    device: str = "cpu",
    max_clips: int | None = None,
    max_new_tokens: int = 64,
    video_backend: str = "pyav",
    callback: ProgressCallback | None = None,
    model: GroveModel | None = None,
    short_clips: str = "pad_last",
) -> dict[str, ClipPrediction]:
    """Predictions for every clip of a split, keyed `{video_id}_{clip_id}` (the official layout).

    mode "caption": grounded captioning (iGround): records in the official layout, boxes filtered at
    `threshold` (see `GroundedCaption.to_prediction`). mode "reference": the same with the clip's reference
    caption and phrases teacher-forced instead of a generated caption (grounding alone; caption metrics
    are then meaningless). mode "phrase": the clip caption teacher-forced as one phrase, one box per
    frame (VidSTG); records then have that box on every frame, the caption as text, and the objectness
    probabilities.
    """
    if mode not in INFERENCE_MODES:
        raise ValueError(f"unknown inference mode {mode!r}; expected one of {INFERENCE_MODES}")
    model = model if model is not None else load_model(checkpoint, device)
    dataset = load_dataset(dataset_dir, split=split)
    rows = dataset.clips.to_pylist()[:max_clips]
    predictions: dict[str, ClipPrediction] = {}
    started = time.perf_counter()
    for done, row in enumerate(rows, start=1):
        frame_ids = annotated_frame_ids(row["fps"], row["clip_start_frame"], row["clip_end_frame"], row["num_frames"] or None)
        video = dataset.video_file(row["video_path"])
        frames = decode_frames(video, frame_ids, video_backend)
        size = (int(row["width"]), int(row["height"]))
        if mode != "phrase":
            answer = None if mode == "caption" else tag_answer(row["caption"], row["phrases"], row["tagged_caption"]).text
            result = grounded_caption(model, frames, size, max_new_tokens, answer=answer, short_clips=short_clips)
            prediction = result.to_prediction(threshold)
        else:
            boxes, probs = single_phrase_boxes(model, frames, row["caption"], size, short_clips=short_clips)
            phrase = single_phrase_answer(row["caption"]).phrases[0]
            prediction = ClipPrediction(
                pred_bboxes=[b[None].astype(np.float32) for b in boxes],
                pred_labels=[[phrase] for _ in boxes],
                pred_text=phrase,
                pred_phrases=[phrase],
                probs_temp_objectness=[np.array([p], np.float32) for p in probs],
            )
        predictions[row["key"]] = prediction
        if callback is not None:
            callback(done, len(rows))
        if done % 10 == 0 or done == len(rows):
            rate = done / (time.perf_counter() - started)
            logger.info("predicted %d/%d clips (%.2f clips/s, ETA %.0fs)", done, len(rows), rate, (len(rows) - done) / rate)
    return predictions


@dataclass
class VideoInference:
    """A grounded caption of a video file, with its frames (for rendering) and their times."""

    video: str
    fps: float
    frame_ids: list[int]
    times_s: list[float]
    frames: np.ndarray
    result: GroundedCaption
    threshold: float

    def to_json(self) -> dict:
        frames = []
        for t, (frame_id, time_s) in enumerate(zip(self.frame_ids, self.times_s)):
            probs = self.result.objectness[t]
            kept = [j for j in range(self.result.paired) if probs[j] > self.threshold]
            frames.append({
                "frame_id": frame_id,
                "time_s": round(time_s, 4),
                "boxes": [
                    {"phrase": self.result.phrases[j], "box_xyxy": [round(float(v), 2) for v in self.result.boxes[t, j]],
                     "objectness": round(float(probs[j]), 4)}
                    for j in kept
                ],
            })
        return {
            "video": self.video,
            "caption": self.result.caption,
            "tagged_caption": self.result.tagged,
            "phrases": self.result.phrases,
            "threshold": self.threshold,
            "fps": self.fps,
            "frames": frames,
        }


def video_grid(video: str | Path, start_s: float | None = None, end_s: float | None = None, backend: str = "pyav"):
    """Native frame ids and times of the 5 fps grid over [start_s, end_s] of a video file, and its size."""
    from grove.data import video as video_io

    reader_kind = video_io.PyAVReader if backend == "pyav" else backend
    with video_io.open_video(video, reader_kind) as reader:
        meta = reader.metadata
    if meta.num_frames <= 0 or meta.fps <= 0:
        raise ValueError(f"{video}: no decodable frames (fps {meta.fps}, {meta.num_frames} frames)")
    first = 0 if start_s is None else max(0, int(round(start_s * meta.fps)))
    last = meta.num_frames - 1 if end_s is None else min(meta.num_frames - 1, int(round(end_s * meta.fps)))
    if last < first:
        raise ValueError(f"{video}: empty time range [{start_s}, {end_s}] s")
    ids = annotated_frame_ids(meta.fps, first, last)
    return ids, [i / meta.fps for i in ids], meta


def infer_video(
    model: GroveModel,
    video: str | Path,
    threshold: float = 0.5,
    start_s: float | None = None,
    end_s: float | None = None,
    max_new_tokens: int = 64,
    backend: str = "pyav",
    short_clips: str = "pad_last",
) -> VideoInference:
    """A grounded caption for a video file with no annotation."""
    frame_ids, times, meta = video_grid(video, start_s, end_s, backend)
    frames = decode_frames(Path(video), frame_ids, backend)
    result = grounded_caption(model, frames, (meta.width, meta.height), max_new_tokens, short_clips=short_clips)
    return VideoInference(str(video), meta.fps, frame_ids, times, frames, result, threshold)
