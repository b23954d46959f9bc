"""VidSTG (TubeDETR-style JSON) -> canonical tables: the right boxes on the right frames."""

import json

import pytest

from grove.data.frames import annotated_frame_ids
from grove.data.howtoground import RecordError
from grove.data.vidstg import read_vidstg, tube_frame_ids


def _trajectory(first, last, x_of, skip=()):
    """A dense VidSTG trajectory; x encodes the frame so a box on the wrong frame is caught."""
    return {str(f): {"bbox": [x_of(f), 10, 20, 30], "generated": 0} for f in range(first, last) if f not in skip}


def _annotation():
    def entry(original, sentence, caption, qtype, fps, tube, target, **more):
        return {
            "original_video_id": original, "video_id": sentence, "video_path": f"{original[:4]}/{original}.mp4",
            "caption": caption, "qtype": qtype, "fps": fps, "width": 640, "height": 480, "target_id": target,
            "tube_start_frame": tube[0], "tube_end_frame": tube[1], "start_frame": tube[0] - 30,
            "end_frame": tube[1] + 30, "frame_count": 900, "type": "adult", **more,
        }

    return {
        "videos": [
            entry("2727682922", 0, "an adult in black clothes rides a bike .", "declarative", 29.97, (100, 140), 1),
            entry("2727682922", 1, "who is riding a bike?", "interrogative", 29.97, (100, 140), 2),
            entry("5159741010", 2, " a child holds a toy on the grass . ", "declarative", 30.0, (200, 211), 0),
        ],
        "trajectories": {
            "2727682922": {
                "1": _trajectory(60, 180, lambda f: f, skip={115}),
                "2": _trajectory(60, 180, lambda f: 2 * f),
            },
            "5159741010": {"0": _trajectory(150, 260, lambda f: f + 0.5)},
        },
    }


def _write(tmp_path, data, name="test.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_boxes_on_the_tube_frames(tmp_path):
    clips, boxes = read_vidstg(_write(tmp_path, _annotation()), "test")
    clips, rows = clips.to_pylist(), boxes.to_pylist()
    assert [c["key"] for c in clips] == ["2727682922_0", "2727682922_1", "5159741010_2"]
    first = clips[0]
    assert (first["video_id"], first["clip_id"], first["fps"]) == ("2727682922", "0", 29.97)
    assert (first["clip_start_frame"], first["clip_end_frame"], first["num_frames"]) == (100, 139, 8)
    assert first["phrases"] == ["an adult in black clothes rides a bike ."]
    assert first["tagged_caption"] == "<p>an adult in black clothes rides a bike .</p>"
    extra = json.loads(first["extra"])
    assert extra["qtype"] == "declarative" and extra["target_id"] == 1 and extra["video_id"] == 0
    assert (extra["tube_start_frame"], extra["tube_end_frame"], extra["start_frame"]) == (100, 140, 70)
    assert extra["frames_without_box"] == 1  # frame 115 has no box in the trajectory

    # sentence 0: GROVE's frames range(100, 139, 5), minus 115; xywh -> xyxy; x encodes the frame
    sentence0 = [r for r in rows if r["key"] == "2727682922_0"]
    assert [r["frame_id"] for r in sentence0] == [100, 105, 110, 120, 125, 130, 135]
    assert [r["frame_index"] for r in sentence0] == [0, 1, 2, 4, 5, 6, 7]
    assert all((r["x1"], r["y1"], r["x2"], r["y2"]) == (r["frame_id"], 10, r["frame_id"] + 20, 40) for r in sentence0)
    assert {(r["phrase_index"], r["box_index"]) for r in sentence0} == {(0, 0)}
    # sentence 1 grounds the other target of the same video
    sentence1 = [r for r in rows if r["key"] == "2727682922_1"]
    assert [r["x1"] for r in sentence1] == [2.0 * f for f in range(100, 139, 5)]
    # sentence 2: 30 fps -> step 6; the caption's spaces are trimmed in the phrase, kept in `caption`
    sentence2 = [r for r in rows if r["key"] == "5159741010_2"]
    assert [r["frame_id"] for r in sentence2] == [200, 206]
    assert sentence2[0]["x1"] == 200.5 and sentence2[0]["phrase"] == "a child holds a toy on the grass ."
    assert clips[2]["caption"] == " a child holds a toy on the grass . "


def test_frames_agree_with_the_shared_frame_protocol(tmp_path):
    clips, _ = read_vidstg(_write(tmp_path, _annotation()), "test")
    for clip in clips.to_pylist():
        extra = json.loads(clip["extra"])
        grove_frames = list(range(extra["tube_start_frame"], extra["tube_end_frame"] - 1, int(clip["fps"] / 5)))
        assert tube_frame_ids(clip["fps"], extra["tube_start_frame"], extra["tube_end_frame"]) == grove_frames
        assert annotated_frame_ids(clip["fps"], clip["clip_start_frame"], clip["clip_end_frame"], clip["num_frames"]) \
            == grove_frames


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["videos"][1].pop("tube_end_frame"), r"videos\[1\]: missing field\(s\) \['tube_end_frame'\]"),
        (lambda d: d["videos"][2].update(target_id=7), r"videos\[2\] \(sentence 5159741010_2\): no trajectory for target 7"),
        (lambda d: d["trajectories"]["2727682922"]["1"]["105"].update(bbox=[1, 2, 3]),
         r"videos\[0\] \(sentence 2727682922_0\) frame 105: bbox must be \[x, y, w, h\]"),
        (lambda d: d.pop("trajectories"), "expected an object with 'videos'"),
    ],
)
def test_bad_annotations_name_file_and_sentence(tmp_path, mutate, message):
    data = _annotation()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(RecordError, match=f"{path}: {message}"):
        read_vidstg(path, "test")


def test_not_json(tmp_path):
    path = tmp_path / "test.json"
    path.write_text("{videos: oops")
    with pytest.raises(RecordError, match=f"{path}: not a JSON file"):
        read_vidstg(path, "test")
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_vidstg(tmp_path / "absent.json", "test")
