"""ActivityNet-Entities -> canonical tables: segments as clips, boxes on their sampled slot."""

import json

import numpy as np
import pytest

from grove.data.anet_entities import read_anet_entities, slot_times
from grove.data.howtoground import RecordError


def _segment(tokens, clss, idx, boxes, frames, timestamps):
    return {"process_clss": clss, "tokens": tokens.split(), "frame_ind": frames, "process_idx": idx,
            "timestamps": timestamps, "process_bnd_box": boxes, "crowds": [0] * len(frames)}


def _annotation():
    """Two videos in the cleaned-file layout; segment ids deliberately out of order, as in the release."""
    return {
        "vocab": ["man", "he", "ball", "woman", "dog"],
        "annotations": {
            "v_QOlSCBRmfWY": {
                "duration": 82.73,
                "rheight": 404,
                "segments": {
                    "1": _segment("He throws the ball to a dog", [["he"], ["ball"], ["dog"]], [[0], [3], [6]],
                                  [[10, 20, 110, 300], [400, 50, 420, 70], [500, 200, 700, 400]], [9, 0, 0],
                                  [30.0, 40.0]),
                    "0": _segment("A man is seen speaking to the camera and then he picks up a ball",
                                  [["man", "he"], ["ball"], ["he"]], [[1, 10], [14], [10]],
                                  [[5.5, 6, 200.25, 400], [300, 250, 330, 280], [7, 8, 190, 390]], [2, 5, 5],
                                  [10.0, 20.0]),
                    "2": _segment("The man smiles", [], [], [], [], [79.1, 82.73]),
                },
            },
            "v_xyz": {
                "duration": 20.0,
                "fps": 30.0,
                "segments": {
                    "0": _segment("A woman walks a dog and a dog barks", [["woman"], ["dog"], ["dog"]],
                                  [[1], [4], [7]], [[0, 0, 50, 100], [60, 60, 90, 90], [100, 60, 130, 90]],
                                  [4, 4, 7], [0.0, 5.0]),
                },
            },
        },
    }


SPLITS = {"training": ["v_QOlSCBRmfWY"], "validation": ["v_xyz", "v_never_annotated"], "testing": []}


def _files(tmp_path, annotation=None):
    ann = tmp_path / "anet_entities_cleaned_class_thresh50_trainval.json"
    ann.write_text(json.dumps(annotation or _annotation()))
    splits = tmp_path / "split_ids_anet_entities.json"
    splits.write_text(json.dumps(SPLITS))
    return ann, splits


def test_segments_slots_and_boxes(tmp_path):
    ann, splits = _files(tmp_path)
    clips, boxes = read_anet_entities(ann, splits, "train", fps=25.0)
    clips = clips.to_pylist()
    assert [c["key"] for c in clips] == ["v_QOlSCBRmfWY_0", "v_QOlSCBRmfWY_1", "v_QOlSCBRmfWY_2"]
    seg0 = clips[0]
    assert seg0["caption"] == "A man is seen speaking to the camera and then he picks up a ball"
    # the boxed words come from process_idx: "he" is word 10, never the "the" that contains it
    assert seg0["phrases"] == ["man", "he", "ball"]
    assert seg0["tagged_caption"] == \
        "A <p>man</p> is seen speaking to the camera and then <p>he</p> picks up a <p>ball</p>"
    assert (seg0["num_frames"], seg0["width"], seg0["height"], seg0["fps"]) == (10, 720, 404, 25.0)
    assert (seg0["clip_start_frame"], seg0["clip_end_frame"]) == (250, 500)
    assert seg0["video_path"] == "v_QOlSCBRmfWY.mp4" and seg0["split"] == "train"
    extra = json.loads(seg0["extra"])
    assert extra["timestamps"] == [10.0, 20.0]
    assert extra["slot_times"] == pytest.approx([10.5 + i for i in range(10)])
    assert extra["segment"] == _annotation()["annotations"]["v_QOlSCBRmfWY"]["segments"]["0"]
    assert extra["video"] == {"duration": 82.73, "rheight": 404} and extra["grove_skip"] is None

    rows = [r for r in boxes.to_pylist() if r["key"] == "v_QOlSCBRmfWY_0"]
    got = [(r["frame_index"], r["box_index"], r["frame_id"], r["phrase"], r["phrase_index"],
            (r["x1"], r["y1"], r["x2"], r["y2"])) for r in rows]
    assert got == [
        (2, 0, 312, "man", 0, (5.5, 6.0, 200.25, 400.0)),  # slot 2 at 12.5 s * 25 fps = 312.5 -> 312 (tie: earlier)
        (5, 0, 387, "ball", 2, (300.0, 250.0, 330.0, 280.0)),  # slot 5 at 15.5 s -> 387.5 -> 387
        (5, 1, 387, "he", 1, (7.0, 8.0, 190.0, 390.0)),
    ]
    seg1 = [r for r in boxes.to_pylist() if r["key"] == "v_QOlSCBRmfWY_1"]
    assert [(r["frame_index"], r["box_index"], r["phrase"]) for r in seg1] == [(0, 0, "ball"), (0, 1, "dog"), (9, 0, "he")]
    assert clips[2]["phrases"] == [] and not [r for r in boxes.to_pylist() if r["key"] == "v_QOlSCBRmfWY_2"]
    assert json.loads(clips[2]["extra"])["grove_skip"] == "no labels"


def test_split_file_names_and_video_fps(tmp_path):
    ann, splits = _files(tmp_path)
    clips, boxes = read_anet_entities(ann, splits, "validation")
    assert clips["key"].to_pylist() == ["v_xyz_0"]  # v_never_annotated is skipped
    clip = clips.to_pylist()[0]
    assert clip["fps"] == 30.0 and clip["height"] == 0  # fps from the video entry; height unknown
    # GROVE picks the frame whose time is nearest (np.argmin: the earlier one on a tie)
    frame_times = np.arange(0, 20 * 30) / 30
    expected = [int(np.argmin(np.abs(frame_times - t))) for t in slot_times(0.0, 5.0)]
    assert boxes["frame_id"].to_pylist() == [expected[4], expected[4], expected[7]]
    # a class annotated twice (two dogs) is a reason GROVE's loader skips the segment
    assert json.loads(clip["extra"])["grove_skip"] == "duplicate labels"
    assert clip["phrases"] == ["woman", "dog", "dog"] and boxes["phrase_index"].to_pylist() == [0, 1, 2]


def test_without_split_file_or_fps(tmp_path):
    ann, _ = _files(tmp_path)
    clips, boxes = read_anet_entities(ann, None, "all")
    assert len(clips) == 4 and set(clips["split"].to_pylist()) == {"all"}
    unknown = [r for r in boxes.to_pylist() if r["key"].startswith("v_QOl")]
    assert {r["frame_id"] for r in unknown} == {-1}
    assert clips.to_pylist()[0]["clip_start_frame"] == -1 and clips.to_pylist()[0]["fps"] == 0.0


def test_slot_times_are_grove_midpoints():
    bounds = np.linspace(3.2, 9.7, 11)
    assert slot_times(3.2, 9.7) == [float((bounds[i] + bounds[i + 1]) / 2) for i in range(10)]


def test_label_fallback_without_process_idx(tmp_path):
    data = _annotation()
    segment = data["annotations"]["v_xyz"]["segments"]["0"]
    del segment["process_idx"]
    segment["process_clss"] = [["woman"], ["dog"], ["cat"]]
    ann, _ = _files(tmp_path, data)
    clips, boxes = read_anet_entities(ann, None, "val")
    clip = [c for c in clips.to_pylist() if c["key"] == "v_xyz_0"][0]
    assert clip["phrases"] == ["woman", "dog"]  # the first word containing each label
    assert [r["phrase_index"] for r in boxes.to_pylist() if r["key"] == "v_xyz_0"] == [0, 1, -1]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s: s.pop("timestamps"), r"missing field\(s\) \['timestamps'\]"),
        (lambda s: s["frame_ind"].append(3), "per-box lists differ in length"),
        (lambda s: s["frame_ind"].__setitem__(0, 10), "box 0 has frame_ind 10"),
        (lambda s: s["process_idx"].__setitem__(1, [40]), "a word index of process_idx is outside"),
    ],
)
def test_bad_segments_name_file_video_and_segment(tmp_path, mutate, message):
    data = _annotation()
    mutate(data["annotations"]["v_xyz"]["segments"]["0"])
    ann, splits = _files(tmp_path, data)
    with pytest.raises(RecordError, match=f"{ann}: video v_xyz segment 0: {message}"):
        read_anet_entities(ann, splits, "val")


def test_unknown_split(tmp_path):
    ann, splits = _files(tmp_path)
    with pytest.raises(RecordError, match=r"no split 'dev' \(has \['testing', 'training', 'validation'\]"):
        read_anet_entities(ann, splits, "dev")
