"""The official GROVE prediction layout: validation, round trips, the objectness rule."""

import json
import pickle

import numpy as np
import pytest

from grove.data.predictions import (
    PredictionError,
    clean_answer,
    clip_prediction,
    kept_queries,
    labels_from_objectness,
    load_predictions,
    official_record,
    write_predictions,
)


def _record(**overrides):
    """The official layout: frame 0 keeps query 0 of 2, frame 1 keeps none."""
    record = {
        "pred_bboxes": [np.array([[1, 2, 30, 40]], np.float32), np.zeros((0, 4), np.float32)],
        "pred_labels": [["a man"], []],
        "pred_phrases": ["a man", "a knife"],
        "pred_text": "a man holds a knife",
        "pred_text_tagged": "<p> a man </p> holds <p> a knife </p>",
        "probs_temp_objectness": [np.array([0.9, 0.2], np.float32), np.array([0.1, 0.3], np.float32)],
    }
    record.update(overrides)
    return record


@pytest.mark.parametrize("suffix", [".pkl", ".json"])
def test_round_trip(tmp_path, suffix):
    path = write_predictions(tmp_path / f"pred{suffix}", {"v_0": _record()})
    good, bad = load_predictions(path)
    assert bad == [] and list(good) == ["v_0"]
    clip = good["v_0"]
    assert clip.num_frames == 2 and clip.pred_labels == [["a man"], []]
    np.testing.assert_allclose(clip.pred_bboxes[0], [[1, 2, 30, 40]])
    assert clip.pred_bboxes[1].shape == (0, 4) and not clip.all_query
    np.testing.assert_allclose(clip.probs_temp_objectness[1], [0.1, 0.3], rtol=1e-6)
    if suffix == ".pkl":  # the official layout: numpy arrays per frame
        with open(path, "rb") as handle:
            raw = pickle.load(handle)
        assert isinstance(raw["v_0"]["pred_bboxes"][0], np.ndarray)
    else:
        assert json.loads(path.read_text())["v_0"]["pred_text"] == "a man holds a knife"


@pytest.mark.parametrize(
    "overrides, problem",
    [
        ({"pred_text": None}, "pred_text must be a string"),
        ({"pred_labels": [["a man"]]}, "pred_bboxes has 2 frames but pred_labels 1"),
        ({"pred_bboxes": [np.array([[np.nan, 0, 1, 1]]), np.zeros((0, 4))]}, "NaN"),
        ({"pred_bboxes": [np.zeros((2, 3)), np.zeros((0, 4))]}, "expected [num_boxes, 4]"),
        ({"probs_temp_objectness": [np.array([0.5]), np.array([np.inf])]}, "probs_temp_objectness[1] holds NaN"),
        ({"all_bboxes": [np.zeros((2, 4)), np.zeros((1, 4))]}, "all_bboxes[1] has 1 boxes for 2 query probabilities"),
        ({"all_bboxes": [np.zeros((2, 4))] * 2, "probs_temp_objectness": None}, "all_bboxes needs probs_temp_objectness"),
        ({"objectness_threshold": "0.5"}, "objectness_threshold must be a finite number"),
        ({"pred_labels": ["a man", []]}, "pred_labels[0] must be a list of strings"),
    ],
)
def test_bad_records_name_the_clip(overrides, problem):
    with pytest.raises(PredictionError) as info:
        clip_prediction("vid_3", _record(**overrides))
    assert "vid_3" in str(info.value) and problem in str(info.value)


def test_missing_keys_and_partial_files(tmp_path):
    good_record = clip_prediction("ok_1", _record()).to_record(as_json=True)
    bad_record = {k: v for k, v in good_record.items() if k != "pred_labels"}
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"ok_1": good_record, "bad_2": bad_record}))
    good, bad = load_predictions(path)
    assert list(good) == ["ok_1"]
    assert [e.key for e in bad] == ["bad_2"] and "missing key(s) ['pred_labels']" in str(bad[0])


def test_the_official_layout_keeps_boxes_by_objectness_and_reads_back():
    boxes = [np.arange(12, dtype=np.float32).reshape(3, 4)] * 2
    probs = [np.array([0.9, 0.5, 0.7], np.float32), np.array([0.2, 0.1, 0.3], np.float32)]
    record = official_record(boxes, probs, ["a man", "a knife"], "a man holds a knife", "", 0.5)
    np.testing.assert_array_equal(record.pred_bboxes[0], boxes[0][[0, 2]])  # queries 0 and 2, query order
    assert record.pred_labels == [["a man"], []]  # query 2 has no phrase (one [DET] more than phrases)
    assert record.pred_bboxes[1].shape == (0, 4) and len(record.probs_temp_objectness[1]) == 3
    assert record.all_query and record.objectness_threshold == 0.5
    again = clip_prediction("v_0", record.to_record(as_json=True))
    np.testing.assert_array_equal(again.all_bboxes[1], boxes[1])
    # a kept-only frame: the kept boxes belong to the most probable queries, in query order
    assert kept_queries(probs[0], 2).tolist() == [0, 2]
    assert kept_queries(probs[1], 0).tolist() == []
    assert kept_queries(np.array([0.7, 0.7, 0.2]), 1) is None  # no threshold separates the two 0.7s
    assert kept_queries(np.array([0.7]), 2) is None


def test_answers_are_cleaned_as_infer_iground_cleans_them():
    phrases, text, tagged = clean_answer("'<p>  a man </p> [DET] cuts\n<p> an onion</p> [DET].'")
    assert phrases == ["a man", "an onion"]
    assert text == "a man cuts an onion ."
    assert tagged == "<p> a man </p> cuts<p> an onion</p> ."
    assert clean_answer("USER: hi ASSISTANT: <p>x</p> [DET]</s>") == (["x"], "x", "<p>x</p> </s>")


def test_labels_from_objectness_is_strict_and_bounded_by_phrases():
    assert labels_from_objectness([0.5, 0.51, 0.9], ["a", "b"], 0.5) == ["b"]
    assert labels_from_objectness(np.array([[0.2], [0.7]]), ["a", "b"], 0.0) == ["a", "b"]


def test_unreadable_files(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a dict"):
        load_predictions(path)
    with pytest.raises(FileNotFoundError):
        load_predictions(tmp_path / "absent.pkl")
