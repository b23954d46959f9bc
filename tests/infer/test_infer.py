"""Inference: the official protocol on dataset clips, any video through `grove infer`, temporal grounding."""

import json

import av
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from evaluation.iground import evaluate_iground_files
from grove.data.frames import caption_window_index, inference_windows
from grove.data.predictions import clip_prediction, load_predictions, write_predictions
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
    frames = GroveClipDataset([record]).grid_frames(record)[:19]  # 19 frames: 2 strided windows + 3 shifted ones
    result = grounded_caption(model, frames, (record.width, record.height))
    assert result.phrases, f"the overfitted model should answer with phrases, got {result.tagged!r}"
    queries = result.boxes.shape[1]
    assert result.boxes.shape == (19, queries, 4) and result.objectness.shape == (19, queries)
    global_pixels, grounding_pixels = model.processor.pixels(frames)
    windows, masks = inference_windows(19)
    centre = windows[caption_window_index(19)]
    assert model.generate(global_pixels[centre]) == result.tagged
    for frame in (0, 9, 16, 18):
        w = next(i for i, (window, mask) in enumerate(zip(windows, masks)) if any(f == frame and m for f, m in zip(window, mask)))
        assert w == next(i for i, window in enumerate(windows) if frame in window)  # the first window holding it
        direct = model.ground(global_pixels[windows[w]], grounding_pixels[windows[w]], result.tagged)
        position = windows[w].index(frame)
        expected = denormalize_boxes(direct.boxes[position], record.width, record.height).numpy()
        np.testing.assert_allclose(result.boxes[frame], expected, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(result.objectness[frame], torch.sigmoid(direct.objectness_logits[position]).numpy(), atol=1e-5)


@pytest.mark.parametrize("short_clips", ["pad_last", "repeat_each"])
def test_clips_shorter_than_the_window(model, dataset_dir, short_clips):
    from grove.data.loader import clip_records, resolve_dataset, GroveClipDataset

    record = clip_records(resolve_dataset(dataset_dir, "test"))[0]
    frames = GroveClipDataset([record]).grid_frames(record)[:5]
    result = grounded_caption(model, frames, (record.width, record.height), short_clips=short_clips)
    assert result.boxes.shape[0] == 5 and result.to_prediction(0.5).num_frames == 5
    global_pixels, grounding_pixels = model.processor.pixels(frames)
    window = [0, 1, 2, 3, 4, 4, 4, 4] if short_clips == "pad_last" else [2] * 8
    assert model.generate(global_pixels[window]) == result.tagged
    if short_clips == "repeat_each":  # frame 3 comes from the window of eight copies of itself
        direct = model.ground(global_pixels[[3] * 8], grounding_pixels[[3] * 8], result.tagged)
        expected = denormalize_boxes(direct.boxes[0], record.width, record.height).numpy()
        np.testing.assert_allclose(result.boxes[3], expected, rtol=1e-4, atol=1e-3)


def test_a_malformed_answer_keeps_every_query_and_labels_only_the_phrased_ones(model, dataset_dir):
    from grove.data.loader import clip_records, resolve_dataset, GroveClipDataset

    record = clip_records(resolve_dataset(dataset_dir, "test"))[0]
    frames = GroveClipDataset([record]).grid_frames(record)[:8]
    extra_det = grounded_caption(model, frames, answer="<p> the yellow square </p> [DET] moves </p> [DET] left.")
    assert extra_det.phrases == ["the yellow square"] and extra_det.boxes.shape == (8, 2, 4) and extra_det.paired == 1
    prediction = extra_det.to_prediction(0.0)  # threshold 0 keeps both queries' boxes; only the first has a phrase
    assert all(len(b) == 2 for b in prediction.pred_bboxes) and prediction.pred_labels == [["the yellow square"]] * 8
    assert prediction.pred_text == "the yellow square moves left." and prediction.pred_text_tagged == (
        "<p> the yellow square </p> moves </p> left.")
    assert all(len(p) == 2 for p in prediction.probs_temp_objectness)
    boxes, labels = extra_det.kept(0.0)
    assert all(len(b) == 1 for b in boxes) and labels == [["the yellow square"]] * 8
    extra_phrase = grounded_caption(model, frames, answer="<p> the yellow square </p> [DET] meets <p> a wall </p>.")
    assert extra_phrase.phrases == ["the yellow square", "a wall"] and extra_phrase.objectness.shape == (8, 1)
    assert extra_phrase.to_prediction(0.0).pred_labels == [["the yellow square"]] * 8


def test_dataset_predictions_are_the_official_layout_and_score(checkpoint, dataset_dir, tmp_path):
    predictions = predict_dataset(checkpoint, dataset_dir, "test", threshold=0.5)
    assert sorted(predictions) == ["test000_0", "test001_0"]
    for prediction in predictions.values():
        assert prediction.num_frames == 20 and prediction.all_query and prediction.objectness_threshold == 0.5
        for boxes, labels, probs, every in zip(prediction.pred_bboxes, prediction.pred_labels,
                                               prediction.probs_temp_objectness, prediction.all_bboxes):
            kept = probs > 0.5
            np.testing.assert_array_equal(boxes, every[kept])  # filtered by objectness, query order
            assert labels == [prediction.pred_phrases[i] for i, k in enumerate(kept) if k and i < len(prediction.pred_phrases)]
            assert len(probs) == len(every)  # one probability per [DET] query
    path = write_predictions(tmp_path / "preds.pkl", predictions)
    good, bad = load_predictions(path)
    assert not bad and good.keys() == predictions.keys()
    official_only = {k: {n: v for n, v in p.to_record().items() if n not in ("all_bboxes", "objectness_threshold")}
                     for k, p in predictions.items()}
    report = evaluate_iground_files(dataset_dir, path, split="test", captions=False, recall=False)
    assert report.num_scored == 2 and 0.0 <= report.metrics["AP50"] <= 1.0
    kept_only = tmp_path / "kept_only.pkl"
    write_predictions(kept_only, {k: clip_prediction(k, r) for k, r in official_only.items()})
    again = evaluate_iground_files(dataset_dir, kept_only, split="test", captions=False, recall=False)
    assert again.metrics == report.metrics  # the official fields alone give the same numbers


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
    np.testing.assert_allclose(np.stack(prediction.all_bboxes), direct.boxes, rtol=1e-5, atol=1e-4)
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
