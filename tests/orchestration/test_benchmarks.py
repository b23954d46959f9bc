"""The paper profile's external benchmarks: official files from a folder named by an environment variable."""

import json

import dagster as dg
import pytest

from grove.data.dataset import load_dataset
from orchestration.defs.benchmarks.assets import build
from orchestration.profile import load_profile
from orchestration.resources import PipelinePaths


def vidstg_annotation(first_sentence: int) -> dict:
    """Two sentences on one video, a TubeDETR-style file (the fields grove.data.vidstg reads)."""
    def entry(sentence, caption, qtype, target):
        return {"original_video_id": "2727682922", "video_id": sentence, "video_path": "2727/2727682922.mp4",
                "caption": caption, "qtype": qtype, "fps": 30.0, "width": 640, "height": 480, "target_id": target,
                "tube_start_frame": 100, "tube_end_frame": 140, "start_frame": 70, "end_frame": 170,
                "frame_count": 900, "type": "adult"}

    tube = {str(f): {"bbox": [f, 10, 20, 30], "generated": 0} for f in range(60, 180)}
    return {
        "videos": [entry(first_sentence, "an adult rides a bike .", "declarative", 1),
                   entry(first_sentence + 1, "who is riding a bike?", "interrogative", 1)],
        "trajectories": {"2727682922": {"1": tube}},
    }


def test_vidstg_benchmark_converts_each_split_from_its_folder(tmp_path, monkeypatch):
    profile = load_profile("paper")
    vidstg = next(a for a in build(profile) if isinstance(a, dg.AssetsDefinition) and a.key.to_user_string() == "vidstg_benchmark")
    paths = PipelinePaths(root=str(tmp_path / "runs"))
    folder = tmp_path / "vidstg"
    folder.mkdir()
    (folder / "2727").mkdir()
    (folder / "2727" / "2727682922.mp4").write_bytes(b"video")
    for first, name in ((0, "val.json"), (10, "test.json")):
        (folder / name).write_text(json.dumps(vidstg_annotation(first)))

    monkeypatch.delenv("GROVE_VIDSTG_DIR", raising=False)
    with pytest.raises(Exception, match=r"\$GROVE_VIDSTG_DIR is not set"):
        dg.materialize([vidstg], resources={"paths": paths})

    monkeypatch.setenv("GROVE_VIDSTG_DIR", str(folder))
    result = dg.materialize([vidstg], resources={"paths": paths})
    (materialization,) = result.asset_materializations_for_node("vidstg_benchmark")
    assert materialization.metadata["clips_test"].value == 2 and materialization.metadata["clips_val"].value == 2
    dataset = load_dataset(paths.path("benchmarks", "vidstg"))
    assert dataset.splits == ["test", "val"]
    assert all(dataset.video_file(p).resolve() == (folder / "2727" / "2727682922.mp4").resolve() for p in dataset.clips["video_path"].to_pylist())
