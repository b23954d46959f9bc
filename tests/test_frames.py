import numpy as np
import pytest

from grove.data.frames import (
    annotated_frame_ids,
    caption_window_index,
    frame_step,
    sample_segment_indices,
    segment_bounds,
    sliding_windows,
)


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


@pytest.mark.parametrize("n", [1, 5, 8, 16, 40, 41, 47])
def test_windows_cover_every_frame(n):
    windows = sliding_windows(n)
    assert all(len(w) == 8 for w in windows)
    assert set().union(*map(set, windows)) == set(range(n))
    assert all(w == sorted(w) for w in windows)


def test_caption_window_is_segment_centres():
    windows = sliding_windows(40)
    centre = windows[caption_window_index(40)]
    assert centre == [2, 7, 12, 17, 22, 27, 32, 37]
