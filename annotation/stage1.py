"""Stage 1: frame-level grounded captioning. Frames in; per frame a caption, its phrases and their boxes out.

The paper runs GLaMM on every 5 fps frame and turns its masks into boxes (grove_spec.md section 5).
Every backend implements one small interface, `FrameCaptioner`:

    class MyCaptioner:
        def __init__(self, context: Stage1Context, **options): ...
        def describe(self) -> dict: ...                   # everything that changes the output (versioning)
        def caption_clips(self, clips: Sequence[ClipRequest]) -> list[ClipFrames | ClipFailure]: ...

`caption_clips` gets a batch of clips (a shard's worth) and returns one result per clip, in order: the
clip's frames, or a `ClipFailure` with a reason (unreadable video, model error); it never raises for
one bad clip. Built-in backends are `simulated` (below), `florence2` (annotation/florence2.py, the
example to follow for a real model) and `glamm` (annotation/glamm.py: the paper's GLaMM, its grounded
conversation generation run by this project's modules on an imported GLaMM checkpoint,
`--stage1 glamm --stage1-option model=/weights/GLaMM-GranD-Pretrained`). Any other backend is named by
import path, `package.module:Class`, e.g. `--stage1 my_captioner.module:MyCaptioner`.

The model weights of the built-in model backends may also come from the environment, which wins over
the `model` option: `$GROVE_ANNOTATION_GLAMM` for glamm, `$GROVE_ANNOTATION_FLORENCE2` for florence2
(a local folder or hub id; `resolve_stage1_options`), as `$GROVE_ANNOTATION_LLM` does for stages 2 and 3.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from annotation.engines import model_from_environment
from annotation.records import Box, ClipFailure, ClipFrames, ClipRequest, FrameAnnotation

logger = logging.getLogger(__name__)

BUILTIN_CAPTIONERS = {
    "simulated": "annotation.stage1:SimulatedCaptioner",
    "florence2": "annotation.florence2:Florence2Captioner",
    "glamm": "annotation.glamm:GlammCaptioner",
}


# the environment variable that names a built-in backend's weights; it wins over the `model` option
MODEL_ENV = {"glamm": "GROVE_ANNOTATION_GLAMM", "florence2": "GROVE_ANNOTATION_FLORENCE2"}


def resolve_stage1_options(name: str, options: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The options a backend is built with: its `MODEL_ENV` variable, where set, over the `model` option.

    Whatever hashes stage 1's configuration hashes this result, so that weights named by the
    environment change the annotator version too.
    """
    variable = MODEL_ENV.get(name)
    return model_from_environment(options or {}, variable, environ) if variable else dict(options or {})


@dataclass(frozen=True)
class Stage1Context:
    """What a backend may need besides its options: the catalog and the synthetic per-frame records."""

    catalog_dir: Path
    frame_objects: Path | None = None
    video_backend: str = "pyav"


@runtime_checkable
class FrameCaptioner(Protocol):
    def describe(self) -> dict[str, Any]: ...

    def caption_clips(self, clips: Sequence[ClipRequest]) -> list[ClipFrames | ClipFailure]: ...


def load_captioner(name: str, context: Stage1Context, options: dict[str, Any] | None = None) -> FrameCaptioner:
    """A built-in backend by name, or any class by import path `package.module:Class`."""
    target = BUILTIN_CAPTIONERS.get(name, name)
    module_name, _, attr = target.partition(":")
    if not attr:
        raise ValueError(
            f"unknown stage-1 backend {name!r}: use one of {sorted(BUILTIN_CAPTIONERS)} or 'package.module:Class'"
        )
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"stage-1 backend {name!r}: cannot import {target}: {exc}") from exc
    options = resolve_stage1_options(name, options)
    if name == "glamm" and not options.get("model"):
        raise ValueError(f"stage-1 backend glamm needs GLaMM weights: set ${MODEL_ENV['glamm']} or the option "
                         "model=DIR (a GLaMM checkpoint as released, or imported with `grove weights import --from glamm`)")
    captioner = cls(context=context, **options)
    if not isinstance(captioner, FrameCaptioner):
        raise TypeError(f"stage-1 backend {target} lacks describe() / caption_clips()")
    return captioner


# ----------------------------------------------------------------------------------------------
# The simulated captioner: the synthetic dataset's truth, seen through an imperfect image captioner.


@dataclass(frozen=True)
class CaptionerNoise:
    """How far the simulated captioner strays from the truth; every rate is a probability."""

    synonym_rate: float = 0.25  # a frame names an object by a synonym (cup -> mug -> glass)
    attribute_drop_rate: float = 0.15  # a frame drops the size or the colour word of a phrase
    paraphrase: bool = True  # vary the sentence template between frames
    box_jitter: float = 0.08  # std of each box side's offset, as a fraction of the box width/height
    miss_rate: float = 0.1  # a visible object is not reported in a frame
    hallucination_rate: float = 0.1  # expected number of invented objects per frame
    action_rate: float = 0.5  # a frame's caption states what a moving object does
    min_visible: float = 0.3  # objects less visible than this are never reported


NOISE_LEVELS: dict[str, CaptionerNoise] = {
    "none": CaptionerNoise(0.0, 0.0, False, 0.0, 0.0, 0.0, 1.0, 0.3),
    "low": CaptionerNoise(0.1, 0.05, True, 0.04, 0.05, 0.05, 0.6, 0.3),
    "moderate": CaptionerNoise(),
    "high": CaptionerNoise(0.45, 0.3, True, 0.16, 0.25, 0.3, 0.35, 0.3),
}

# Names an image captioner uses interchangeably (the synthetic vocabulary's own synonyms and a few
# that its captions never use, as a real captioner would). Kinds not listed keep their own name.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "cup": ("mug", "glass"),
    "ball": ("sphere",),
    "box": ("carton", "crate"),
    "knife": ("blade",),
    "bowl": ("basin", "dish"),
    "bottle": ("flask",),
    "plate": ("dish", "platter"),
    "can": ("tin", "jar"),
    "person": ("man", "woman"),
    "hand": ("palm",),
}

STATIC_PHRASES = ("is in the scene", "is visible", "stays in place", "appears in the frame")
_TEMPLATES_TWO = (
    "{a} {va} next to {b}.",
    "In this image, {a} {va}, with {b} nearby.",
    "{a} {va} and {b} {vb}.",
    "{a} {va} while {b} {vb}.",
)


def _clip_rng(seed: int, key: str) -> np.random.Generator:
    """One generator per clip, so a clip's output does not depend on which shard or batch it is in."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def _capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def video_read_error(path: str) -> str | None:
    """Why a video cannot be decoded (opened and its first frame read), or None when it can."""
    import av

    if not Path(path).is_file():
        return f"video file not found: {path}"
    try:
        with av.open(path) as container:
            if not container.streams.video:
                return f"no video stream: {path}"
            for _ in container.decode(video=0):
                return None
        return f"no decodable frame: {path}"
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        return f"unreadable video {path}: {type(exc).__name__}: {exc}"


@dataclass
class _SeenObject:
    name: str  # the phrase for this frame
    box: Box
    verb_phrase: str


class SimulatedCaptioner:
    """Turns the synthetic dataset's per-frame object records into what an image captioner would say.

    It reads only what a captioner could see (kind, colour, size, box, how visible, what the object
    does), never which objects the ground-truth caption mentions. Noise: synonyms drifting between
    frames, dropped attributes, varied sentence templates, box jitter, missed and invented objects.
    """

    def __init__(
        self,
        context: Stage1Context,
        noise: str | CaptionerNoise | dict[str, Any] = "moderate",
        seed: int = 0,
        check_video: bool = True,
        **noise_overrides: Any,
    ) -> None:
        if context.frame_objects is None:
            raise ValueError(
                f"{context.catalog_dir}: the simulated captioner needs the synthetic frame records "
                "(catalog.json has no 'frame_objects'; ingest a `grove data synth` folder)"
            )
        self.frame_objects = Path(context.frame_objects)
        if not self.frame_objects.exists():
            raise FileNotFoundError(f"{self.frame_objects}: frame records named by the catalog do not exist")
        self.noise = self._resolve_noise(noise, noise_overrides)
        self.seed = seed
        self.check_video = check_video
        self._vocabulary: dict[str, list[str]] | None = None

    @staticmethod
    def _resolve_noise(noise: str | CaptionerNoise | dict[str, Any], overrides: dict[str, Any]) -> CaptionerNoise:
        if isinstance(noise, str):
            if noise not in NOISE_LEVELS:
                raise ValueError(f"unknown noise level {noise!r}: use one of {list(NOISE_LEVELS)}")
            noise = NOISE_LEVELS[noise]
        elif isinstance(noise, dict):
            noise = CaptionerNoise(**noise)
        unknown = set(overrides) - set(CaptionerNoise.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown simulated-captioner option(s) {sorted(unknown)}")
        return replace(noise, **{k: type(getattr(noise, k))(v) for k, v in overrides.items()})

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "simulated",
            "noise": asdict(self.noise),
            "seed": self.seed,
            "check_video": self.check_video,
            "synonyms": SYNONYMS,
        }

    @property
    def vocabulary(self) -> dict[str, list[str]]:
        """Kinds, colours and sizes of the whole dataset (not the shard): what invented objects are made of."""
        if self._vocabulary is None:
            table = pq.read_table(self.frame_objects, columns=["kind", "colour", "size", "is_human"])
            objects = table.filter(pc.invert(table["is_human"]))
            self._vocabulary = {
                name: sorted(v for v in set(objects[name].to_pylist()) if v) for name in ("kind", "colour", "size")
            }
        return self._vocabulary

    def _records(self, keys: Sequence[str]) -> dict[str, dict[int, list[dict[str, Any]]]]:
        """The frame records of these clips, by clip key and native frame id."""
        table = pq.read_table(self.frame_objects, filters=[("key", "in", list(keys))]) if keys else None
        by_clip: dict[str, dict[int, list[dict[str, Any]]]] = {}
        if table is None:
            return by_clip
        table = table.sort_by([("key", "ascending"), ("frame_index", "ascending"), ("object_id", "ascending")])
        for row in table.to_pylist():
            by_clip.setdefault(row["key"], {}).setdefault(row["frame_id"], []).append(row)
        return by_clip

    def caption_clips(self, clips: Sequence[ClipRequest]) -> list[ClipFrames | ClipFailure]:
        records = self._records(sorted({c.record_key for c in clips}))
        results: list[ClipFrames | ClipFailure] = []
        for clip in clips:
            error = video_read_error(clip.video_file) if self.check_video else None
            if error is not None:
                results.append(ClipFailure(clip.key, error))
            elif clip.record_key not in records:
                results.append(ClipFailure(clip.key, f"no frame records for this clip in {self.frame_objects}"))
            else:
                results.append(self._caption_clip(clip, records[clip.record_key]))
        return results

    def _caption_clip(self, clip: ClipRequest, frames: dict[int, list[dict[str, Any]]]) -> ClipFrames:
        """`frames`: the source clip's records by native frame id (a long video's clip reads its parent's)."""
        rng = _clip_rng(self.seed, clip.key)
        # each object has a preferred name for the whole clip; frames drift away from it now and then
        preferred: dict[int, str] = {}
        out = []
        for frame_index, frame_id in zip(clip.frame_indices, clip.frame_ids):
            seen = []
            for obj in frames.get(frame_id, []):
                if obj["visible_fraction"] < self.noise.min_visible or rng.random() < self.noise.miss_rate:
                    continue
                name = preferred.setdefault(obj["object_id"], obj["kind"])
                seen.append(self._see(obj, name, rng, clip))
            seen.extend(self._hallucinate(rng, clip))
            out.append(self._frame(frame_index, frame_id, seen, rng))
        return ClipFrames(clip.key, out)

    def _see(self, obj: dict[str, Any], name: str, rng: np.random.Generator, clip: ClipRequest) -> _SeenObject:
        synonyms = SYNONYMS.get(obj["kind"], ())
        if synonyms and rng.random() < self.noise.synonym_rate:
            name = synonyms[int(rng.integers(len(synonyms)))]
        phrase = self._phrase(obj, name, rng.random() < self.noise.attribute_drop_rate, rng)
        action = obj.get("action") or ""
        verb_phrase = action if action and rng.random() < self.noise.action_rate else self._static(rng)
        box = self._jitter((obj["x1"], obj["y1"], obj["x2"], obj["y2"]), rng, clip)
        return _SeenObject(phrase, box, verb_phrase)

    @staticmethod
    def _phrase(obj: dict[str, Any], name: str, drop: bool, rng: np.random.Generator) -> str:
        """The object's noun phrase under `name`; `drop` loses one attribute (a human's garment)."""
        if obj["is_human"]:
            description = obj["description"].replace(obj["kind"], name, 1)
            return description.split(" in ")[0] if drop else description
        attributes = [a for a in (obj["size"], obj["colour"]) if a]
        if drop and attributes:
            attributes.pop(int(rng.integers(len(attributes))))
        words = [*attributes, name]
        return " ".join(["an" if words[0][0] in "aeiou" else "a", *words])

    def _static(self, rng: np.random.Generator) -> str:
        return STATIC_PHRASES[int(rng.integers(len(STATIC_PHRASES)))] if self.noise.paraphrase else STATIC_PHRASES[0]

    def _jitter(self, box: Box, rng: np.random.Generator, clip: ClipRequest) -> Box:
        x1, y1, x2, y2 = box
        if self.noise.box_jitter > 0:
            w, h = x2 - x1, y2 - y1
            dx1, dx2 = rng.normal(0.0, self.noise.box_jitter * w, 2)
            dy1, dy2 = rng.normal(0.0, self.noise.box_jitter * h, 2)
            x1, x2, y1, y2 = x1 + dx1, x2 + dx2, y1 + dy1, y2 + dy2
        x1, x2 = float(np.clip(min(x1, x2), 0, clip.width - 1)), float(np.clip(max(x1, x2), 1, clip.width))
        y1, y2 = float(np.clip(min(y1, y2), 0, clip.height - 1)), float(np.clip(max(y1, y2), 1, clip.height))
        return (round(x1, 2), round(y1, 2), round(max(x2, x1 + 1), 2), round(max(y2, y1 + 1), 2))

    def _hallucinate(self, rng: np.random.Generator, clip: ClipRequest) -> list[_SeenObject]:
        count = int(rng.poisson(self.noise.hallucination_rate)) if self.noise.hallucination_rate > 0 else 0
        vocab = self.vocabulary
        invented = []
        for _ in range(count):
            if not vocab["kind"]:
                break
            words = [vocab[k][int(rng.integers(len(vocab[k])))] for k in ("size", "colour") if vocab[k]]
            kind = vocab["kind"][int(rng.integers(len(vocab["kind"])))]
            w, h = rng.uniform(0.1, 0.4) * clip.width, rng.uniform(0.1, 0.4) * clip.height
            x1, y1 = rng.uniform(0, clip.width - w), rng.uniform(0, clip.height - h)
            box = self._jitter((x1, y1, x1 + w, y1 + h), rng, clip)
            phrase = self._phrase({"is_human": False, "size": words[0] if len(words) > 1 else "",
                                   "colour": words[-1] if words else ""}, kind, False, rng)
            invented.append(_SeenObject(phrase, box, self._static(rng)))
        return invented

    def _frame(self, frame_index: int, frame_id: int, seen: list[_SeenObject], rng: np.random.Generator) -> FrameAnnotation:
        if not seen:
            return FrameAnnotation(frame_index, frame_id, "An empty background.")
        order = list(range(len(seen)))
        if self.noise.paraphrase:
            rng.shuffle(order)
        objs = [seen[i] for i in order]
        if len(objs) == 1:
            sentences = [f"{objs[0].name} {objs[0].verb_phrase}."]
        else:
            template = _TEMPLATES_TWO[int(rng.integers(len(_TEMPLATES_TWO)))] if self.noise.paraphrase else _TEMPLATES_TWO[2]
            a, b = objs[0], objs[1]
            sentences = [template.format(a=a.name, va=a.verb_phrase, b=b.name, vb=b.verb_phrase)]
            sentences += [f"{o.name} {o.verb_phrase}." for o in objs[2:]]
        caption = " ".join(_capitalise(s) for s in sentences)
        return FrameAnnotation(frame_index, frame_id, caption, [o.name for o in objs], [o.box for o in objs])


def clip_requests(clips: pa.Table, video_root: Path, frame_stride: int = 1) -> list[ClipRequest]:
    """The frames stage 1 looks at: the clip's 5 fps grid (as the paper), every `frame_stride`-th."""
    from grove.data.frames import annotated_frame_ids

    requests = []
    for row in clips.to_pylist():
        ids = annotated_frame_ids(row["fps"], row["clip_start_frame"], row["clip_end_frame"], row["num_frames"] or None)
        indices = list(range(len(ids)))[:: max(1, frame_stride)]
        path = Path(row["video_path"])
        parent = json.loads(row["extra"] or "{}").get("parent_clip_id")
        requests.append(
            ClipRequest(
                key=row["key"],
                video_file=str(path if path.is_absolute() else video_root / path),
                fps=row["fps"],
                width=row["width"],
                height=row["height"],
                frame_indices=tuple(indices),
                frame_ids=tuple(ids[i] for i in indices),
                source_key=f"{row['video_id']}_{parent}" if parent is not None else "",
            )
        )
    return requests


__all__ = [
    "BUILTIN_CAPTIONERS",
    "CaptionerNoise",
    "FrameCaptioner",
    "NOISE_LEVELS",
    "SimulatedCaptioner",
    "Stage1Context",
    "clip_requests",
    "load_captioner",
    "video_read_error",
]
