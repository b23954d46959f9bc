"""Fixtures for the annotator: a hand-made synthetic-like dataset (frame records, truth, tiny videos),
the catalog that `grove data ingest` would write for it, and tiny random-weight language models.
Everything is generated here; nothing is downloaded."""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pytest

from grove.data.boxes import merge_same_phrase_boxes
from grove.data.dataset import write_manifest
from grove.data.schema import box_table, clip_table, write_boxes, write_clips, write_table

WIDTH, HEIGHT, FPS, SECONDS = 64, 48, 10.0, 2.0
GRID = int(SECONDS * FPS) // 2  # 5 fps grid frames per clip

FRAME_OBJECT_SCHEMA = pa.schema(
    [("key", pa.string()), ("frame_index", pa.int32()), ("frame_id", pa.int64()), ("object_id", pa.int32()),
     ("entity_index", pa.int32()), ("kind", pa.string()), ("colour", pa.string()), ("size", pa.string()),
     ("description", pa.string()), ("is_human", pa.bool_()), ("x1", pa.float64()), ("y1", pa.float64()),
     ("x2", pa.float64()), ("y2", pa.float64()), ("visible_fraction", pa.float64()), ("in_caption", pa.bool_()),
     ("phrase_index", pa.int32()), ("action", pa.string()), ("target_object_id", pa.int32())]
)

# (kind, colour, size, is_human, action, in_caption): the objects of each scene pattern
SCENES = [
    [("cup", "red", "small", False, "moves to the left", True), ("box", "blue", "large", False, "stays still", False)],
    [("hand", "green", "large", True, "pushes a small yellow ball to the right", True),
     ("ball", "yellow", "small", False, "moves to the right", True)],
    [("bottle", "purple", "large", False, "moves up", True), ("can", "orange", "small", False, "moves down", True),
     ("plate", "white", "small", False, "stays still", False)],
]


def description(kind: str, colour: str, size: str, is_human: bool) -> str:
    if is_human:
        return f"a {kind} in a {colour} {'glove' if kind == 'hand' else 'shirt'}"
    return f"{'an' if size[0] in 'aeiou' else 'a'} {size} {colour} {kind}"


def write_video(path: Path, num_frames: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(int(FPS), 1))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for _ in range(num_frames):
            image = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@dataclass
class SyntheticFixture:
    gt: Path  # dataset folder with the truth (raw/processed boxes, captions, frame_objects.parquet)
    catalog: Path  # what `grove data ingest` writes: clips.parquet (no captions) and catalog.json
    keys: list[str]


def make_synthetic(root: Path, num_clips: int, corrupt: tuple[int, ...] = ()) -> SyntheticFixture:
    """`num_clips` clips cycling through SCENES; objects slide linearly; clips listed in `corrupt`
    get a video file of random bytes."""
    gt_root, catalog = root / "gt", root / "catalog"
    clips, gt_clips, boxes, objects = [], [], [], []
    num_native = int(SECONDS * FPS)
    for c in range(num_clips):
        key, video = f"vid{c:04d}_0", gt_root / "videos" / f"vid{c:04d}.mp4"
        if c in corrupt:
            video.parent.mkdir(parents=True, exist_ok=True)
            video.write_bytes(np.random.default_rng(c).bytes(2048))
        else:
            write_video(video, num_native, c)
        scene = SCENES[c % len(SCENES)]
        phrases = [description(k, col, s, h) for k, col, s, h, _, cap in scene if cap]
        caption_parts = [f"<p>{description(k, col, s, h)}</p> {a}" for k, col, s, h, a, cap in scene if cap]
        tagged = " and ".join(caption_parts) + "."
        row = {"key": key, "dataset": "synthetic", "split": "pool" if c % 4 else "val", "video_id": f"vid{c:04d}",
               "clip_id": "0", "video_path": f"videos/{video.name}", "fps": FPS, "clip_start_frame": 0,
               "clip_end_frame": num_native - 1, "num_frames": GRID, "width": WIDTH, "height": HEIGHT,
               "caption": tagged.replace("<p>", "").replace("</p>", ""), "tagged_caption": tagged,
               "phrases": phrases, "extra": "{}"}
        gt_clips.append(row)
        clips.append(row | {"video_path": str(video), "caption": "", "tagged_caption": "", "phrases": []})
        for o, (kind, colour, size, human, action, in_caption) in enumerate(scene):
            w, h = (20.0, 30.0) if human else (14.0, 12.0)
            for t in range(GRID):
                x1 = 4.0 + 2.0 * t + 10 * o if "right" in action or o == 0 else 40.0 - 2.0 * t
                y1 = 4.0 + 8.0 * o
                box = {"x1": x1, "y1": y1, "x2": x1 + w, "y2": y1 + h}
                phrase_index = phrases.index(description(kind, colour, size, human)) if in_caption else -1
                objects.append({"key": key, "frame_index": t, "frame_id": 2 * t, "object_id": o, "entity_index": o,
                                "kind": kind, "colour": colour, "size": size,
                                "description": description(kind, colour, size, human), "is_human": human,
                                "visible_fraction": 1.0, "in_caption": in_caption, "phrase_index": phrase_index,
                                "action": action, "target_object_id": -1, **box})
                if in_caption:
                    boxes.append({"key": key, "frame_index": t, "frame_id": 2 * t, "box_index": 0,
                                  "phrase_index": phrase_index, "phrase": phrases[phrase_index], **box})
    raw = box_table(boxes)
    raw = _renumber(raw)
    write_clips(clip_table(gt_clips), gt_root / "clips.parquet")
    write_boxes(raw, gt_root / "boxes_raw.parquet")
    write_boxes(merge_same_phrase_boxes(raw), gt_root / "boxes_processed.parquet")
    write_table(pa.Table.from_pylist(objects, schema=FRAME_OBJECT_SCHEMA), gt_root / "frame_objects.parquet")
    write_manifest(gt_root, {"name": "fixture", "kind": "synthetic", "splits": {}})
    write_clips(clip_table(clips), catalog / "clips.parquet")
    (catalog / "catalog.json").write_text(json.dumps({"frame_objects": str(gt_root / "frame_objects.parquet")}))
    return SyntheticFixture(gt_root, catalog, [c["key"] for c in clips])


def _renumber(raw: pa.Table) -> pa.Table:
    rows = sorted(raw.to_pylist(), key=lambda r: (r["key"], r["frame_index"], r["phrase_index"]))
    previous, counter = None, 0
    for row in rows:
        counter = counter + 1 if (row["key"], row["frame_index"]) == previous else 0
        previous = (row["key"], row["frame_index"])
        row["box_index"] = counter
    return box_table(rows)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticFixture:
    """Twelve clips, one of them with a corrupt video. Read-only: tests annotate into their own folders."""
    return make_synthetic(tmp_path_factory.mktemp("synthetic"), 12, corrupt=(5,))


def make_tiny_causal_lm(path: Path) -> Path:
    """A 1-layer random LlamaForCausalLM with a byte-level tokenizer (no merges), saved to `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    vocab = {token: i for i, token in enumerate(["<s>", "</s>", "<pad>"])}
    for char in bytes_to_unicode().values():
        vocab.setdefault(char, len(vocab))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192,
                         bos_token_id=0, eos_token_id=1, pad_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny-llama"))
