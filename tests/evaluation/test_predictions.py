"""The official GROVE prediction layout: validation, round trips, the objectness rule."""

import json
import pickle

import numpy as np
import pytest

from grove.data.predictions import (
    PredictionError,
    clip_prediction,
    labels_from_objectness,
    load_predictions,
    write_predictions,
)


def _record(**overrides):
    record = {
        "pred_bboxes": [np.array([[1, 2, 30, 40], [5, 5, 9, 9]], np.float32), np.zeros((2, 4), np.float32)],
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
    np.testing.assert_allclose(clip.pred_bboxes[0], [[1, 2, 30, 40], [5, 5, 9, 9]])
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
        ({"pred_bboxes": [], "pred_labels": []}, "empty predictions"),
        ({"pred_labels": [["a man"]]}, "pred_bboxes has 2 frames but pred_labels 1"),
        ({"pred_bboxes": [np.array([[np.nan, 0, 1, 1]]), np.zeros((0, 4))]}, "NaN"),
        ({"pred_bboxes": [np.zeros((2, 3)), np.zeros((0, 4))]}, "expected [num_boxes, 4]"),
        ({"probs_temp_objectness": [np.array([0.5]), np.array([0.5, 0.5])]}, "1 values for 2 boxes"),
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
