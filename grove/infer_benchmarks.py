"""Inference on VidSTG and ActivityNet-Entities by GROVE's protocols, on converted dataset folders.

VidSTG (grove_spec 4.3, `infer_vidstg.py`): the query sentence is teacher-forced as one phrase,
`<p> sentence </p> [DET]`, with the first VidSTG question, on the 5 fps frames of the GT tube
(`range(tube_start, tube_end - 1, int(fps / 5))`, the clip's annotated frames), in GROVE's sliding
8-frame windows; one box per frame, objectness ignored (the official model runs with
`use_temp_objectness=False`). Predictions are keyed by the sentence id (`video_id` of the
annotation) and hold `frame_ids`, `boxes` and `qtype`, the layout `eval_vidstg.py` reads.

Temporal grounding (not in the paper; issue: "from the objectness curve"): the same sentence
teacher-forced as one phrase with the grounding question on the 5 fps grid of the whole video
segment [start_frame, end_frame); the predicted interval is the longest run of frames whose
objectness is above the threshold (`grove.infer.temporal_grounding`), from its first frame to one
grid step past its last. Stored under `temporal` (seconds, with the curve) and as `sted`
(half-open native frames, TubeDETR's field).

ActivityNet-Entities (grove_spec 4.4, `infer_anet.py`): per segment, the 10 frames nearest the
midpoints of its tenths (the end clamped to the second-last frame's time, as GROVE clamps it to its
decodable-frame timestamps; here the video's own frame grid); a caption generated greedily (64 new
tokens) from frames 0-7, then that answer teacher-forced on windows 0-7 (boxes of frames 0-7), 1-8
(frame 8) and 2-9 (frame 9); no objectness, so every phrase gets a box on all 10 frames. Boxes are
in the 720-pixel-wide frame of the annotation (`original_size` = 720 x the scaled height; the
frames themselves are not re-scaled before the processor). The submission layout of the official
evaluator: `results[video][segment] = {clss, idx_in_sent, bbox_for_all_frames}`. Differences: the
~10 string repairs infer_anet.py hard-codes for malformed generations of its model are not applied,
and a phrase without a `[DET]` query (the official script would crash or write no box) is left out.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from grove.data.anet_entities import FRAME_WIDTH, NUM_SLOTS, slot_times
from grove.data.dataset import load_dataset
from grove.data.frames import annotated_frame_ids, frame_step
from grove.data.loader import decode_frames
from grove.data.predictions import clean_answer
from grove.infer import _ground_windows, single_phrase_boxes, temporal_grounding
from grove.model import GroveModel
from grove.model.processor import INFERENCE_QUESTION, VIDEO_STG_QUESTIONS, denormalize_boxes

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
ANET_WINDOWS = [list(range(start, start + 8)) for start in range(NUM_SLOTS - 8 + 1)]  # [0..7], [1..8], [2..9]
ANET_MASKS = [[1] * 8] + [[0] * 7 + [1] for _ in ANET_WINDOWS[1:]]  # frames 8 and 9: the last of windows 2 and 3


def _progress(done: int, total: int, started: float, what: str, callback: ProgressCallback | None) -> None:
    if callback is not None:
        callback(done, total)
    if done % 10 == 0 or done == total:
        rate = done / max(time.perf_counter() - started, 1e-9)
        logger.info("%s: %d/%d (%.2f/s, ETA %.0fs)", what, done, total, rate, (total - done) / rate)


def _each_clip(dataset_dir: str | Path, split: str, max_clips: int | None, what: str, callback: ProgressCallback | None):
    """(dataset, row, the row's `extra`) for each clip of a split, with progress reported after each."""
    dataset = load_dataset(dataset_dir, split=split)
    rows = dataset.clips.to_pylist()[:max_clips]
    started = time.perf_counter()
    for done, row in enumerate(rows, start=1):
        yield dataset, row, json.loads(row["extra"] or "{}")
        _progress(done, len(rows), started, what, callback)


def _load(model: GroveModel | None, checkpoint: str | Path | None, device: str) -> GroveModel:
    if model is not None:
        return model
    from grove.train import load_model

    return load_model(checkpoint, device)


@torch.no_grad()
def predict_vidstg(
    checkpoint: str | Path | None,
    dataset_dir: str | Path,
    split: str = "test",
    temporal: bool = True,
    threshold: float = 0.5,
    device: str = "cpu",
    max_clips: int | None = None,
    video_backend: str = "pyav",
    callback: ProgressCallback | None = None,
    model: GroveModel | None = None,
    short_clips: str = "pad_last",
) -> dict[str, dict[str, Any]]:
    """VidSTG predictions of a converted VidSTG split (grove.data.vidstg), keyed by sentence id (see the module docstring)."""
    model = _load(model, checkpoint, device)
    out: dict[str, dict[str, Any]] = {}
    for dataset, row, extra in _each_clip(dataset_dir, split, max_clips, "vidstg", callback):
        fps, size = float(row["fps"]), (int(row["width"]), int(row["height"]))
        tube = annotated_frame_ids(fps, row["clip_start_frame"], row["clip_end_frame"], row["num_frames"] or None)
        step = frame_step(fps)
        first = int(extra.get("start_frame", row["clip_start_frame"]))
        end = int(extra.get("end_frame", row["clip_end_frame"] + 1))
        grid = list(range(first, end, step)) if temporal else []
        wanted = sorted(set(tube) | set(grid))
        decoded = decode_frames(dataset.video_file(row["video_path"]), wanted, video_backend)
        at = {frame: i for i, frame in enumerate(wanted)}
        boxes, _ = single_phrase_boxes(model, decoded[[at[f] for f in tube]], row["caption"], size,
                                       question=VIDEO_STG_QUESTIONS[0], short_clips=short_clips)
        record: dict[str, Any] = {"frame_ids": tube, "boxes": [[float(v) for v in box] for box in boxes],
                                  "qtype": extra.get("qtype", "declarative")}
        if temporal and grid:
            found = temporal_grounding(model, decoded[[at[f] for f in grid]], [f / fps for f in grid], row["caption"],
                                       threshold, size, frame_step_s=step / fps)
            record["sted"] = [grid[found.start_frame], min(end, grid[found.end_frame] + step)]
            record["temporal"] = {"start_s": found.start_s, "end_s": found.end_s, "frame_ids": grid,
                                  "objectness": [round(p, 6) for p in found.probs], "threshold": threshold}
        out[str(extra.get("video_id", row["clip_id"]))] = record
    return out


def segment_frames(start: float, end: float, fps: float, num_frames: int) -> tuple[list[int], list[float]]:
    """Native frames of GROVE's 10 ActivityNet-Entities samples: the frame nearest each midpoint of the
    tenths of [start, min(end, time of the second-last frame)] (a tie to the earlier frame, as argmin)."""
    times = [i / fps for i in range(num_frames)]
    end = min(end, times[-2]) if num_frames >= 2 else end
    midpoints = slot_times(start, end)
    frames = [int(np.argmin([abs(t - m) for t in times])) for m in midpoints]
    return frames, midpoints


@torch.no_grad()
def anet_segment(model: GroveModel, frames: np.ndarray, size: tuple[int, int], max_new_tokens: int = 64) -> dict[str, Any]:
    """GROVE's ActivityNet-Entities protocol on one segment's 10 frames -> its submission entry."""
    processor = model.processor
    global_pixels, grounding_pixels = processor.pixels(frames)
    ids = model.generate_ids(global_pixels[ANET_WINDOWS[0]], max_new_tokens)[0].tolist()
    if processor.ids.eos in ids:
        ids = ids[: ids.index(processor.ids.eos)]
    phrases, caption, _ = clean_answer(processor.decode_answer(ids))
    boxes, _ = _ground_windows(model, global_pixels, grounding_pixels, ANET_WINDOWS, ANET_MASKS, ids, INFERENCE_QUESTION,
                               len(ANET_WINDOWS))
    pixels = denormalize_boxes(boxes.float(), *size).cpu().numpy()  # (10, Q, 4)
    paired = phrases[: min(len(phrases), pixels.shape[1])]
    return {
        "clss": paired,
        "idx_in_sent": [caption.find(phrase) for phrase in paired],
        "bbox_for_all_frames": [[[float(v) for v in pixels[t, j]] for t in range(NUM_SLOTS)] for j in range(len(paired))],
        "caption": caption,
        "unpaired_phrases": len(phrases) - len(paired),
    }


def predict_anet_entities(
    checkpoint: str | Path | None,
    dataset_dir: str | Path,
    split: str = "val",
    device: str = "cpu",
    max_clips: int | None = None,
    max_new_tokens: int = 64,
    video_backend: str = "pyav",
    callback: ProgressCallback | None = None,
    model: GroveModel | None = None,
) -> dict[str, Any]:
    """The official submission for a converted ActivityNet-Entities split (grove.data.anet_entities)."""
    from grove.data import video as video_io

    model = _load(model, checkpoint, device)
    results: dict[str, dict[str, Any]] = {}
    for dataset, row, extra in _each_clip(dataset_dir, split, max_clips, "anet_entities", callback):
        start, end = (float(t) for t in extra["timestamps"])
        path = dataset.video_file(row["video_path"])
        reader_kind = video_io.PyAVReader if video_backend == "pyav" else video_backend
        with video_io.open_video(path, reader_kind) as reader:
            meta = reader.metadata
        frame_ids, _ = segment_frames(start, end, meta.fps, meta.num_frames)
        frames = decode_frames(path, frame_ids, video_backend)
        size = (FRAME_WIDTH, int(round(meta.height * FRAME_WIDTH / meta.width)))
        entry = anet_segment(model, frames, size, max_new_tokens)
        entry["frame_ids"] = frame_ids
        results.setdefault(str(row["video_id"]), {})[str(row["clip_id"])] = entry
    return {"results": results, "eval_mode": "gen",
            "external_data": {"used": False, "details": "GROVE; the grounding head reads the model's own video features."}}


def predict_benchmark(
    benchmark: str,
    checkpoint: str | Path | None,
    dataset_dir: str | Path,
    split: str,
    temporal: bool = True,
    threshold: float = 0.5,
    device: str = "cpu",
    callback: ProgressCallback | None = None,
) -> tuple[dict[str, Any], int]:
    """One benchmark's predictions in its official layout, and how many clips (VidSTG sentences,
    ActivityNet-Entities segments) they cover."""
    if benchmark == "vidstg":
        predictions = predict_vidstg(checkpoint, dataset_dir, split=split, temporal=temporal, threshold=threshold,
                                     device=device, callback=callback)
        return predictions, len(predictions)
    if benchmark == "anet_entities":
        predictions = predict_anet_entities(checkpoint, dataset_dir, split=split, device=device, callback=callback)
        return predictions, sum(len(segments) for segments in predictions["results"].values())
    raise ValueError(f"unknown benchmark {benchmark!r}: vidstg or anet_entities")
