"""The `paper` profile's annotation, end to end on CPU (issue 12): `GROVE_PROFILE=paper`, params.yaml as it
is, every named model replaced by a local stand-in through the environment, and Dagster materialises the
catalog, the three stages of every shard and the annotated pool from a handful of real video files.

- Videos: cuts of the animation that dagster-webserver ships (a spinning globe, H.264, 60 fps), one of them
  rescaled, and a truncated copy that the catalog must reject. None of them comes from `grove data synth`.
- Stage 1 (`glamm`, $GROVE_ANNOTATION_GLAMM): scripts/make_standin_glamm.py's random-weight checkpoint in
  GLaMM's released layout, taught here to answer one GCG sentence about these frames (a random LLM never
  writes `<p> ... </p> [SEG]`; tests/model/test_glamm.py's `train_gcg`, with the masks that the profile's
  backend uses: 8 decoder heads) and written back in GLaMM's layout. The backend imports it on first use,
  decodes every 5 fps frame and segments every [SEG].
- Stages 2 and 3 (`transformers`, $GROVE_ANNOTATION_LLM): scripts/make_standin_llm.py's random-weight
  Llama-2 chat. Its answers are noise, so every prompt is repaired once and then falls back, and the counts
  and the fallback-rate check say so.
"""

from __future__ import annotations

import importlib.util
import json
from fractions import Fraction
from pathlib import Path

import av
import dagster as dg
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from grove.weights.importer import import_checkpoint, native_grounding_size
from orchestration.defs.annotation import assets as annotation_assets
from orchestration.defs.annotation.assets import POOL, STAGE_KEYS
from orchestration.defs.raw_videos import assets as raw_video_assets
from orchestration.profile import load_profile
from orchestration.resources import DvcResource, PipelinePaths
from orchestration.sensors import sync_shard_partitions
from tests.model.test_glamm import export_glamm_layout, load_gcg, train_gcg, write_tiny_glamm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]
ANSWER = "<p> a globe </p> [SEG] turns slowly with <p> green land </p> [SEG] on it."
CUTS = {"globe_a.mp4": (0.0, None), "globe_b.mp4": (3.0, (320, 180)), "globe_c.mp4": (6.0, None)}  # start s, size
SECONDS = 2.0


def shipped_video() -> Path:
    import dagster_webserver

    path = Path(dagster_webserver.__file__).parent / "webapp" / "build" / "Dagster_world.mp4"
    if not path.is_file():
        pytest.fail(f"{path}: dagster-webserver no longer ships its animation; give this test other real videos")
    return path


def cut(source: Path, out: Path, start: float, size: tuple[int, int] | None) -> None:
    """SECONDS of `source` from `start`, re-encoded (H.264), optionally rescaled to `size` (w, h)."""
    with av.open(str(source)) as reader, av.open(str(out), "w") as writer:
        video = reader.streams.video[0]
        stream = writer.add_stream("libx264", rate=Fraction(video.average_rate).limit_denominator(1000))
        stream.width, stream.height = size or (video.width, video.height)
        stream.pix_fmt = "yuv420p"
        for frame in reader.decode(video):
            seconds = float(frame.pts * video.time_base)
            if seconds >= start + SECONDS:
                break
            if seconds >= start:
                image = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
                for packet in stream.encode(image.reformat(width=stream.width, height=stream.height)):
                    writer.mux(packet)
        for packet in stream.encode():
            writer.mux(packet)


def grid_frames(path: Path) -> list[np.ndarray]:
    """The video's frames on a 5 fps grid (the frames stage 1 sees)."""
    with av.open(str(path)) as reader:
        video = reader.streams.video[0]
        step = round(float(video.average_rate) / 5)
        return [f.to_ndarray(format="rgb24") for i, f in enumerate(reader.decode(video)) if i % step == 0]


def extent(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def answer_boxes(frame: np.ndarray) -> list[tuple[float, float, float, float]]:
    """The globe (everything but the white page) and its land (the dark green), by colour."""
    rgb = frame.astype(int)
    return [extent(rgb.sum(-1) < 3 * 235), extent((rgb[..., 1] < 110) & (rgb[..., 0] < 90))]


@pytest.fixture(scope="module")
def pool_videos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pool_videos")
    for name, (start, size) in CUTS.items():
        cut(shipped_video(), folder / name, start, size)
    (folder / "globe_truncated.mp4").write_bytes((folder / "globe_a.mp4").read_bytes()[:3000])
    return folder


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def glamm_standin(pool_videos, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("glamm")
    raw = write_tiny_glamm(root / "GLaMM-standin")
    imported = root / "imported"
    import_checkpoint("glamm", raw, imported, decoder_heads=8, grounding_size=native_grounding_size(raw), hash_sources=False)
    gcg = load_gcg(imported)
    frames = [frame for name in CUTS for frame in grid_frames(pool_videos / name)]
    text_losses, mask_losses = train_gcg(gcg, frames, [ANSWER] * len(frames), [answer_boxes(f) for f in frames])
    assert text_losses[-1] < 0.05 * text_losses[0] and mask_losses[-1] < mask_losses[0]
    return export_glamm_layout(gcg, imported, raw, root / "GLaMM-standin-gcg")


@pytest.fixture(scope="module")
def llm_standin(tmp_path_factory) -> Path:
    return _script("make_standin_llm").make_standin_llm(tmp_path_factory.mktemp("llm") / "llama2-chat-standin", seed=0)


def metadata_of(result: dg.ExecuteInMemoryResult, key: dg.AssetKey) -> dict:
    (materialization,) = result.asset_materializations_for_node(key.path[-1])
    return {name: value.value for name, value in materialization.metadata.items()}


def test_paper_profile_annotation_materialises_end_to_end_on_stand_ins(pool_videos, glamm_standin, llm_standin,
                                                                       dagster_instance, tmp_path, monkeypatch):
    for name, value in {"GROVE_PROFILE": "paper", "GROVE_POOL_VIDEOS": pool_videos, "GROVE_ANNOTATION_GLAMM": glamm_standin,
                        "GROVE_ANNOTATION_LLM": llm_standin, "GROVE_CACHE_DIR": tmp_path / "cache"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("GROVE_PARAMS", raising=False)
    profile = load_profile()
    assert profile.name == "paper" and profile.params_file == REPO / "params.yaml"
    assert [profile.get(f"annotation.stage{s}") for s in (1, 2, 3)] == ["glamm", "transformers", "transformers"]
    paths = PipelinePaths(root=str(tmp_path / "runs"))
    resources = {"paths": paths, "dvc": DvcResource(enabled=False)}
    assets = raw_video_assets.build(profile) + annotation_assets.build(profile)

    catalog = metadata_of(dg.materialize(assets, selection=["pool_catalog"], instance=dagster_instance, resources=resources),
                          dg.AssetKey("pool_catalog"))
    assert (catalog["videos"], catalog["clips"], catalog["rejects"]) == (3, 3, 1)

    sync_shard_partitions(profile, paths)(dagster_instance)
    (shard,) = dagster_instance.get_dynamic_partitions("annotation_shards")
    stages = [key.to_user_string() for key in STAGE_KEYS.values()]
    result = dg.materialize(assets, selection=stages, partition_key=shard, instance=dagster_instance, resources=resources,
                            raise_on_error=False)
    assert result.success
    stage1, stage2, stage3 = (metadata_of(result, STAGE_KEYS[s]) for s in (1, 2, 3))
    assert (stage1["clips"], stage1["failures"], stage1["stats"]["frames"]) == (3, 0, 30)  # 2 s at 5 fps, every clip
    # the stand-in LLM's answers are noise: each clip's prompt was repaired once, then fell back to consensus
    assert stage2["stats"]["fallbacks"] == stage2["stats"]["clips"] == 3 and stage2["stats"]["llm"] == 0
    assert stage2["failures"] == 0
    assert stage3["stats"]["requests"] > 0 and stage3["stats"]["fallbacks"] == stage3["stats"]["requests"]
    checks = {(c.asset_key.path[-1], c.check_name): c.passed for c in result.get_asset_check_evaluations()}
    assert checks.pop(("stage2_video_captions", "stage2_fallback_rate")) is False  # 100% > the profile's 5%
    assert all(checks.values()), checks

    out = paths.path("annotation")
    frames = pq.read_table(next((out / "shards" / "stage1").glob("shard-*")) / "frames.parquet").to_pylist()
    assert all(f["caption"] == "a globe turns slowly with green land on it." for f in frames)
    assert all(f["phrases"] == ["a globe", "green land"] and len(f["boxes"]) == 2 for f in frames)

    pool = metadata_of(dg.materialize(assets, selection=[POOL.to_user_string()], instance=dagster_instance,
                                      resources=resources), POOL)
    assert (pool["clips"], pool["rejects"]) == (3, 0) and pool["boxes_raw"] > 0
    clips = pq.read_table(out / "clips.parquet").to_pylist()
    assert {c["video_id"] for c in clips} == {Path(name).stem for name in CUTS}
    for clip in clips:
        assert "globe" in clip["caption"] and clip["phrases"]
    boxes = pq.read_table(out / "boxes_raw.parquet").to_pylist()
    sizes = {c["key"]: (c["width"], c["height"]) for c in clips}
    assert all(0 <= b["x1"] < b["x2"] <= sizes[b["key"]][0] and 0 <= b["y1"] < b["y2"] <= sizes[b["key"]][1] for b in boxes)
    creator = json.loads((out / "dataset.json").read_text())["creator"]
    assert creator["config"]["stage1"] == "glamm" and creator["config"]["stage2_options"]["model"] == str(llm_standin)
