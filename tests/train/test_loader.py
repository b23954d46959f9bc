import numpy as np
import pytest

from grove.data.boxes import boxes_by_key
from grove.data.frames import NUM_FRAMES, sample_segment_indices, segment_bounds
from grove.data.loader import (
    FrameCache,
    GroveClipDataset,
    StepBatchSampler,
    clip_records,
    make_loader,
    resolve_dataset,
    sample_frame_indices,
)
from grove.data.schema import box_table
from tests.train.fixtures import COLOURS, make_dataset


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("loader"), {"train": 6, "val": 2})


def test_records_lay_boxes_on_the_grid(dataset_dir):
    dataset = resolve_dataset(dataset_dir, "train")
    records = clip_records(dataset)
    assert [r.key for r in records] == dataset.clips["key"].to_pylist()
    per_key = boxes_by_key(dataset.boxes)
    for record in records:
        assert len(record.frame_ids) == 20 and record.frame_ids[:3] == (0, 2, 4)
        rows = per_key[record.key].to_pylist()
        assert record.present.sum() == len(rows)
        for row in rows:
            assert record.boxes[row["frame_index"], row["phrase_index"]].tolist() == [row["x1"], row["y1"], row["x2"], row["y2"]]


def test_same_phrase_boxes_become_their_union_and_unknown_labels_are_dropped(dataset_dir):
    dataset = resolve_dataset(dataset_dir, "train")
    key = dataset.clips["key"][0].as_py()
    extra = [
        dict(key=key, frame_index=0, frame_id=0, box_index=5, phrase_index=0, phrase="x", x1=0.0, y1=0.0, x2=1.0, y2=1.0),
        dict(key=key, frame_index=1, frame_id=2, box_index=5, phrase_index=-1, phrase="?", x1=0.0, y1=0.0, x2=9.0, y2=9.0),
    ]
    dataset.boxes = box_table(dataset.boxes.to_pylist() + extra)
    record = clip_records(dataset)[0]
    original = clip_records(resolve_dataset(dataset_dir, "train"))[0]
    if original.present[0, 0]:
        assert record.boxes[0, 0, :2].tolist() == [0.0, 0.0]
        assert record.boxes[0, 0, 2:].tolist() == original.boxes[0, 0, 2:].tolist()
    assert record.present[1].tolist() == original.present[1].tolist()


def test_bad_split_and_missing_data_are_named(dataset_dir, tmp_path):
    with pytest.raises(ValueError, match="no split 'pool'"):
        resolve_dataset(dataset_dir, "pool")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        resolve_dataset(tmp_path / "nowhere", "train")
    assert len(resolve_dataset(dataset_dir / "clips.parquet", "all").clips) == 8


def test_frame_sampling_protocol():
    present = np.zeros((41, 2), bool)
    present[37, 1] = True  # one object, in the last segment only
    assert sample_frame_indices(present, None) == sample_segment_indices(41) == [2, 7, 12, 17, 22, 27, 32, 38]
    rng = np.random.default_rng(0)
    for _ in range(20):
        picks = sample_frame_indices(present, rng)
        assert all(start <= p < end for p, (start, end) in zip(picks, segment_bounds(41)))
    present = np.zeros((41, 2), bool)
    present[3] = True  # only the first segment can show it: resampling must find frame 3
    for _ in range(10):
        assert 3 in sample_frame_indices(present, rng)
    assert len(sample_frame_indices(np.zeros((41, 1), bool), rng)) == NUM_FRAMES


def test_samples_show_the_boxed_objects(dataset_dir):
    records = clip_records(resolve_dataset(dataset_dir, "train"))
    dataset = GroveClipDataset(records, seed=3)
    sample = dataset.sample((1, 0))
    np.testing.assert_array_equal(sample.frames, dataset.sample((1, 0)).frames)
    assert sample.frames.shape == (8, 48, 64, 3) and sample.frames.dtype == np.uint8
    assert sample.present.any()
    colour = sample.phrases[0].split()[1]
    for t in np.flatnonzero(sample.present[:, 0]):
        x1, y1, x2, y2 = sample.boxes[t, 0]
        pixel = sample.frames[t, int(y1 + y2) // 2, int(x1 + x2) // 2].astype(int)
        assert np.abs(pixel - COLOURS[colour]).max() < 40, (t, pixel)
    centres = dataset.sample(1)
    assert centres.frame_ids == [records[1].frame_ids[i] for i in sample_segment_indices(20)]


def test_frame_cache_is_bounded():
    cache = FrameCache(max_bytes=250)
    for key in "abc":
        cache.put(key, np.zeros(100, np.uint8))
    assert cache.get("a") is None and cache.get("c") is not None
    cache.put("huge", np.zeros(1000, np.uint8))
    assert cache.get("huge") is None


def test_ranks_together_see_what_one_process_sees():
    single = StepBatchSampler(10, global_batch=4, micro_batch=1, total_steps=6, seed=1)
    ranks = [StepBatchSampler(10, 4, 1, 6, world_size=2, rank=r, seed=1) for r in range(2)]
    assert single.accumulation == 4 and ranks[0].accumulation == 2
    one = list(single)
    per_rank = [list(r) for r in ranks]
    for step in range(6):
        together = per_rank[0][2 * step : 2 * step + 2] + per_rank[1][2 * step : 2 * step + 2]
        assert together == one[4 * step : 4 * step + 4]
    # an epoch (2 steps of 4 out of 10 clips) never repeats a clip
    first_epoch = [item for batch in one[:8] for item in batch]
    assert len({i for i, _ in first_epoch}) == 8 and {e for _, e in first_epoch} == {0}
    resumed = list(StepBatchSampler(10, 4, 1, 6, start_step=4, seed=1))
    assert resumed == one[16:]
    with pytest.raises(ValueError, match="not a multiple"):
        StepBatchSampler(10, 3, 1, 2, world_size=2)


def test_worker_processes_give_the_same_samples(dataset_dir):
    records = clip_records(resolve_dataset(dataset_dir, "train"))
    dataset = GroveClipDataset(records, seed=5)
    sampler = StepBatchSampler(len(records), 2, 1, total_steps=3, seed=5)
    in_process = [batch[0].frames for batch in make_loader(dataset, sampler, num_workers=0)]
    workers = [batch[0].frames for batch in make_loader(dataset, sampler, num_workers=2)]
    assert len(in_process) == 6
    for a, b in zip(in_process, workers):
        np.testing.assert_array_equal(a, b)
