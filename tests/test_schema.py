import pyarrow as pa
import pytest

from grove.data.dataset import load_dataset, write_manifest
from grove.data.schema import (
    BOX_SCHEMA,
    CLIP_SCHEMA,
    SchemaError,
    box_table,
    clip_table,
    read_boxes,
    read_clips,
    write_boxes,
    write_clips,
)


def _clip(key="v1_0", split="test"):
    return {
        "key": key, "dataset": "synthetic", "split": split, "video_id": key.split("_")[0], "clip_id": "0",
        "video_path": f"videos/{key}.mp4", "fps": 10.0, "clip_start_frame": 0, "clip_end_frame": 79,
        "num_frames": 40, "width": 160, "height": 96, "caption": "a red cup moves left",
        "tagged_caption": "<p>a red cup</p> moves left", "phrases": ["a red cup"], "extra": {"seed": 1},
    }


def _box(key="v1_0"):
    return {"key": key, "frame_index": 0, "frame_id": 0, "box_index": 0, "phrase_index": 0,
            "phrase": "a red cup", "x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0}


def test_roundtrip(tmp_path):
    write_clips(clip_table([_clip()]), tmp_path / "clips.parquet")
    write_boxes(box_table([_box()]), tmp_path / "boxes_processed.parquet")
    clips = read_clips(tmp_path / "clips.parquet")
    assert clips.schema == CLIP_SCHEMA
    assert clips.to_pylist()[0]["extra"] == '{"seed": 1}'
    assert read_boxes(tmp_path / "boxes_processed.parquet").schema == BOX_SCHEMA


def test_missing_column_names_file(tmp_path):
    path = tmp_path / "clips.parquet"
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"key": ["a"]}), path)
    with pytest.raises(SchemaError, match="clips.parquet.*missing"):
        read_clips(path)


def test_load_dataset_splits(tmp_path):
    write_clips(clip_table([_clip("a_0", "train"), _clip("b_0", "test")]), tmp_path / "clips.parquet")
    write_boxes(box_table([_box("a_0"), _box("b_0")]), tmp_path / "boxes_processed.parquet")
    write_manifest(tmp_path, {"name": "t"})
    ds = load_dataset(tmp_path)
    assert ds.splits == ["test", "train"]
    test = ds.split("test")
    assert test.clips["key"].to_pylist() == ["b_0"] and test.boxes["key"].to_pylist() == ["b_0"]
    assert ds.video_file("videos/x.mp4") == tmp_path / "videos/x.mp4"
    assert ds.manifest == {"name": "t"}


def test_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a dataset folder"):
        load_dataset(tmp_path)
