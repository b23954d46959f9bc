import ast
import os
from pathlib import Path

import numpy as np
import pytest

from grove.data.frames import (
    annotated_frame_ids,
    caption_window_index,
    frame_step,
    inference_windows,
    sample_segment_indices,
    segment_bounds,
    sliding_windows,
)

OFFICIAL = Path(os.environ.get("GROVE_OFFICIAL", "/work/official/grove"))


def test_grid_matches_official_range():
    assert frame_step(29.97) == 5
    assert frame_step(25.0) == 5
    assert frame_step(3.0) == 1
    assert annotated_frame_ids(30.0, 100, 130) == list(range(100, 131, 6))


def test_grid_end_becomes_exclusive_when_one_longer():
    ids = annotated_frame_ids(30.0, 0, 240)
    assert len(ids) == 41
    assert annotated_frame_ids(30.0, 0, 240, num_annotated=40) == ids[:-1]
    assert annotated_frame_ids(30.0, 0, 240, num_annotated=41) == ids


def test_segments_last_takes_remainder():
    assert segment_bounds(42) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25), (25, 30), (30, 35), (35, 42)]
    assert sample_segment_indices(42) == [2, 7, 12, 17, 22, 27, 32, 38]


def test_midpoints_are_the_official_ones():
    # (starts + ends) // 2 with ends = starts[1:] + [T]: the last segment of 41 frames is [35, 41) -> 38,
    # and even segments round up: [0, 4) -> 2
    assert sample_segment_indices(41) == [2, 7, 12, 17, 22, 27, 32, 38]
    assert sample_segment_indices(32) == [2, 6, 10, 14, 18, 22, 26, 30]
    for n in range(8, 120):
        starts = np.arange(8) * (n // 8)
        assert sample_segment_indices(n) == ((starts + np.append(starts[1:], n)) // 2).tolist()


def test_random_segment_sampling_stays_in_segments():
    rng = np.random.default_rng(0)
    for _ in range(50):
        picks = sample_segment_indices(41, rng=rng)
        for pick, (start, end) in zip(picks, segment_bounds(41)):
            assert start <= pick < end


def test_short_clips_repeat_frames():
    assert len(sample_segment_indices(3)) == 8
    assert max(sample_segment_indices(3)) == 2
    with pytest.raises(ValueError):
        segment_bounds(0)


@pytest.mark.parametrize("short_clips", ["pad_last", "repeat_each"])
@pytest.mark.parametrize("n", [1, 5, 8, 16, 40, 41, 47])
def test_windows_cover_every_frame_once_through_the_masks(n, short_clips):
    windows, masks = inference_windows(n, short_clips=short_clips)
    assert all(len(w) == 8 for w in windows)
    assert sorted(f for w, m in zip(windows, masks) for f, keep in zip(w, m) if keep) == list(range(n))
    assert all(w == sorted(w) for w in windows)


def test_strided_windows_and_the_leftover_frames():
    windows, masks = inference_windows(19)  # s = 2, r = 3: two strided windows, three shifted by s
    assert windows[:2] == [list(range(0, 16, 2)), list(range(1, 16, 2))] and masks[:2] == [[1] * 8] * 2
    assert windows[2:] == [list(range(2, 18, 2)), list(range(3, 18, 2)), list(range(4, 19, 2))]
    assert masks[2:] == [[0] * 7 + [1]] * 3  # only frames 16, 17, 18 are new
    assert sliding_windows(19) == windows


def test_caption_window_is_segment_centres():
    windows = sliding_windows(40)
    centre = windows[caption_window_index(40)]
    assert centre == [2, 7, 12, 17, 22, 27, 32, 37]
    assert caption_window_index(41) == 2  # the leftover window is not all ones


def test_short_clips():
    assert inference_windows(3) == ([[0, 1, 2, 2, 2, 2, 2, 2]], [[1, 1, 1, 0, 0, 0, 0, 0]])
    assert caption_window_index(3) == 0
    windows, masks = inference_windows(3, short_clips="repeat_each")
    assert windows == [[0] * 8, [1] * 8, [2] * 8] and masks == [[1] + [0] * 7] * 3
    assert caption_window_index(3, short_clips="repeat_each") == 1
    assert inference_windows(0) == ([], [])
    with pytest.raises(ValueError, match="short_clips"):
        inference_windows(3, short_clips="loop")


def _official_function(script: str, name: str):
    """A function from the official checkout, run from there (never copied into the project)."""
    lines = (OFFICIAL / script).read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"def {name}("))
    end = next((i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ", "\t", "#")), len(lines))
    namespace: dict = {}  # only the function's own lines: some official scripts need Python 3.12 to parse
    exec(compile(ast.parse("\n".join(lines[start:end])), str(OFFICIAL / script), "exec"), namespace)
    return namespace[name]


@pytest.mark.skipif(not (OFFICIAL / "infer_iground.py").is_file(), reason="no official GROVE checkout")
def test_windows_equal_the_official_sliding_segment_with_mask():
    official = _official_function("infer_iground.py", "sliding_segment_with_mask")
    sibling = _official_function("infer_groundingyoutube.py", "sliding_segment_with_mask")
    for n in range(8, 200):
        windows, masks = official(num_frames=n)
        assert inference_windows(n) == (windows, masks), n
        last_all_ones = max(i for i, m in enumerate(masks) if all(m))
        assert caption_window_index(n) == last_all_ones // 2
    for n in range(1, 8):
        windows, masks = official(num_frames=n)  # one window of copies per frame, every mask all ones
        assert inference_windows(n, short_clips="repeat_each")[0] == windows
        assert caption_window_index(n, short_clips="repeat_each") == (len(masks) - 1) // 2
        assert inference_windows(n) == sibling(num_frames=n, num_segments=8)
