"""A small grounded-video dataset folder, made here with PyAV (not with the synthetic generator).

Each clip shows one or two coloured squares moving over a grey background; the caption names them;
the boxes are exact. A square can be hidden for part of the clip, so presence labels vary.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from grove.data.boxes import merge_same_phrase_boxes
from grove.data.dataset import write_manifest
from grove.data.frames import annotated_frame_ids
from grove.data.schema import box_table, clip_table, write_boxes, write_clips

COLOURS = {"red": (220, 40, 40), "blue": (40, 60, 220), "green": (40, 200, 60), "yellow": (230, 220, 40)}


def write_video(path: Path, frames: np.ndarray, fps: float, codec: str = "mpeg4") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "mpeg4":
            stream.options = {"qscale": "2"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def square_track(rng: np.random.Generator, num_frames: int, width: int, height: int, size: int) -> np.ndarray:
    """(num_frames, 4) xyxy of a square moving in a straight line inside the frame."""
    start = np.array([rng.uniform(0, width - size), rng.uniform(0, height - size)])
    end = np.array([rng.uniform(0, width - size), rng.uniform(0, height - size)])
    t = np.linspace(0, 1, num_frames)[:, None]
    corner = np.round(start + t * (end - start))
    return np.concatenate([corner, corner + size], axis=1)


def render_clip(tracks: list[np.ndarray], visible: list[np.ndarray], colours: list[str], width: int, height: int) -> np.ndarray:
    frames = np.full((len(tracks[0]), height, width, 3), 128, np.uint8)
    for track, shown, colour in zip(tracks, visible, colours):
        for f, (x1, y1, x2, y2) in enumerate(track.astype(int)):
            if shown[f]:
                frames[f, y1:y2, x1:x2] = COLOURS[colour]
    return frames


def make_dataset(
    root: Path,
    splits: dict[str, int],
    seed: int = 0,
    width: int = 64,
    height: int = 48,
    fps: float = 10.0,
    seconds: float = 4.0,
    colours: list[str] | None = None,
) -> Path:
    """Write a dataset folder (clips.parquet, boxes_raw/processed.parquet, videos/, dataset.json).
    `colours` fixes the squares of every clip (so every caption is the same); default: 1-2 at random."""
    rng = np.random.default_rng(seed)
    num_frames = int(round(fps * seconds))
    clips, boxes = [], []
    names = list(COLOURS)
    for split, count in splits.items():
        for c in range(count):
            video_id = f"{split}{c:03d}"
            picked = list(colours) if colours else [str(x) for x in rng.choice(names, size=int(rng.integers(1, 3)), replace=False)]
            size = int(min(width, height) // 3)
            tracks = [square_track(rng, num_frames, width, height, size) for _ in picked]
            visible = [np.ones(num_frames, bool) for _ in picked]
            if rng.random() < 0.5:  # the first square hides for a while
                hide = int(rng.integers(0, num_frames // 2))
                visible[0][hide : hide + num_frames // 3] = False
            frames = render_clip(tracks, visible, picked, width, height)
            video_path = f"videos/{video_id}.mp4"
            write_video(root / video_path, frames, fps)
            phrases = [f"the {colour} square" for colour in picked]
            tagged = " and ".join(f"<p>{p}</p>" for p in phrases) + " move across the screen"
            grid = annotated_frame_ids(fps, 0, num_frames - 1)
            key = f"{video_id}_0"
            for t, frame_id in enumerate(grid):
                index = 0
                for j, (track, shown) in enumerate(zip(tracks, visible)):
                    if shown[frame_id]:
                        x1, y1, x2, y2 = (float(v) for v in track[frame_id])
                        boxes.append(dict(key=key, frame_index=t, frame_id=frame_id, box_index=index, phrase_index=j,
                                          phrase=phrases[j], x1=x1, y1=y1, x2=x2, y2=y2))
                        index += 1
            clips.append(dict(
                key=key, dataset="fixture", split=split, video_id=video_id, clip_id="0", video_path=video_path,
                fps=fps, clip_start_frame=0, clip_end_frame=num_frames - 1, num_frames=len(grid), width=width,
                height=height, caption=tagged.replace("<p>", "").replace("</p>", ""), tagged_caption=tagged,
                phrases=phrases, extra={},
            ))
    raw = box_table(boxes)
    write_clips(clip_table(clips), root / "clips.parquet")
    write_boxes(raw, root / "boxes_raw.parquet")
    write_boxes(merge_same_phrase_boxes(raw), root / "boxes_processed.parquet")
    write_manifest(root, {"name": "fixture", "kind": "test", "splits": splits})
    return root
