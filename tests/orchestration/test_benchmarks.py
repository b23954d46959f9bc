"""The paper profile's external benchmarks: official files from a folder named by an environment variable."""

import json

import dagster as dg
import pytest

from grove.data.dataset import load_dataset
from orchestration.defs.benchmarks.assets import build
from orchestration.profile import load_profile
from orchestration.resources import DvcResource, PipelinePaths


def paper_benchmark_asset(key: str) -> dg.AssetsDefinition:
    return next(a for a in build(load_profile("paper")) if isinstance(a, dg.AssetsDefinition) and a.key.to_user_string() == key)


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
    vidstg = paper_benchmark_asset("vidstg_benchmark")
    paths = PipelinePaths(root=str(tmp_path / "runs"))
    folder = tmp_path / "vidstg"
    folder.mkdir()
    (folder / "2727").mkdir()
    (folder / "2727" / "2727682922.mp4").write_bytes(b"video")
    for first, name in ((0, "val.json"), (10, "test.json")):
        (folder / name).write_text(json.dumps(vidstg_annotation(first)))

    monkeypatch.delenv("GROVE_VIDSTG_DIR", raising=False)
    with pytest.raises(Exception, match=r"\$GROVE_VIDSTG_DIR is not set"):
        dg.materialize([vidstg], resources={"paths": paths, "dvc": DvcResource(enabled=False)})

    monkeypatch.setenv("GROVE_VIDSTG_DIR", str(folder))
    result = dg.materialize([vidstg], resources={"paths": paths, "dvc": DvcResource(enabled=False)})
    (materialization,) = result.asset_materializations_for_node("vidstg_benchmark")
    assert materialization.metadata["clips_test"].value == 2 and materialization.metadata["clips_val"].value == 2
    dataset = load_dataset(paths.path("benchmarks", "vidstg"))
    assert dataset.splits == ["test", "val"]
    assert dataset.manifest["name"] == "vidstg"  # the folder's own name, not its staging folder's
    assert all(dataset.video_file(p).resolve() == (folder / "2727" / "2727682922.mp4").resolve() for p in dataset.clips["video_path"].to_pylist())


def anet_annotation() -> dict:
    """Two annotated videos in the cleaned ActivityNet-Entities layout (the fields grove.data.anet_entities reads)."""
    def segment(tokens, classes, indices, boxes, slots, timestamps):
        return {"tokens": tokens.split(), "process_clss": classes, "process_idx": indices, "process_bnd_box": boxes,
                "frame_ind": slots, "timestamps": timestamps, "crowds": [0] * len(slots)}

    return {
        "vocab": ["man", "ball", "woman", "dog"],
        "annotations": {
            "v_alpha": {"duration": 30.0, "fps": 30.0, "rheight": 360, "segments": {
                "0": segment("A man throws a ball", [["man"], ["ball"]], [[1], [4]], [[5, 6, 100, 300], [200, 50, 230, 80]], [2, 5], [0.0, 10.0]),
                "1": segment("The man catches the ball", [["man"], ["ball"]], [[1], [4]], [[8, 9, 110, 310], [150, 40, 180, 70]], [0, 9], [10.0, 20.0]),
            }},
            "v_beta": {"duration": 12.0, "fps": 25.0, "rheight": 480, "segments": {
                "0": segment("A woman walks a dog", [["woman"], ["dog"]], [[1], [4]], [[0, 0, 50, 100], [60, 60, 90, 90]], [3, 3], [1.0, 9.0]),
            }},
            "v_train_only": {"duration": 5.0, "fps": 30.0, "rheight": 360, "segments": {
                "0": segment("A dog runs", [["dog"]], [[1]], [[1, 2, 30, 40]], [0], [0.0, 5.0]),
            }},
        },
    }


def test_anet_entities_benchmark_converts_the_validation_videos_of_the_split_file(tmp_path, monkeypatch):
    settings = load_profile("paper").get("benchmarks.anet_entities")
    anet = paper_benchmark_asset("anet_entities_benchmark")
    paths = PipelinePaths(root=str(tmp_path / "runs"))
    folder = tmp_path / "anet"
    folder.mkdir()
    (folder / settings["files"]["val"]).write_text(json.dumps(anet_annotation()))
    split_ids = {"training": ["v_train_only"], "validation": ["v_alpha", "v_beta", "v_not_annotated"], "testing": []}
    (folder / settings["split_ids"]).write_text(json.dumps(split_ids))
    for video in ("v_alpha", "v_beta"):
        (folder / f"{video}.mp4").write_bytes(b"video")

    monkeypatch.setenv("GROVE_ANET_DIR", str(tmp_path / "absent"))
    with pytest.raises(Exception, match=r"GROVE_ANET_DIR=.*absent: no such folder"):
        dg.materialize([anet], resources={"paths": paths, "dvc": DvcResource(enabled=False)})

    monkeypatch.setenv("GROVE_ANET_DIR", str(folder))
    result = dg.materialize([anet], resources={"paths": paths, "dvc": DvcResource(enabled=False)})
    (materialization,) = result.asset_materializations_for_node("anet_entities_benchmark")
    assert materialization.metadata["clips_val"].value == 3 and materialization.metadata["raw_boxes_val"].value == 6
    assert "v_alpha_0" in materialization.metadata["preview"].value
    assert materialization.tags["dagster/data_version"].endswith(".dir")  # the folder's DVC hash
    dataset = load_dataset(paths.path("benchmarks", "anet_entities"))
    assert dataset.splits == ["val"]
    assert dataset.clips["key"].to_pylist() == ["v_alpha_0", "v_alpha_1", "v_beta_0"]  # the training video is not in val
    assert dataset.clips["phrases"].to_pylist()[0] == ["man", "ball"]
    assert all(dataset.video_file(p).resolve() == (folder / f"{p.rsplit('/', 1)[-1]}").resolve() for p in dataset.clips["video_path"].to_pylist())
    frame_ids = {(r["key"], r["phrase"]): r["frame_id"] for r in dataset.boxes.to_pylist()}
    assert frame_ids[("v_alpha_0", "man")] == round(2.5 * 30)  # slot 2 of [0, 10] s at its midpoint 2.5 s, 30 fps
