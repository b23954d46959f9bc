"""Stage-1 backend `glamm` (annotation/glamm.py), and the Done-when of issue 12: GLaMM stage 1 on an imported
GLaMM-layout checkpoint (reduced width) produces frame captions whose phrases have boxes, end to end through
`grove annotate`.

The stand-in GLaMM is honest about what it is. It starts as the tiny GLaMM-layout checkpoint of
tests/model/test_glamm.py (the official module fixtures' weights in GLaMM's released layout), imported with
the project's importer, then fine-tuned here (`train_gcg`: 60 steps of teacher-forced cross-entropy on GCG
answers, then 150 steps of GLaMM's mask loss on the [SEG] masks) on the 5 fps grid frames of the clips it
will annotate, with GCG answers made from those frames' synthetic records ("<p> a small red cup </p> [SEG]
moves to the left and <p> a large blue box </p> [SEG] stays still."), and written back in GLaMM's layout
(`export_glamm_layout`). The backend is then given that GLaMM-layout folder and imports it itself. Nothing
is mocked or hard-coded on the way: the backend decodes the videos and runs GCG decoding and SAM's decoder;
captions, phrases and boxes are what the fine-tuned model writes and segments. (The clips' videos are
redrawn to show their objects as coloured rectangles; the stand-in's masks cover the objects without
telling them apart well.) One test replaces the model call by a failing one, to check that a model error
fails only its clip.
"""

from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import av

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from annotation.glamm import GlammCaptioner, resolve_glamm_checkpoint
from annotation.records import ClipFailure, ClipFrames
from annotation.shards import load_catalog
from annotation.stage1 import Stage1Context, clip_requests, load_captioner
from grove.data.schema import clip_table, write_clips
from grove.data.video import DecodeError, open_video
from tests.annotation.conftest import FPS, HEIGHT, SECONDS, WIDTH
from tests.model.test_glamm import export_glamm_layout, import_tiny_glamm, load_gcg, train_gcg, write_tiny_glamm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KEYS = ("vid0000_0", "vid0003_0", "vid0005_0")  # two clips of the cup-and-box scene, and the corrupt video
PHRASES = {"a small red cup", "a large blue box"}
OPTIONS = {"decoder_heads": 2, "max_new_tokens": 40, "batch_size": 4, "device": "cpu"}


COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220)}


def draw_video(path: Path, records: list[dict], num_frames: int, seed: int) -> None:
    """The clip's objects as filled rectangles on a grey, noisy background (the fixture's own videos are
    pure noise), each native frame showing the boxes of its grid frame (or the one before it)."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(int(FPS), 1))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for native in range(num_frames):
            image = rng.integers(100, 140, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            grid_id = max(r["frame_id"] for r in records if r["frame_id"] <= native)
            for r in (r for r in records if r["frame_id"] == grid_id):
                image[int(r["y1"]):int(r["y2"]), int(r["x1"]):int(r["x2"])] = COLOURS.get(r["colour"], (200, 200, 200))
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture(scope="module")
def catalog(synthetic, tmp_path_factory) -> Path:
    """The synthetic catalog cut to KEYS, its readable clips' videos redrawn to show their objects."""
    folder = tmp_path_factory.mktemp("catalog")
    clips = pq.read_table(synthetic.catalog / "clips.parquet")
    clips = clips.filter(pc.is_in(clips["key"], value_set=pa.array(KEYS))).to_pylist()
    records = pq.read_table(synthetic.gt / "frame_objects.parquet").to_pylist()
    for seed, clip in enumerate(clips):
        if clip["key"] == "vid0005_0":
            continue  # the corrupt video stays corrupt
        clip["video_path"] = str(folder / f"{clip['video_id']}.mp4")
        draw_video(Path(clip["video_path"]), [r for r in records if r["key"] == clip["key"]], int(SECONDS * FPS), seed)
    write_clips(clip_table(clips), folder / "clips.parquet")
    shutil.copy(synthetic.catalog / "catalog.json", folder / "catalog.json")
    return folder


def gcg_training_set(catalog: Path) -> tuple[list[np.ndarray], list[str], list[list[tuple[float, ...]]]]:
    """The grid frames of the catalog's readable clips, and GCG answers and boxes from their frame records."""
    loaded = load_catalog(catalog)
    records = pq.read_table(loaded.frame_objects).to_pylist()
    frames, answers, boxes = [], [], []
    for request in clip_requests(loaded.clips, loaded.video_root):
        try:
            with open_video(request.video_file) as reader:
                decoded = reader.get_frames(list(request.frame_ids))
        except (DecodeError, OSError):
            continue
        for frame, frame_id in zip(decoded, request.frame_ids):
            objects = sorted((r for r in records if r["key"] == request.key and r["frame_id"] == frame_id),
                             key=lambda r: r["object_id"])
            frames.append(frame)
            answers.append(" and ".join(f"<p> {o['description']} </p> [SEG] {o['action']}" for o in objects) + ".")
            boxes.append([(o["x1"], o["y1"], o["x2"], o["y2"]) for o in objects])
    return frames, answers, boxes


@pytest.fixture(scope="module")
def glamm_checkpoint(catalog, tmp_path_factory) -> Path:
    """The stand-in GLaMM, fine-tuned on the catalog's GCG answers, in GLaMM's released layout (module docstring)."""
    root = tmp_path_factory.mktemp("glamm")
    raw = write_tiny_glamm(root / "GLaMM-tiny")
    imported = import_tiny_glamm(raw, root / "imported")
    gcg = load_gcg(imported)
    frames, answers, boxes = gcg_training_set(catalog)
    assert len(frames) == 20 and set(answers) == {
        "<p> a small red cup </p> [SEG] moves to the left and <p> a large blue box </p> [SEG] stays still."}
    text_losses, mask_losses = train_gcg(gcg, frames, answers, boxes)
    assert text_losses[-1] < 0.05 * text_losses[0] and mask_losses[-1] < mask_losses[0]
    return export_glamm_layout(gcg, imported, raw, root / "GLaMM-tiny-gcg")


def _requests(catalog: Path):
    loaded = load_catalog(catalog)
    return Stage1Context(loaded.root, loaded.frame_objects, "pyav"), clip_requests(loaded.clips, loaded.video_root)


def test_glamm_captions_every_grid_frame_and_fails_only_the_corrupt_clip(catalog, glamm_checkpoint, tmp_path):
    context, requests = _requests(catalog)
    captioner = load_captioner("glamm", context, {"model": str(glamm_checkpoint), "cache_dir": str(tmp_path), **OPTIONS})
    results = captioner.caption_clips(requests)
    assert [type(r) for r in results] == [ClipFrames, ClipFrames, ClipFailure]
    assert "vid0005.mp4" in results[2].reason
    for clip in results[:2]:
        assert [f.frame_id for f in clip.frames] == list(range(0, 20, 2))  # every 5 fps frame of a 10 fps video
        for frame in clip.frames:
            assert frame.caption == "a small red cup moves to the left and a large blue box stays still."
            assert frame.phrases == ["a small red cup", "a large blue box"] and len(frame.boxes) == 2
            assert all(0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 48 for x1, y1, x2, y2 in frame.boxes)
    # the released-layout folder was imported once into the cache, with SAM at its own 64 px
    imported = resolve_glamm_checkpoint(glamm_checkpoint, cache_dir=tmp_path, decoder_heads=2)
    assert [p for p in tmp_path.iterdir() if not p.name.startswith(".")] == [imported]
    assert json.loads((imported / "config.json").read_text())["grounding_image_size"] == 64
    described = captioner.describe()
    assert described["backend"] == "glamm" and described["checkpoint"] == str(imported)
    assert described["provenance"]["format"] == "glamm" and described["provenance"]["source"] == str(glamm_checkpoint.resolve())
    assert all(len(f["sha256"]) == 64 for f in described["provenance"]["source_files"])
    assert "interleaved     segmentation masks" in described["prompt"] and described["dtype"] == "float32"


def test_a_model_error_fails_only_the_clips_of_the_failing_frames(catalog, glamm_checkpoint, tmp_path, monkeypatch):
    context, requests = _requests(catalog)
    captioner = GlammCaptioner(context, model=str(glamm_checkpoint), cache_dir=str(tmp_path), **OPTIONS)
    gcg = captioner._load()
    with open_video(requests[0].video_file) as reader:
        bad = reader.get_frames([requests[0].frame_ids[3]])[0]
    real_call = type(gcg).__call__

    def failing(self, frames, **kwargs):  # a model error on one frame of the first clip
        if any(np.array_equal(frame, bad) for frame in frames):
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_call(self, frames, **kwargs)

    monkeypatch.setattr(type(gcg), "__call__", failing)
    results = captioner.caption_clips(requests)
    assert isinstance(results[0], ClipFailure) and "1 of 10 frames" in results[0].reason and "out of memory" in results[0].reason
    assert isinstance(results[1], ClipFrames) and len(results[1].frames) == 10
    assert isinstance(results[2], ClipFailure)


def test_done_when_grove_annotate_with_glamm_stage1_gives_frame_captions_whose_phrases_have_boxes(catalog, glamm_checkpoint, tmp_path):
    from orchestration.cli import app

    out = tmp_path / "auto"
    options = [f"model={glamm_checkpoint}", f"cache_dir={tmp_path / 'cache'}"] + [f"{k}={v}" for k, v in OPTIONS.items()]
    result = CliRunner().invoke(app, ["annotate", "--catalog", str(catalog), "--out", str(out), "--stage1", "glamm",
                                      *[arg for o in options for arg in ("--stage1-option", o)], "--shard-size", "10"])
    assert result.exit_code == 0, result.output
    assert "annotated 2 clips (1 rejected)" in result.output
    frames = pq.read_table(next((out / "shards" / "stage1").glob("shard-*")) / "frames.parquet").to_pylist()
    assert len(frames) == 20 and {f["key"] for f in frames} == {"vid0000_0", "vid0003_0"}
    for frame in frames:
        assert frame["caption"] and "<" not in frame["caption"] and "[SEG]" not in frame["caption"]
        assert frame["phrases"] and set(frame["phrases"]) <= PHRASES and len(frame["boxes"]) == len(frame["phrases"])
        assert all(0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 48 for x1, y1, x2, y2 in frame["boxes"])
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["creator"]["config"]["stage1"] == "glamm"
    boxes = pq.read_table(out / "boxes_raw.parquet")
    assert boxes.num_rows > 0 and set(boxes["key"].to_pylist()) <= {"vid0000_0", "vid0003_0"}
