"""The GROVE frame protocol: which native frames are annotated, sampled for training, and windowed at inference.

Facts (grove_spec.md 1.1, 4.1): annotations are dense on the ~5 fps grid
`clip_start_frame + i * int(fps / 5)`; training draws one random frame in each of 8 TSN segments
(the last segment takes the remainder); evaluation takes the segment midpoints `(start + end) // 2`
with `ends = starts[1:] + [T]` (GROVE's `sample_frames`); inference slides strided 8-frame windows
`{i * s + k : i = 0..7}` with `s = F // 8`, plus windows shifted by `s` for the F % 8 leftover frames
(GROVE's `sliding_segment_with_mask`, see `inference_windows`).
"""

from __future__ import annotations

import numpy as np

ANNOTATION_FPS = 5
NUM_FRAMES = 8


def frame_step(fps: float, target_fps: int = ANNOTATION_FPS) -> int:
    """Native-frame stride of the annotation grid; never below 1 (for videos slower than target_fps)."""
    return max(1, int(fps / target_fps))


def annotated_frame_ids(
    fps: float, clip_start_frame: int, clip_end_frame: int, num_annotated: int | None = None
) -> list[int]:
    """Native frame ids of the 5 fps grid over [clip_start_frame, clip_end_frame] (inclusive).

    When the annotation list is known and the grid is exactly one longer, the end is exclusive,
    as the official loader does.
    """
    ids = list(range(clip_start_frame, clip_end_frame + 1, frame_step(fps)))
    if num_annotated is not None and len(ids) == num_annotated + 1:
        ids = ids[:-1]
    return ids


def segment_bounds(num_frames: int, num_segments: int = NUM_FRAMES) -> list[tuple[int, int]]:
    """Half-open [start, end) index ranges of the TSN segments; the last one takes the remainder.

    With fewer frames than segments, every segment is the single frame it maps onto (repeats allowed).
    """
    if num_frames <= 0:
        raise ValueError("cannot split an empty frame list into segments")
    if num_frames < num_segments:
        picks = np.linspace(0, num_frames - 1, num_segments).round().astype(int)
        return [(int(p), int(p) + 1) for p in picks]
    length = num_frames // num_segments
    bounds = [(i * length, (i + 1) * length) for i in range(num_segments)]
    bounds[-1] = (bounds[-1][0], num_frames)
    return bounds


def sample_segment_indices(
    num_frames: int, num_segments: int = NUM_FRAMES, rng: np.random.Generator | None = None
) -> list[int]:
    """One index per segment: random within the segment when `rng` is given (training), else its midpoint.

    The midpoint is GROVE's `(starts + ends) // 2` with `ends = starts[1:] + [T]` (`sample_frames` of its
    dataset, `infer_iground.py` and `eval_iground.py`; `select_center_frames` of grove_transformers): for
    41 frames the last segment [35, 41) gives 38. Clips shorter than `num_segments` use the spread single-frame
    segments of `segment_bounds` (a deliberate deviation: there the official formula gives
    `[0] * 7 + [T // 2]` for validation, and training's `randint(0, 0)` raises).
    """
    bounds = segment_bounds(num_frames, num_segments)
    if rng is None:
        return [(start + end) // 2 for start, end in bounds]
    return [int(rng.integers(start, end)) for start, end in bounds]


SHORT_CLIP_WINDOWS = ("pad_last", "repeat_each")


def inference_windows(
    num_frames: int, window: int = NUM_FRAMES, short_clips: str = "pad_last"
) -> tuple[list[list[int]], list[list[int]]]:
    """The windows of GROVE's sliding inference and, per window, the mask of the frames it contributes.

    `num_frames >= window` (GROVE's `sliding_segment_with_mask`, identical in `infer_iground.py` and
    grove_transformers' processor): with `s = F // window` and `r = F % window`,
    - main windows k = 0..s-1: `[i*s + k for i < window]`, which cover frames 0 .. s*window-1 once each;
    - leftover windows o = 0..r-1: `[i*s + s + o for i < window]` (kept where < F; with s >= 1 that is
      all of them): the main windows shifted by s, so each is still a strided 8-frame window; only
      the frame s*window + o is new in it;
    - a window's mask is 1 where its frame was in no earlier window: every frame takes its boxes from
      the FIRST window that covers it. All main windows are all ones, no leftover window is.

    `num_frames < window` (s = 0), where the official scripts differ; `short_clips` chooses:
    - "pad_last" (default): one window `[0, 1, .., F-1, F-1, ..]` padded with the last frame, mask 1 on
      the first F positions: what GROVE's `infer_groundingyoutube.py` and
      `infer_youcookinteractions.py` do (`num_frames <= num_segments` branch);
    - "repeat_each": `infer_iground.py`'s windows: the loop above with s = 0 gives, for each frame o,
      the window `[o] * window` with an all-ones mask (the mask is computed before the window's frames
      are marked seen). The official script then keeps all `window` copies of every frame, so its
      record has `window * F` frames, which its own `eval_iground.py` rejects (its length assertion);
      here the mask keeps only the first copy, so each frame is predicted once, from the window made
      of copies of itself, and the caption comes from the copies of frame `(F - 1) // 2`.
    """
    if num_frames <= 0:
        return [], []
    if num_frames < window:
        if short_clips == "pad_last":
            return ([list(range(num_frames)) + [num_frames - 1] * (window - num_frames)],
                    [[1] * num_frames + [0] * (window - num_frames)])
        if short_clips == "repeat_each":
            return [[o] * window for o in range(num_frames)], [[1] + [0] * (window - 1) for _ in range(num_frames)]
        raise ValueError(f"short_clips must be one of {SHORT_CLIP_WINDOWS}, got {short_clips!r}")
    stride, remainder = divmod(num_frames, window)
    windows = [[i * stride + k for i in range(window)] for k in range(stride)]
    windows += [[i * stride + stride + o for i in range(window) if i * stride + stride + o < num_frames]
                for o in range(remainder)]
    seen: set[int] = set()
    masks = []
    for frames in windows:
        masks.append([int(f not in seen) for f in frames])
        seen.update(frames)
    return windows, masks


def sliding_windows(num_frames: int, window: int = NUM_FRAMES, short_clips: str = "pad_last") -> list[list[int]]:
    """The windows of `inference_windows` (each frame is taken from the first window that holds it)."""
    return inference_windows(num_frames, window, short_clips)[0]


def caption_window_index(num_frames: int, window: int = NUM_FRAMES, short_clips: str = "pad_last") -> int:
    """The window the caption is generated from: `last_index_all_ones // 2`, where `last_index_all_ones` is
    the last window whose mask is all ones (GROVE's rule). With F >= window that is main window
    (s - 1) // 2, the segment centres; "repeat_each" gives the copies of frame (F - 1) // 2; "pad_last"
    its single window. (Under "repeat_each" the official masks are all ones, not the first-copy masks
    `inference_windows` returns, so the index is computed from the official rule here.)"""
    if num_frames <= 0:
        raise ValueError("no frames")
    if num_frames < window:
        return (num_frames - 1) // 2 if short_clips == "repeat_each" else 0
    _, masks = inference_windows(num_frames, window, short_clips)
    last_all_ones = max(i for i, mask in enumerate(masks) if all(mask))
    return last_all_ones // 2
