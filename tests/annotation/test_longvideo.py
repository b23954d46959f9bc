import json

import pyarrow.parquet as pq

from annotation.longvideo import Item, Summariser
from annotation.shards import AnnotatorConfig, annotate


def test_long_videos_get_a_clip_segment_video_hierarchy(synthetic, tmp_path):
    config = AnnotatorConfig(clip_seconds=0.6, segment_clips=2, stage1_options={"noise": "low"})
    annotate(synthetic.catalog, tmp_path, config, shard_size=20)
    table = pq.read_table(tmp_path / "hierarchy.parquet").to_pylist()
    video = [r for r in table if r["video_id"] == "vid0000"]
    levels = [r["level"] for r in video]
    assert levels.count("clip") == 3 and levels.count("segment") == 2 and levels.count("video") == 1
    summary = next(r for r in video if r["level"] == "video")
    assert (summary["start_frame"], summary["end_frame"]) == (0, 17) and "red cup" in summary["caption"]
    recap = json.loads((tmp_path / "hierarchy.json").read_text())
    assert set(recap) == {"clip", "segment", "video"} and recap["video"]["vid0000"] == summary["caption"]
    assert "vid0005" not in recap["video"]  # its video is corrupt: every clip rejected
    manifest = json.loads((tmp_path / "dataset.json").read_text())
    assert manifest["hierarchy"]["video"] == 11


class Scripted:
    def __init__(self, *calls):
        self.calls = list(calls)

    def describe(self):
        return {}

    def generate(self, prompts, schemas=None):
        return self.calls.pop(0)


def test_llm_summaries_repair_then_fall_back_to_consensus():
    summariser = Summariser()
    summariser.generator = Scripted(["{'CAPTION': 'A red cup slides left, then stops.'}", "junk", "junk"], ["junk", "{'CAPTION': '<p>A box</p> waits.'}"])
    items = [Item(f"v_{i}", i, i, "a small red cup moves to the left.", "<p>a small red cup</p> moves to the left.",
                  ["a small red cup"], "stage2") for i in range(3)]
    results = summariser.summarise([("g0", items), ("g1", items), ("g2", items)], "summary")
    assert [r[2] for r in results] == ["llm", "consensus-fallback", "llm"]
    assert results[0][0] == "A red cup slides left, then stops." and results[2][0] == "A box waits."
    assert results[1][1] == "<p>a small red cup</p> moves to the left."
