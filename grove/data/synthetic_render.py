"""Drawing the synthetic scenes: object sprites, textured backgrounds, compositing with exact visibility, H.264.

Every pixel is drawn by numpy from a seeded generator, so a scene renders to the same frames on any
machine. Compositing keeps an id map (which instance owns each pixel), from which the ground truth
is read: the box of an instance's visible pixels and the share of its full shape that is visible.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
import av
import numpy as np

from grove.data.synthetic_scene import COLOURS, KINDS, SKIN_TONES, Scene
from grove.io import atomic_path

OCCLUDER_ID = 255  # id-map value of the occluder panel; instances are 1 + object_id
MIN_VISIBLE_FRACTION = 0.1  # below this share of its shape visible, an instance counts as hidden (no box)
MIN_VISIBLE_PIXELS = 4

Sprite = tuple[np.ndarray, np.ndarray]  # (rgb uint8 [h, w, 3], mask bool [h, w])


# ---------------------------------------------------------------------------------------------- sprites


def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1]: (x [1, w], y [h, 1])."""
    return (np.arange(width) + 0.5)[None, :] / width, (np.arange(height) + 0.5)[:, None] / height


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0


def _rect(x: np.ndarray, y: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def _paint(layers: list[tuple[np.ndarray, tuple[int, int, int]]], width: int, height: int) -> Sprite:
    """Stack (mask, colour) layers back to front, shaded lighter at the top as if lit from above."""
    rgb = np.zeros((height, width, 3), np.float32)
    mask = np.zeros((height, width), bool)
    for layer, colour in layers:
        layer = np.broadcast_to(layer, (height, width))
        rgb[layer] = colour
        mask |= layer
    shade = 1.12 - 0.24 * (np.arange(height, dtype=np.float32) + 0.5)[:, None, None] / height
    return np.clip(rgb * shade, 0, 255).astype(np.uint8), mask


def _darker(colour: tuple[int, int, int], factor: float = 0.6) -> tuple[int, int, int]:
    return tuple(int(c * factor) for c in colour)  # type: ignore[return-value]


def _lighter(colour: tuple[int, int, int], amount: float = 0.45) -> tuple[int, int, int]:
    return tuple(int(c + (255 - c) * amount) for c in colour)  # type: ignore[return-value]


def draw_sprite(kind: str, colour: tuple[int, int, int], skin: tuple[int, int, int], width: int, height: int) -> Sprite:
    """RGB and mask of one object of `kind` drawn at width x height pixels."""
    x, y = _grid(width, height)
    edge = _darker(colour, 0.55)
    steel = (178, 182, 190)
    if kind == "ball":
        body = _ellipse(x, y, 0.5, 0.5, 0.5, 0.5)
        shine = _ellipse(x, y, 0.35, 0.32, 0.14, 0.12) & body
        return _paint([(body, colour), (shine, _lighter(colour))], width, height)
    if kind == "cup":
        taper = 0.05 * y
        body = _rect(x, y, 0.05 + taper, 0.12, 0.72 - taper, 1.0)
        handle = _ellipse(x, y, 0.74, 0.52, 0.24, 0.24) & ~_ellipse(x, y, 0.74, 0.52, 0.12, 0.12) & (x > 0.68)
        rim = _rect(x, y, 0.05, 0.12, 0.72, 0.22)
        return _paint([(handle, edge), (body, colour), (rim, _lighter(colour, 0.3))], width, height)
    if kind == "box":
        body = _rect(x, y, 0.0, 0.0, 1.0, 1.0)
        border = body & ~_rect(x, y, 0.08, 0.08, 0.92, 0.92)
        tape = _rect(x, y, 0.42, 0.0, 0.58, 1.0)
        return _paint([(body, colour), (tape, _lighter(colour, 0.35)), (border, edge)], width, height)
    if kind == "knife":
        handle = _rect(x, y, 0.0, 0.25, 0.34, 0.85)
        blade = _rect(x, y, 0.34, 0.15, 1.0, 0.75) & (y - 0.15 <= 0.6 * (1.0 - x) / 0.2)
        return _paint([(blade, steel), (handle, colour)], width, height)
    if kind == "bowl":
        body = _ellipse(x, y, 0.5, 0.25, 0.5, 0.75) & (y >= 0.25)
        rim = _ellipse(x, y, 0.5, 0.25, 0.5, 0.14)
        inside = _ellipse(x, y, 0.5, 0.25, 0.42, 0.09)
        return _paint([(body, colour), (rim, colour), (inside, edge)], width, height)
    if kind == "bottle":
        body = _rect(x, y, 0.08, 0.42, 0.92, 1.0) | _ellipse(x, y, 0.5, 0.44, 0.42, 0.12)
        neck = _rect(x, y, 0.34, 0.1, 0.66, 0.44)
        cap = _rect(x, y, 0.32, 0.0, 0.68, 0.12)
        label = _rect(x, y, 0.08, 0.6, 0.92, 0.8)
        return _paint([(body, colour), (neck, colour), (cap, edge), (label, _lighter(colour))], width, height)
    if kind == "plate":
        body = _ellipse(x, y, 0.5, 0.5, 0.5, 0.5)
        well = _ellipse(x, y, 0.5, 0.5, 0.32, 0.3)
        return _paint([(body, colour), (well, _lighter(colour, 0.25))], width, height)
    if kind == "can":
        body = _rect(x, y, 0.06, 0.04, 0.94, 0.96)
        bands = body & ((y < 0.16) | (y > 0.84))
        return _paint([(body, colour), (bands, steel)], width, height)
    if kind == "person":
        head = _ellipse(x, y, 0.5, 0.1, 0.22, 0.1)
        torso = _rect(x, y, 0.18, 0.2, 0.82, 0.62)
        arms = _rect(x, y, 0.0, 0.22, 1.0, 0.34) | (_rect(x, y, 0.0, 0.22, 0.16, 0.58) | _rect(x, y, 0.84, 0.22, 1.0, 0.58))
        legs = _rect(x, y, 0.22, 0.6, 0.46, 1.0) | _rect(x, y, 0.54, 0.6, 0.78, 1.0)
        hands = _rect(x, y, 0.0, 0.55, 0.16, 0.62) | _rect(x, y, 0.84, 0.55, 1.0, 0.62)
        return _paint([(legs, (46, 50, 64)), (arms & ~torso, colour), (torso, colour), (hands, skin), (head, skin)], width, height)
    if kind == "hand":
        palm = _ellipse(x, y, 0.5, 0.72, 0.36, 0.28)
        fingers = np.zeros_like(palm)
        for i in range(4):
            centre = 0.24 + i * 0.17
            fingers = fingers | _rect(x, y, centre - 0.06, 0.06 + 0.04 * abs(i - 1.5), centre + 0.06, 0.7)
        thumb = _ellipse(x, y, 0.12, 0.6, 0.12, 0.2)
        cuff = _rect(x, y, 0.22, 0.9, 0.78, 1.0)
        return _paint([(fingers | thumb, colour), (palm, colour), (cuff, edge)], width, height)
    raise ValueError(f"no drawing for object kind {kind!r}")


class SpriteCache:
    """Sprites of one scene by (instance, drawn size): a growing object needs a sprite per size."""

    def __init__(self, scene: Scene) -> None:
        self._scene = scene
        self._sprites: dict[tuple[int, int, int], Sprite] = {}
        self._areas: dict[tuple[int, int, int], int] = {}

    def get(self, entity_index: int, width: int, height: int) -> Sprite:
        key = (entity_index, width, height)
        if key not in self._sprites:
            entity = self._scene.entities[entity_index]
            self._sprites[key] = draw_sprite(entity.kind, COLOURS[entity.colour], SKIN_TONES[entity.skin], width, height)
            self._areas[key] = int(self._sprites[key][1].sum())
        return self._sprites[key]

    def area(self, entity_index: int, width: int, height: int) -> int:
        """Pixels of the whole shape (after `get` with the same arguments)."""
        return self._areas[(entity_index, width, height)]


# ---------------------------------------------------------------------------------------------- backgrounds


def _smooth_noise(rng: np.random.Generator, width: int, height: int, cells: tuple[int, int], channels: int) -> np.ndarray:
    """Low-frequency noise: a coarse random grid, bilinearly upsampled (float32, about unit variance)."""
    grid = rng.standard_normal((cells[0], cells[1], channels)).astype(np.float32)
    rows = np.linspace(0, cells[0] - 1, height, dtype=np.float32)
    cols = np.linspace(0, cells[1] - 1, width, dtype=np.float32)
    r0 = np.minimum(rows.astype(int), cells[0] - 2)
    c0 = np.minimum(cols.astype(int), cells[1] - 2)
    fr, fc = (rows - r0)[:, None, None], (cols - c0)[None, :, None]
    top = grid[r0][:, c0] * (1 - fc) + grid[r0][:, c0 + 1] * fc
    bottom = grid[r0 + 1][:, c0] * (1 - fc) + grid[r0 + 1][:, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A dull mid-tone, so that the saturated object colours stand out from it."""
    grey = rng.uniform(80, 165)
    tint = rng.uniform(-1, 1, 3) * rng.uniform(8, 30)
    return np.clip(grey + tint, 40, 200).astype(np.float32)


def render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A wall above a table: muted colours, blotches, a pattern (planks, tiles or stripes), clutter, grain."""
    horizon = int(rng.uniform(0.35, 0.65) * height)
    image = np.empty((height, width, 3), np.float32)
    image[:horizon] = _muted_colour(rng)
    image[horizon:] = _muted_colour(rng)
    image += 14 * _smooth_noise(rng, width, height, (4, 6), 3)
    x = np.arange(width)[None, :]
    y = np.arange(height)[:, None]
    for top, bottom in ((0, horizon), (horizon, height)):
        pattern = int(rng.integers(4))
        period = int(rng.integers(6, 16))
        if pattern == 1:
            lines = (x % period == 0) & (y >= top) & (y < bottom)
        elif pattern == 2:
            lines = ((x % period == 0) | (y % period == 0)) & (y >= top) & (y < bottom)
        elif pattern == 3:
            lines = ((y // max(1, period // 2)) % 2 == 0) & (y >= top) & (y < bottom) & (x >= 0)
        else:
            continue
        image[lines] *= rng.uniform(0.75, 0.9)
    image[max(horizon - 1, 0):horizon + 1] *= 0.7
    for _ in range(int(rng.integers(2, 6))):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        rx, ry = rng.uniform(3, 0.12 * width), rng.uniform(2, 0.12 * height)
        blob = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0
        image[blob] = _muted_colour(rng)
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def render_occluder(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A full-height wooden panel: planks with dark seams and shaded edges."""
    base = np.array([rng.uniform(110, 150), rng.uniform(75, 100), rng.uniform(40, 60)], np.float32)
    panel = np.broadcast_to(base, (height, width, 3)).copy()
    panel += 8 * _smooth_noise(rng, width, height, (6, 2), 1)
    x = np.arange(width)
    panel[:, x % 7 == 0] *= 0.7
    panel[:, :1] *= 0.55
    panel[:, -1:] *= 0.55
    return np.clip(panel, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- compositing


@dataclass
class FrameLayout:
    """Who owns each pixel of a frame (0: background, OCCLUDER_ID, else 1 + object_id), where each
    instance was drawn (its clipped destination slices), and each instance's full shape area."""

    ids: np.ndarray
    regions: dict[int, tuple[slice, slice]]
    areas: dict[int, int]


@dataclass
class FrameVisibility:
    """Visible part of each instance in one frame: boxes are [x1, y1, x2, y2) in pixels."""

    object_ids: list[int]
    boxes: list[tuple[int, int, int, int]]
    fractions: list[float]


def _placement(center_x: float, center_y: float, width: int, height: int, frame_w: int, frame_h: int):
    """Destination and source slices of a width x height sprite centred at (x, y), clipped to the frame; None if off-frame."""
    left, top = int(round(center_x - width / 2)), int(round(center_y - height / 2))
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + width, frame_w), min(top + height, frame_h)
    if x0 >= x1 or y0 >= y1:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))


class Compositor:
    """Draws the frames of one scene and reads exact visibility off its id map."""

    def __init__(self, scene: Scene, background: np.ndarray, occluder_rgb: np.ndarray | None, grain: np.ndarray) -> None:
        self.scene = scene
        self.background = background
        self.occluder_rgb = occluder_rgb
        self.grain = grain  # [k, h, w, 3] int16 sensor noise, cycled over frames
        self.sprites = SpriteCache(scene)
        self.height, self.width = background.shape[:2]
        self._order = sorted(scene.instances, key=lambda inst: (inst.z, inst.object_id))

    def _size(self, instance, frame: int) -> tuple[int, int]:
        scale = float(instance.scale[frame])
        return max(2, int(round(instance.width * scale))), max(2, int(round(instance.height * scale)))

    def draw(self, frame: int, with_ids: bool) -> tuple[np.ndarray, FrameLayout | None]:
        """Frame pixels and, when asked, its layout (id map, and where each instance was drawn)."""
        image = self.background.copy()
        layout = FrameLayout(np.zeros((self.height, self.width), np.uint8), {}, {}) if with_ids else None
        for instance in self._order:
            width, height = self._size(instance, frame)
            rgb, mask = self.sprites.get(instance.entity, width, height)
            placed = _placement(float(instance.x[frame]), float(instance.y[frame]), width, height, self.width, self.height)
            if layout is not None:
                layout.areas[instance.object_id] = self.sprites.area(instance.entity, width, height)
            if placed is None:
                continue
            dst, src = placed
            visible = mask[src]
            np.copyto(image[dst], rgb[src], where=visible[..., None])
            if layout is not None:
                layout.ids[dst][visible] = instance.object_id + 1
                layout.regions[instance.object_id] = dst
        if self.scene.occluder is not None and self.occluder_rgb is not None:
            x0, x1 = self.scene.occluder
            image[:, x0:x1] = self.occluder_rgb
            if layout is not None:
                layout.ids[:, x0:x1] = OCCLUDER_ID
        noisy = image.astype(np.int16) + self.grain[frame % len(self.grain)]
        return np.clip(noisy, 0, 255).astype(np.uint8), layout

    def visibility(self, layout: FrameLayout) -> FrameVisibility:
        """Instances with enough of their shape in view, in object-id order, with their visible-part boxes."""
        counts = np.bincount(layout.ids.ravel(), minlength=256)
        result = FrameVisibility([], [], [])
        for object_id in sorted(layout.regions):
            count, area = int(counts[object_id + 1]), layout.areas[object_id]
            if count < MIN_VISIBLE_PIXELS or count / area < MIN_VISIBLE_FRACTION:
                continue
            rows_slice, cols_slice = layout.regions[object_id]
            own = layout.ids[rows_slice, cols_slice] == object_id + 1
            rows, cols = np.flatnonzero(own.any(axis=1)), np.flatnonzero(own.any(axis=0))
            result.object_ids.append(object_id)
            result.boxes.append((cols_slice.start + int(cols[0]), rows_slice.start + int(rows[0]),
                                 cols_slice.start + int(cols[-1]) + 1, rows_slice.start + int(rows[-1]) + 1))
            result.fractions.append(count / area)
        return result


def make_compositor(scene: Scene, rng: np.random.Generator, width: int, height: int, grain_frames: int = 4) -> Compositor:
    background = render_background(rng, width, height)
    occluder = None
    if scene.occluder is not None:
        occluder = render_occluder(rng, scene.occluder[1] - scene.occluder[0], height)
    grain = rng.integers(-2, 3, (grain_frames, height, width, 3)).astype(np.int16)
    return Compositor(scene, background, occluder, grain)


# ---------------------------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class EncoderSettings:
    codec: str = "libx264"
    preset: str = "veryfast"
    crf: int = 20
    gop_seconds: float = 2.0  # a keyframe every 2 s keeps seeking in training loaders cheap
    # x264's macroblock-tree rate control made ~1 encode in 20 differ from the others on the same
    # frames (measured with PyAV 18 / libx264 here); without it the output is bit-exact every time.
    x264_params: str = "mbtree=0"


def encode_mp4(
    frames: np.ndarray, path: str | os.PathLike[str], fps: float, settings: EncoderSettings, comment: str = ""
) -> Path:
    """Encode [n, h, w, 3] uint8 RGB frames to an H.264 yuv420p MP4, atomically.

    One encoder thread (processes, not threads, give the parallelism) and no macroblock tree keep
    x264 bit-exact from run to run. `comment` goes into the container metadata.
    """
    path = Path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            if comment:
                container.metadata["comment"] = comment
            options = {"preset": settings.preset, "crf": str(settings.crf), "threads": "1",
                       "g": str(max(1, round(settings.gop_seconds * fps)))}
            if settings.x264_params and settings.codec == "libx264":
                options["x264-params"] = settings.x264_params
            stream = container.add_stream(settings.codec, rate=rate, options=options)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.thread_count = 1
            for pixels in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def read_mp4_comment(path: str | os.PathLike[str]) -> str | None:
    """The `comment` metadata of an MP4, or None when the file is missing or unreadable."""
    try:
        with av.open(str(path)) as container:
            return container.metadata.get("comment")
    except (av.FFmpegError, OSError):
        return None

