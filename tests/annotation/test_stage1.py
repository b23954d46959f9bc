from pathlib import Path

import pytest

from annotation.records import ClipFailure, ClipFrames, ClipRequest, FrameAnnotation
from annotation.shards import load_catalog
from annotation.stage1 import (
    NOISE_LEVELS,
    SimulatedCaptioner,
    Stage1Context,
    clip_requests,
    load_captioner,
    video_read_error,
)


def _requests(synthetic, stride=1):
    catalog = load_catalog(synthetic.catalog)
    return clip_requests(catalog.clips, catalog.video_root, stride), catalog


def _captioner(synthetic, **options):
    catalog = load_catalog(synthetic.catalog)
    return SimulatedCaptioner(Stage1Context(catalog.root, catalog.frame_objects), **options)


def test_requests_follow_the_5fps_grid_and_the_stride(synthetic):
    requests, _ = _requests(synthetic)
    assert requests[0].frame_ids == tuple(range(0, 20, 2)) and requests[0].frame_indices == tuple(range(10))
    strided, _ = _requests(synthetic, stride=3)
    assert strided[0].frame_indices == (0, 3, 6, 9) and strided[0].frame_ids == (0, 6, 12, 18)


def test_without_noise_the_captioner_reports_the_truth(synthetic):
    requests, _ = _requests(synthetic)
    (clip,) = _captioner(synthetic, noise="none").caption_clips(requests[:1])
    assert isinstance(clip, ClipFrames) and len(clip.frames) == 10
    frame = clip.frames[0]
    assert sorted(frame.phrases) == ["a large blue box", "a small red cup"]
    assert (4.0, 4.0, 18.0, 16.0) in frame.boxes
    assert "a small red cup moves to the left" in frame.caption.lower()


def test_noise_drifts_names_jitters_boxes_misses_and_invents(synthetic):
    requests, _ = _requests(synthetic)
    good = [r for r in requests if r.key != "vid0005_0"]
    clean = _captioner(synthetic, noise="none").caption_clips(good)
    noisy = _captioner(synthetic, noise="high", seed=1).caption_clips(good)
    clean_boxes = sum(len(f.boxes) for c in clean for f in c.frames)
    noisy_phrases = {p for c in noisy for f in c.frames for p in f.phrases}
    assert {"a small red glass", "a small red mug"} & noisy_phrases  # synonyms drift
    assert any(p.startswith("a small red") or p.startswith("a red") for p in noisy_phrases)
    exact = {(c.key, f.frame_index, b) for c in clean for f in c.frames for b in f.boxes}
    noisy_set = {(c.key, f.frame_index, b) for c in noisy for f in c.frames for b in f.boxes}
    assert len(exact & noisy_set) < 0.2 * len(exact)  # boxes jitter
    truth_count = sum(1 for c in clean for f in c.frames for _ in f.boxes)
    assert clean_boxes == truth_count
    assert len({len(f.phrases) for c in noisy for f in c.frames}) > 1  # misses and hallucinations vary counts


def test_output_is_deterministic_and_independent_of_the_batch(synthetic):
    requests, _ = _requests(synthetic)
    captioner = _captioner(synthetic, noise="moderate", seed=3)
    together = captioner.caption_clips(requests)
    alone = [captioner.caption_clips([r])[0] for r in requests]
    assert together == alone
    assert together != _captioner(synthetic, noise="moderate", seed=4).caption_clips(requests)


def test_a_corrupt_video_is_a_failure_with_its_reason(synthetic):
    requests, _ = _requests(synthetic)
    results = _captioner(synthetic).caption_clips(requests)
    failures = [r for r in results if isinstance(r, ClipFailure)]
    assert [f.key for f in failures] == ["vid0005_0"]
    assert "unreadable video" in failures[0].reason and "vid0005.mp4" in failures[0].reason
    assert video_read_error(str(Path(requests[0].video_file))) is None
    assert "not found" in video_read_error("/nonexistent/video.mp4")


def test_noise_options_are_checked(synthetic):
    with pytest.raises(ValueError, match="unknown noise level"):
        _captioner(synthetic, noise="extreme")
    with pytest.raises(ValueError, match="unknown simulated-captioner option"):
        _captioner(synthetic, jitter=0.5)
    assert _captioner(synthetic, miss_rate=0.5).noise.miss_rate == 0.5
    assert set(NOISE_LEVELS) == {"none", "low", "moderate", "high"}


def test_simulated_needs_frame_records(tmp_path):
    with pytest.raises(ValueError, match="frame_objects"):
        SimulatedCaptioner(Stage1Context(tmp_path, None))


class EchoCaptioner:
    """A plug-in backend, as a user would write one for GLaMM: found by its import path."""

    def __init__(self, context, caption="a cup"):
        self.caption = caption

    def describe(self):
        return {"backend": "echo", "caption": self.caption}

    def caption_clips(self, clips):
        return [ClipFrames(c.key, [FrameAnnotation(i, f, self.caption, ["a cup"], [(0, 0, 5, 5)])
                                   for i, f in zip(c.frame_indices, c.frame_ids)]) for c in clips]


def test_plug_in_backends_load_by_import_path(tmp_path, monkeypatch):
    context = Stage1Context(tmp_path)
    captioner = load_captioner(f"{__name__}:EchoCaptioner", context, {"caption": "a mug"})
    request = ClipRequest("v_0", "x.mp4", 10.0, 64, 48, (0, 1), (0, 2))
    assert captioner.caption_clips([request])[0].frames[1].caption == "a mug"
    with pytest.raises(ValueError, match="unknown stage-1 backend"):
        load_captioner("no_such_backend", context)
    monkeypatch.delenv("GROVE_ANNOTATION_GLAMM", raising=False)
    with pytest.raises(ValueError, match=r"needs GLaMM weights: set \$GROVE_ANNOTATION_GLAMM or the option model=DIR"):
        load_captioner("glamm", context)
    with pytest.raises(ValueError, match="cannot import"):
        load_captioner("no_such_package.module:Captioner", context)
    with pytest.raises(TypeError, match="lacks"):
        load_captioner(f"{__name__}:NotACaptioner", context)


class NotACaptioner:
    def __init__(self, context):
        pass
