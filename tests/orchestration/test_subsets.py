"""Nested, seeded pre-training subsets."""

import hashlib

import pytest

from grove.data.dataset import load_dataset, read_manifest, write_manifest
from grove.data.schema import box_table, clip_table, write_boxes, write_clips
from orchestration.defs.scaling.subsets import SubsetError, nested_subset, ranked_keys, write_subset


def make_pool(root, clips=30):
    rows, boxes = [], []
    for i in range(clips):
        key = f"vid{i:03d}_0"
        rows.append(
            dict(
                key=key, dataset="pool", split="pool", video_id=f"vid{i:03d}", clip_id="0",
                video_path=f"videos/vid{i:03d}.mp4", fps=10.0, clip_start_frame=0, clip_end_frame=79,
                num_frames=40, width=160, height=96, caption="a cup moves", tagged_caption="<p>a cup</p> moves",
                phrases=["a cup"], extra={},
            )
        )
        boxes.append(
            dict(key=key, frame_index=0, frame_id=0, box_index=0, phrase_index=0, phrase="a cup",
                 x1=1.0, y1=2.0, x2=30.0, y2=40.0)
        )
    (root / "videos").mkdir(parents=True)
    for row in rows:
        (root / row["video_path"]).write_bytes(b"not really a video")
    write_clips(clip_table(rows), root / "clips.parquet")
    write_boxes(box_table(boxes), root / "boxes_processed.parquet")
    write_boxes(box_table(boxes), root / "boxes_raw.parquet")
    write_manifest(root, {"name": "pool"})
    return [row["key"] for row in rows]


def test_subsets_are_nested_and_seeded():
    keys = [f"k{i}" for i in range(100)]
    small, large = nested_subset(keys, 7, 10), nested_subset(keys, 7, 40)
    assert large[:10] == small and len(set(large)) == 40
    assert nested_subset(list(reversed(keys)), 7, 10) == small  # input order does not matter
    assert nested_subset(keys, 8, 10) != small  # the seed does
    assert nested_subset(keys, 7, None) == ranked_keys(keys, 7)
    # The order is a pure function of seed and key: the same on any machine.
    expected = sorted(keys, key=lambda k: hashlib.sha256(f"7:{k}".encode()).hexdigest())[:10]
    assert small == expected


def test_a_growing_pool_keeps_the_relative_order_of_old_clips():
    old = [f"k{i}" for i in range(50)]
    grown = ranked_keys(old + [f"new{i}" for i in range(50)], 3)
    assert [k for k in grown if k in set(old)] == ranked_keys(old, 3)


def test_write_subset_makes_a_dataset_folder_whose_videos_resolve(tmp_path):
    pool_keys = make_pool(tmp_path / "pool")
    summary = write_subset(tmp_path / "pool", tmp_path / "subsets" / "small", size=12, seed=42)
    assert summary.clips == 12 and summary.pool_clips == 30

    subset = load_dataset(tmp_path / "subsets" / "small")
    assert sorted(subset.clips["key"].to_pylist()) == sorted(nested_subset(pool_keys, 42, 12))
    assert set(subset.boxes["key"].to_pylist()) == set(subset.clips["key"].to_pylist())
    for path in subset.clips["video_path"].to_pylist():
        assert not path.startswith("/") and subset.video_file(path).resolve().exists()
    manifest = read_manifest(tmp_path / "subsets" / "small")
    assert manifest["seed"] == 42 and manifest["size"] == 12 and manifest["splits"] == {"pool": 12}


def test_same_seed_gives_byte_identical_subsets(tmp_path):
    make_pool(tmp_path / "pool")
    write_subset(tmp_path / "pool", tmp_path / "a", size=12, seed=1)
    write_subset(tmp_path / "pool", tmp_path / "b", size=12, seed=1)
    for name in ("clips.parquet", "boxes_processed.parquet", "boxes_raw.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    manifests = [read_manifest(tmp_path / folder) for folder in ("a", "b")]
    first, second = ({k: v for k, v in m.items() if k != "name"} for m in manifests)
    assert first == second


def test_a_subset_larger_than_the_pool_is_refused_naming_the_pool(tmp_path):
    make_pool(tmp_path / "pool", clips=5)
    with pytest.raises(SubsetError, match=r"pool.*needs a pool of at least 6; the pool has 5"):
        write_subset(tmp_path / "pool", tmp_path / "big", size=6, seed=0)
    assert not (tmp_path / "big").exists()
