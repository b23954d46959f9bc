"""Pictures of a grounded caption: each phrase gets a colour, each kept box is drawn with its phrase.

`render_grid` writes a PNG of frames in a grid with the caption underneath; `render_video` an MP4
at the inference frame rate. Both take the frames and the per-frame boxes and labels exactly as
`grove.infer` predicts them (pixel xyxy, one phrase per box).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from grove.io import atomic_path

# Tableau-10: distinct at a glance, readable on video
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]

Box = Sequence[float]


def phrase_colours(phrases: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    return {phrase: PALETTE[i % len(PALETTE)] for i, phrase in enumerate(dict.fromkeys(phrases))}


def draw_boxes(
    frame: np.ndarray, boxes: Sequence[Box], labels: Sequence[str], colours: dict[str, tuple[int, int, int]]
) -> np.ndarray:
    """A copy of `frame` (H, W, 3 uint8) with each box outlined and its phrase written above it."""
    image = Image.fromarray(np.ascontiguousarray(frame))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    width = max(1, round(min(image.size) / 120))
    for box, label in zip(boxes, labels):
        colour = colours.get(label, PALETTE[-1])
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=width)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        text_y = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1 + width
        draw.rectangle([x1, text_y, x1 + right - left + 2, text_y + bottom - top + 2], fill=colour)
        draw.text((x1 + 1, text_y - top + 1), label, fill=(255, 255, 255), font=font)
    return np.asarray(image)


def annotated_frames(
    frames: np.ndarray, frame_boxes: Sequence[Sequence[Box]], frame_labels: Sequence[Sequence[str]], phrases: Sequence[str]
) -> list[np.ndarray]:
    if len(frames) != len(frame_boxes) or len(frames) != len(frame_labels):
        raise ValueError(f"{len(frames)} frames but {len(frame_boxes)} box lists and {len(frame_labels)} label lists")
    colours = phrase_colours(list(phrases) + [label for labels in frame_labels for label in labels])
    return [draw_boxes(f, b, l, colours) for f, b, l in zip(frames, frame_boxes, frame_labels)]


def _caption_strip(text: str, width: int, font: ImageFont.ImageFont) -> Image.Image:
    """The caption wrapped to `width` pixels, black on white."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width - 8:
            lines.append(line)
            line = word
        else:
            line = candidate
    lines.append(line)
    line_height = 14
    strip = Image.new("RGB", (width, line_height * len(lines) + 8), (255, 255, 255))
    writer = ImageDraw.Draw(strip)
    for i, text_line in enumerate(lines):
        writer.text((4, 4 + i * line_height), text_line, fill=(0, 0, 0), font=font)
    return strip


def render_grid(
    frames: np.ndarray,
    frame_boxes: Sequence[Sequence[Box]],
    frame_labels: Sequence[Sequence[str]],
    phrases: Sequence[str],
    path: str | Path,
    caption: str = "",
    max_frames: int = 8,
    columns: int = 4,
) -> Path:
    """A PNG: up to `max_frames` evenly spaced annotated frames in a grid, the caption below."""
    drawn = annotated_frames(frames, frame_boxes, frame_labels, phrases)
    if not drawn:
        raise ValueError("no frames to draw")
    picks = np.linspace(0, len(drawn) - 1, min(max_frames, len(drawn))).round().astype(int)
    tiles = [Image.fromarray(drawn[i]) for i in picks]
    tile_w, tile_h = tiles[0].size
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    strip = _caption_strip(caption, tile_w * columns, ImageFont.load_default()) if caption else None
    canvas = Image.new("RGB", (tile_w * columns, tile_h * rows + (strip.height if strip else 0)), (255, 255, 255))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, ((i % columns) * tile_w, (i // columns) * tile_h))
    if strip is not None:
        canvas.paste(strip, (0, tile_h * rows))
    path = Path(path)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def render_video(
    frames: np.ndarray,
    frame_boxes: Sequence[Sequence[Box]],
    frame_labels: Sequence[Sequence[str]],
    phrases: Sequence[str],
    path: str | Path,
    fps: float = 5.0,
    caption: str = "",
) -> Path:
    """An MP4 (H.264 where the FFmpeg build has it, MPEG-4 part 2 otherwise) of the annotated frames."""
    import av
    from fractions import Fraction

    drawn = annotated_frames(frames, frame_boxes, frame_labels, phrases)
    if not drawn:
        raise ValueError("no frames to write")
    if caption:
        strip = np.asarray(_caption_strip(caption, drawn[0].shape[1], ImageFont.load_default()))
        drawn = [np.concatenate([frame, strip], axis=0) for frame in drawn]
    # yuv420p needs even sides
    height, width = (s - s % 2 for s in drawn[0].shape[:2])
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for frame in drawn:
                video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame[:height, :width]), format="rgb24")
                for packet in stream.encode(video_frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path
