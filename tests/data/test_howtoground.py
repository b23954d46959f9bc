"""Official HowToGround1M / iGround pickles <-> canonical tables, both ways, losslessly."""

import collections
import copy
import pickle

import numpy as np
import pytest

from grove.data.boxes import merge_same_phrase_boxes
from grove.data.frames import annotated_frame_ids
from grove.data.howtoground import (
    RecordError,
    from_json_value,
    read_official,
    read_records,
    records_to_tables,
    tables_to_records,
    to_json_value,
    write_official,
    write_per_clip,
)
from grove.data.safe_pickle import UnsafePickleError
from grove.data.schema import read_boxes, read_clips, write_boxes, write_clips


def assert_identical(expected, actual, path="record"):
    """Equal, and spelled with the same Python types all the way down (== alone accepts 1 == 1.0)."""
    assert type(actual) is type(expected), f"{path}: {type(actual).__name__} != {type(expected).__name__}"
    if isinstance(expected, dict):
        assert list(actual) == list(expected), f"{path}: key order {list(actual)} != {list(expected)}"
        for key in expected:
            assert_identical(expected[key], actual[key], f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert len(actual) == len(expected), f"{path}: length {len(actual)} != {len(expected)}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            assert_identical(e, a, f"{path}[{i}]")
    elif isinstance(expected, np.ndarray):
        assert (actual.dtype, actual.shape) == (expected.dtype, expected.shape), path
        assert actual.tolist() == expected.tolist(), path
    elif isinstance(expected, float) and expected != expected:
        assert actual != actual, path
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def raw_iground():
    """Three clips in the official raw layout, written the way the released pickles write them."""
    return {
        "kTNXW1FpOyk_12": {
            "video_fname": "kTNXW1FpOyk.mp4",
            "video_id": "kTNXW1FpOyk",
            "clip_id": "12",
            "fps": 29.97,
            "clip_start_frame": 2700,
            "clip_end_frame": 2939,
            "width": 455,
            "height": 256,
            "caption": '"A man slices an onion with a knife on a board"',
            "tagged_caption": '"A <p>man</p> slices <p>an onion</p> with <p>a knife</p> on <p>a board</p>"',
            "phrases": ["man", "an onion", "a knife", "a board"],
            # ints from the annotation tool, floats after clipping, one frame mixing both
            "bboxes": [
                [[12, 30, 200, 250], [210, 140, 300, 200], [220.5, 150.25, 290.0, 198.75]],
                [[14, 31, 201, 252], [205.0, 139.5, 301.0, 201.0]],
                [],
                [[100, 40, 180, 120], [15.5, 30, 199, 250]],
                [],
                [],  # trailing empty frames must survive
            ],
            "labels": [
                ["man", "an onion", "an onion"],
                ["man", "a knife"],
                [],
                ["A Knife", "the chef"],  # case differs from `phrases`; a label outside `phrases`
                [],
                [],
            ],
        },
        "kTNXW1FpOyk_13": {
            "video_fname": "kTNXW1FpOyk.mp4",
            "video_id": "kTNXW1FpOyk",
            "clip_id": "13",
            "fps": 30.0,
            "clip_start_frame": 2940,
            "clip_end_frame": 2964,
            "width": 455,
            "height": 256,
            "caption": "hands stir the soup",
            "tagged_caption": "<p>hands</p> stir <p>the soup</p>",
            "phrases": ["hands", "the soup"],
            "bboxes": [[[0.0, 0.0, 10.0, 10.0]], [[1.0, 1.0, 11.0, 11.0], [50.0, 60.0, 70.0, 80.0]], [], [], []],
            "labels": [["hands"], ["hands", "the soup"], [], [], []],
        },
        "a_b_c_0": {  # underscores inside the video id: the key is never split
            "video_fname": "a_b_c.mkv",
            "video_id": "a_b_c",
            "clip_id": "0",
            "fps": 25.0,
            "clip_start_frame": 0,
            "clip_end_frame": 199,
            "width": 640,
            "height": 360,
            "caption": "a dog runs",
            "tagged_caption": "<p>a dog</p> runs",
            "phrases": ["a dog"],
            "bboxes": [[], [], []],
            "labels": [[], [], []],
        },
    }


def processed_of(records):
    """The official processed form: the instances of a phrase in a frame become their union box."""
    processed = copy.deepcopy(records)
    for record in processed.values():
        for t, (boxes, labels) in enumerate(zip(record["bboxes"], record["labels"])):
            union = {}
            for box, label in zip(boxes, labels):
                if label in union:
                    old = union[label]
                    union[label] = [min(old[0], box[0]), min(old[1], box[1]), max(old[2], box[2]), max(old[3], box[3])]
                else:
                    union[label] = list(box)
            record["bboxes"][t] = list(union.values())
            record["labels"][t] = list(union)
    return processed


def numpy_howtoground():
    """A HowToGround1M-style training record: numpy phrases, labels and float32 box arrays."""
    return {
        "vid9_4": {
            "video_fname": "vid9.mp4",
            "video_id": "vid9",
            "clip_id": "4",
            "fps": np.float64(23.976),
            "clip_start_frame": 960,
            "clip_end_frame": 1151,
            "width": 455,
            "height": 256,
            "caption": "a woman pours water into a glass",
            "tagged_caption": "<p>a woman</p> pours <p>water</p> into <p>a glass</p>",
            "phrases": np.array(["a woman", "water", "a glass"]),
            "bboxes": [
                np.array([[1.25, 2.5, 100.75, 200.0], [50.0, 60.0, 70.0, 80.0]], dtype=np.float32),
                np.zeros((0, 4), dtype=np.float32),
                np.array([[3.0, 4.0, 101.0, 201.0]], dtype=np.float32),
            ],
            "labels": [np.array(["a woman", "a glass"]), np.array([], dtype="<U1"), np.array(["a woman"])],
        }
    }


def test_raw_pickle_round_trip_is_identical(tmp_path):
    records = raw_iground()
    path = tmp_path / "iGround_val_set_raw.pkl"
    path.write_bytes(pickle.dumps(records))
    clips, boxes = read_official(path, "iground", "val")
    # through Parquet, as the dataset folder stores them
    write_clips(clips, tmp_path / "clips.parquet")
    write_boxes(boxes, tmp_path / "boxes.parquet")
    back = tables_to_records(read_clips(tmp_path / "clips.parquet"), read_boxes(tmp_path / "boxes.parquet"))
    assert_identical(records, back)
    out = write_official(back, tmp_path / "out" / "again.pkl")
    assert_identical(records, pickle.loads(out.read_bytes()))


def test_processed_pickle_round_trip_is_identical(tmp_path):
    processed = processed_of(raw_iground())
    path = tmp_path / "iGround_val_set_processed.pkl"
    path.write_bytes(pickle.dumps(processed))
    clips, boxes = read_official(path, "iground", "val")
    assert_identical(processed, tables_to_records(clips, boxes))


def test_processed_equals_merge_of_raw():
    records = raw_iground()
    clips, raw = records_to_tables(records, "iground", "val")
    merged = tables_to_records(clips, merge_same_phrase_boxes(raw))
    assert merged == processed_of(records)  # values; coordinate types follow the raw layout where they can


def test_tables_hold_the_right_boxes_on_the_right_frames():
    clips, boxes = records_to_tables(raw_iground(), "iground", "val")
    assert clips["key"].to_pylist() == ["kTNXW1FpOyk_12", "kTNXW1FpOyk_13", "a_b_c_0"]
    assert clips["num_frames"].to_pylist() == [6, 5, 3]
    assert clips["video_path"].to_pylist()[2] == "a_b_c.mkv"
    assert clips["caption"].to_pylist()[0].startswith('"A man')  # verbatim, quotes kept
    rows = [r for r in boxes.to_pylist() if r["key"] == "kTNXW1FpOyk_12"]
    # 29.97 fps -> step int(29.97 / 5) = 5
    assert [(r["frame_index"], r["frame_id"], r["box_index"]) for r in rows] == [
        (0, 2700, 0), (0, 2700, 1), (0, 2700, 2), (1, 2705, 0), (1, 2705, 1), (3, 2715, 0), (3, 2715, 1)]
    assert [(r["phrase"], r["phrase_index"]) for r in rows] == [
        ("man", 0), ("an onion", 1), ("an onion", 1), ("man", 0), ("a knife", 2), ("A Knife", 2), ("the chef", -1)]
    assert (rows[2]["x1"], rows[2]["y1"], rows[2]["x2"], rows[2]["y2"]) == (220.5, 150.25, 290.0, 198.75)
    soup = [r for r in boxes.to_pylist() if r["key"] == "kTNXW1FpOyk_13"]
    assert [r["frame_id"] for r in soup] == [2940, 2946, 2946]  # 30 fps -> step 6
    # the frame ids agree with the shared frame protocol
    for clip in clips.to_pylist():
        grid = annotated_frame_ids(clip["fps"], clip["clip_start_frame"], clip["clip_end_frame"], clip["num_frames"])
        ids = {r["frame_index"]: r["frame_id"] for r in boxes.to_pylist() if r["key"] == clip["key"]}
        assert all(grid[t] == frame_id for t, frame_id in ids.items())


def test_numpy_layout_round_trip_is_identical(tmp_path):
    records = numpy_howtoground()
    path = tmp_path / "h.pkl"
    path.write_bytes(pickle.dumps(records))
    clips, boxes = read_official(path, "howtoground", "train")
    assert boxes["x1"].to_pylist() == [1.25, 50.0, 3.0]
    assert boxes["phrase_index"].to_pylist() == [0, 2, 0]
    assert_identical(records, tables_to_records(clips, boxes))


def test_unusual_spellings_round_trip():
    record = raw_iground()["kTNXW1FpOyk_13"]
    odd = {
        "labels": tuple(tuple(frame) for frame in record["labels"]),
        "clip_id": 13,  # an int id
        "note": {"b": (1, 2.0), "a": [None, float("inf"), np.int16(3)], 7: {"$tag": 1}},
        "bboxes": [[tuple(np.float32(c) for c in box) for box in frame] for frame in record["bboxes"]],
        **{k: v for k, v in record.items() if k not in ("labels", "clip_id", "bboxes")},  # different key order
        "phrases": ("hands", "the soup"),
        "width": np.int32(455),
        "ordered": collections.OrderedDict([("z", 1), ("a", 2)]),
    }
    records = {"kTNXW1FpOyk_13": odd}
    clips, boxes = records_to_tables(records, "iground", "test")
    assert clips["clip_id"].to_pylist() == ["13"]
    assert_identical(records, tables_to_records(clips, boxes))


def test_json_value_codec_is_exact():
    values = [1, 1.0, -0.0, "s", None, True, [1, (2, 3)], {"b": 1, "a": 2}, {"$x": 1}, {1: 2}, b"\x00\xff",
              float("nan"), 2 + 3j, {1, 2}, frozenset(), range(1, 5, 2), np.array([[1, 2]], np.uint8),
              np.array(["a", [1]], dtype=object), np.float16(1.5), np.dtype("<f4"),
              collections.defaultdict(int, {"a": 1})]
    for value in values:
        assert_identical(value, from_json_value(to_json_value(value)), repr(value))
    with pytest.raises(TypeError, match="cannot store"):
        to_json_value(object())


def test_per_clip_directory(tmp_path):
    records = raw_iground()
    directory = write_per_clip(records, tmp_path / "annotations")
    assert sorted(p.name for p in directory.iterdir()) == sorted(f"{key}.pkl" for key in records)
    assert_identical(records["a_b_c_0"], pickle.loads((directory / "a_b_c_0.pkl").read_bytes()))
    clips, boxes = read_official(directory, "iground", "val")
    assert clips["key"].to_pylist() == sorted(records)  # file-name order
    assert_identical({k: records[k] for k in sorted(records)}, tables_to_records(clips, boxes))
    keys = ["kTNXW1FpOyk_13", "a_b_c_0"]
    clips, _ = read_official(directory, "iground", "val", keys=keys)
    assert clips["key"].to_pylist() == keys
    assert list(read_records(directory, keys)) == keys


def test_per_clip_directory_refuses_a_malicious_clip(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    directory = write_per_clip(raw_iground(), tmp_path / "annotations")
    (directory / "zz_9.pkl").write_bytes(pickle.dumps({"video_fname": Evil()}))
    with pytest.raises(UnsafePickleError, match=r"zz_9\.pkl.*builtins\.print"):
        read_official(directory, "iground", "val")


def _bad(tmp_path, mutate):
    records = raw_iground()
    mutate(records["kTNXW1FpOyk_13"])
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(records))
    return path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("fps"), r"missing field\(s\) \['fps'\]"),
        (lambda r: r["labels"].pop(), "5 frames of bboxes but 4 frames of labels"),
        (lambda r: r["labels"][1].pop(), "frame 1 has 2 boxes but 1 labels"),
        (lambda r: r["bboxes"][0].append([1, 2, 3]), r"bboxes\[0\]: a box must be \[x1, y1, x2, y2\]"),
        (lambda r: r.update(width="wide"), "field 'width' must be a number"),
        (lambda r: r.update(clip_start_frame=1.5), "field 'clip_start_frame' must be a whole number"),
    ],
)
def test_bad_records_name_file_and_clip(tmp_path, mutate, message):
    path = _bad(tmp_path, mutate)
    with pytest.raises(RecordError, match=f"{path}: clip 'kTNXW1FpOyk_13': {message}"):
        read_official(path, "iground", "val")


def test_not_a_dict_of_records(tmp_path):
    path = tmp_path / "keys.pkl"
    path.write_bytes(pickle.dumps(["kTNXW1FpOyk_12"]))
    with pytest.raises(RecordError, match=f"{path}: expected a dict of clip records"):
        read_official(path, "iground", "val")
