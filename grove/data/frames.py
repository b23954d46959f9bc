"""The GROVE frame protocol: which native frames are annotated, sampled for training, and windowed at inference.

Facts (grove_spec.md 1.1, 4.1): annotations are dense on the ~5 fps grid
`clip_start_frame + i * int(fps / 5)`; training draws one random frame in each of 8 TSN segments
(the last segment takes the remainder); evaluation takes the segment midpoints `(start + end) // 2`;
inference slides 8-frame windows `{i * s + k : i = 0..7}` with `s = F // 8`.
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
    """One index per segment: random within the segment when `rng` is given (training), else its midpoint."""
    bounds = segment_bounds(num_frames, num_segments)
    if rng is None:
        return [(start + end - 1) // 2 if end - start > 1 else start for start, end in bounds]
    return [int(rng.integers(start, end)) for start, end in bounds]


def sliding_windows(num_frames: int, window: int = NUM_FRAMES) -> list[list[int]]:
    """Inference windows covering every frame: window k = {i*s + k : i < window}, s = num_frames // window.

    Frames past s*window (the remainder) get extra windows that reuse the last frames; each frame is
    covered at least once. With fewer frames than the window, one window repeats the last frame.
    """
    if num_frames <= 0:
        return []
    if num_frames < window:
        return [[min(i, num_frames - 1) for i in range(window)]]
    stride = num_frames // window
    windows = [[i * stride + k for i in range(window)] for k in range(stride)]
    covered = stride * window
    for start in range(covered, num_frames, window):
        tail = list(range(start, min(start + window, num_frames)))
        # pad the remainder window from the frames just before it, so it stays temporally ordered
        head = list(range(start - (window - len(tail)), start))
        windows.append(head + tail)
    return windows


def caption_window_index(num_frames: int, window: int = NUM_FRAMES) -> int:
    """Index of the window whose frames are the segment centres: (s - 1) // 2."""
    stride = max(1, num_frames // window)
    return (stride - 1) // 2
