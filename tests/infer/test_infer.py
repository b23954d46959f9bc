"""Inference: the official protocol on dataset clips, any video through `grove infer`, temporal grounding."""

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from evaluation.iground import evaluate_iground_files
from grove.data.frames import caption_window_index, sliding_windows
from grove.data.predictions import load_predictions, write_predictions
from grove.infer import grounded_caption, longest_run, predict_dataset, single_phrase_boxes, temporal_grounding
from grove.model.processor import denormalize_boxes, tag_answer
from grove.train import load_model
from orchestration.cli import app


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_model(checkpoint)


def test_every_frame_takes_its_boxes_from_the_first_window_that_holds_it(model, dataset_dir):
    from grove.data.loader import clip_records, resolve_dataset, GroveClipDataset

    record = clip_records(resolve_dataset(dataset_dir, "test"))[0]
    frames = GroveClipDataset([record]).grid_frames(record)[:19]  # 19 frames: 2 strided windows + a remainder
    result = grounded_caption(model, frames, (record.width, record.height))
    assert result.phrases, f"the overfitted model should answer with phrases, got {result.tagged!r}"
    assert result.boxes.shape == (19, len(result.phrases), 4) and result.objectness.shape == (19, len(result.phrases))
    global_pixels, grounding_pixels = model.processor.pixels(frames)
    windows = sliding_windows(19)
    centre = windows[caption_window_index(19)]
    assert model.generate(global_pixels[centre]) == result.tagged
    for frame in (0, 9, 18):
        window = next(w for w in windows if frame in w)
        direct = model.ground(global_pixels[window], grounding_pixels[window], result.tagged)
        position = window.index(frame)
        paired = len(result.phrases)  # the j-th [DET] pairs with the j-th phrase, even in a malformed answer
        expected = denormalize_boxes(direct.boxes[position, :paired], record.width, record.height).numpy()
        np.testing.assert_allclose(result.boxes[frame], expected, rtol=1e-4, atol=1e-3)
        logits = direct.objectness_logits[position, :paired]
        np.testing.assert_allclose(result.objectness[frame], torch.sigmoid(logits).numpy(), atol=1e-5)


def test_a_malformed_answer_keeps_only_the_det_tokens_that_pair_with_a_phrase(model, dataset_dir):
    from grove.data.loader import clip_records, resolve_dataset, GroveClipDataset

    record = clip_records(resolve_dataset(dataset_dir, "test"))[0]
    frames = GroveClipDataset([record]).grid_frames(record)[:8]
    extra_det = grounded_caption(model, frames, answer="<p> the yellow square </p> [DET] moves </p> [DET] left.")
    assert extra_det.phrases == ["the yellow square"] and extra_det.boxes.shape == (8, 1, 4)
    extra_phrase = grounded_caption(model, frames, answer="<p> the yellow square </p> [DET] meets <p> a wall </p>.")
    assert extra_phrase.phrases == ["the yellow square"] and extra_phrase.objectness.shape == (8, 1)


def test_dataset_predictions_are_the_official_layout_and_score(checkpoint, dataset_dir, tmp_path):
    predictions = predict_dataset(checkpoint, dataset_dir, "test", threshold=0.5)
    assert sorted(predictions) == ["test000_0", "test001_0"]
    for prediction in predictions.values():
        assert prediction.num_frames == 20
        for boxes, labels, probs in zip(prediction.pred_bboxes, prediction.pred_labels, prediction.probs_temp_objectness):
            assert boxes.shape == (len(prediction.pred_phrases), 4)
            assert labels == [p for p, q in zip(prediction.pred_phrases, probs) if q > 0.5]
    path = write_predictions(tmp_path / "preds.json", predictions)
    good, bad = load_predictions(path)
    assert not bad and good.keys() == predictions.keys()
    report = evaluate_iground_files(dataset_dir, path, split="test", captions=False, recall=False)
    assert report.num_scored == 2 and 0.0 <= report.metrics["AP50"] <= 1.0


def test_reference_mode_grounds_the_reference_caption(model, checkpoint, dataset_dir):
    from grove.data.dataset import load_dataset
    from grove.data.loader import clip_records, resolve_dataset, GroveClipDataset

    row = load_dataset(dataset_dir, split="test").clips.to_pylist()[0]
    (prediction,) = predict_dataset(checkpoint, dataset_dir, "test", mode="reference", max_clips=1).values()
    answer = tag_answer(row["caption"], row["phrases"], row["tagged_caption"])
    assert prediction.pred_text == row["caption"] and prediction.pred_phrases == list(answer.phrases)
    record = clip_records(resolve_dataset(dataset_dir, "test"))[0]
    frames = GroveClipDataset([record]).grid_frames(record)
    direct = grounded_caption(model, frames, (record.width, record.height), answer=answer.text)
    np.testing.assert_allclose(np.stack(prediction.pred_bboxes), direct.boxes, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="unknown inference mode"):
        predict_dataset(checkpoint, dataset_dir, "test", mode="oracle", model=model)


def test_vidstg_mode_gives_one_box_per_frame(checkpoint, dataset_dir):
    predictions = predict_dataset(checkpoint, dataset_dir, "test", mode="phrase", max_clips=1)
    (prediction,) = predictions.values()
    assert all(boxes.shape == (1, 4) for boxes in prediction.pred_bboxes)
    assert prediction.pred_phrases == [prediction.pred_text]


def test_grove_infer_on_an_mp4_of_another_format(checkpoint, other_video, tmp_path):
    out, movie = tmp_path / "preds.json", tmp_path / "boxes.mp4"
    runner = CliRunner()
    result = runner.invoke(app, ["infer", "--checkpoint", str(checkpoint), "--video", str(other_video),
                                 "--out", str(out), "--visualize", str(movie), "--threshold", "0.0"])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert [f["frame_id"] for f in payload["frames"]] == list(range(0, 72, 4))  # 24 fps: every 4th frame
    assert payload["frames"][3]["time_s"] == pytest.approx(12 / 24)
    assert payload["caption"] and payload["phrases"]
    for frame in payload["frames"]:
        assert [b["phrase"] for b in frame["boxes"]] == payload["phrases"]  # threshold 0 keeps every query
        for box in frame["boxes"]:
            x1, y1, x2, y2 = box["box_xyxy"]
            assert x1 <= x2 and y1 <= y2 and 0.0 <= box["objectness"] <= 1.0
    with av.open(str(movie)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 18 and decoded[0].shape[1] == 100


def test_grove_infer_frame_grid_and_temporal_query(checkpoint, other_video, tmp_path):
    grid = tmp_path / "grid.png"
    result = CliRunner().invoke(app, ["infer", "--checkpoint", str(checkpoint), "--video", str(other_video),
                                      "--visualize", str(grid), "--query", "the yellow square", "--end", "2.0"])
    assert result.exit_code == 0, result.output
    assert "query visible:" in result.output
    image = Image.open(grid)
    assert image.size[0] == 4 * 100 and image.size[1] > 2 * 70  # 8 frames in 2 rows, the caption below


def test_temporal_grounding_reads_the_objectness_curve(model, other_video):
    from grove.infer import video_grid
    from grove.data.loader import decode_frames

    ids, times, meta = video_grid(other_video)
    frames = decode_frames(other_video, ids)
    boxes, probs = single_phrase_boxes(model, frames, "the yellow square")
    assert boxes.shape == (18, 4) and probs.shape == (18,)
    grounding = temporal_grounding(model, frames, times, "the yellow square", threshold=0.5)
    run = longest_run(np.asarray(grounding.probs) > 0.5) or (int(np.argmax(grounding.probs)),) * 2
    assert (grounding.start_frame, grounding.end_frame) == run
    assert grounding.start_s == pytest.approx(times[run[0]]) and grounding.end_s == pytest.approx(times[run[1]] + 0.2)


def test_longest_run():
    assert longest_run(np.array([0, 1, 1, 0, 1, 1, 1, 0], bool)) == (4, 6)
    assert longest_run(np.array([1, 1, 0, 1, 1], bool)) == (0, 1)
    assert longest_run(np.array([1, 1, 1], bool)) == (0, 2)
    assert longest_run(np.zeros(4, bool)) is None


def test_grove_infer_data_writes_what_grove_eval_iground_scores(checkpoint, dataset_dir, tmp_path):
    preds = tmp_path / "preds.pkl"
    runner = CliRunner()
    result = runner.invoke(app, ["infer", "--checkpoint", str(checkpoint), "--data", str(dataset_dir), "--split", "test",
                                 "--out", str(preds)])
    assert result.exit_code == 0, result.output
    good, bad = load_predictions(preds)
    assert sorted(good) == ["test000_0", "test001_0"] and not bad
    scored = runner.invoke(app, ["eval", "iground", "--gt", str(dataset_dir), "--pred", str(preds), "--split", "test",
                                 "--no-captions", "--no-recall", "--json"])
    assert scored.exit_code == 0, scored.output
    assert "AP50" in scored.output
