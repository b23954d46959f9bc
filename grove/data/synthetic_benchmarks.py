"""Synthetic stand-ins of the paper's other benchmarks: a VidSTG-like and an ActivityNet-Entities-like split.

Both are rendered by the synthetic dataset's own generator (grove.data.synthetic: the same scene
sampler, renderer, encoder and rendering parameters) and written in the official layouts that
grove.data.vidstg and grove.data.anet_entities read, so that the paper profile's conversion,
inference and scoring run on them unchanged.

VidSTG-like (`<root>/vidstg/`): one query sentence per clip about one object of the scene (an
entity drawn once, caption phrase or distractor), declarative ("the red cup moves to the left.")
or, when its action is unique in the scene, interrogative ("what moves to the left?"); its tube is
the longest run of native frames in which the object is visible (the stand-in's "temporal segment":
what temporal grounding from the objectness curve must find); about 3 in 4 sentences are about an
object that is seen for less than half of the clip (scenes are drawn again until one holds such an
object), so that predicting the whole clip is a weak temporal baseline. `test.json` in TubeDETR's layout:
`videos[]` (one entry per sentence; start_frame/end_frame = the whole clip, tube_end_frame
exclusive) and `trajectories[video][object]` = the object's visible-part box (xywh) on every
native frame where it is visible. Videos under `videos/`.

ActivityNet-Entities-like (`<root>/anet_entities/`): one video per clip with one segment ([start,
end] s inside the clip, ending no later than the second-last frame, so GROVE's clamp of the end to
the second-last frame time changes nothing), described by the scene's caption (`tokens`: words and
punctuation, lower case). Each caption phrase is one object word (its noun; the class is that
noun's singular), boxed in one of the segment's 10 sampled frames (the midpoints of its tenths;
drawn at random among those where it is visible), one box per visible instance, xyxy in the
720-pixel-wide frame of the official file (`rwidth`/`rheight`). The video entries carry `fps`, as
GROVE's augmented file does. `anet_entities_cleaned_class_thresh50_trainval.json`,
`split_ids_anet_entities.json` (every video in "validation"), and the videos as `{video_id}.mp4`.

Randomness: clip i of a stand-in is drawn from the generator seeded with (seed, stream, i), with
streams apart from the dataset's splits (0..3), so the stand-ins change nothing the dataset renders.
A stand-in folder whose manifest holds the same parameters and whose files are all there is left as
it is; otherwise its annotations are rewritten and only missing or outdated videos are encoded.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import multiprocessing
import os
import re
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import yaml

from grove.data.anet_entities import nearest_frame, slot_times
from grove.data.frames import annotated_frame_ids, frame_step
from grove.data.synthetic import SynthConfig, config_from_params, scene_is_valid
from grove.data.synthetic_render import FrameVisibility, encode_mp4, make_compositor, read_mp4_comment
from grove.data.synthetic_scene import KINDS, Infeasible, Scene, article, canonical_action, sample_scene
from grove.io import atomic_write_json

logger = logging.getLogger(__name__)

STANDIN_VERSION = 2  # bump when a change alters what a (seed, stream, index) stand-in clip becomes
BENCHMARKS = ("vidstg", "anet_entities")
STREAMS = {"vidstg": 10, "anet_entities": 11}  # seed streams; the dataset's splits use 0..3
DEFAULT_CLIPS = {"vidstg": 24, "anet_entities": 24}
MANIFEST = "standin.json"
CREATOR = "grove data synth"

VIDSTG_SPLIT = "test"
VIDSTG_FILE = "test.json"
VIDSTG_PARTIAL_SHARE = 0.5  # a tube shorter than this share of the clip is "partial"
VIDSTG_PARTIAL_TUBES = 0.75  # share of sentences about an object seen only part of the time (others: any object)

ANET_SPLIT = "val"
ANET_FILE = "anet_entities_cleaned_class_thresh50_trainval.json"
ANET_SPLIT_IDS = "split_ids_anet_entities.json"
ANET_WIDTH = 720  # ActivityNet-Entities boxes live in frames scaled to 720 pixels wide
ANET_MIN_SEGMENT_S = 0.5  # GROVE's loader skips shorter segments

_WORD = re.compile(r"[\w']+|[^\w\s]")
_TAG = re.compile(r"<p>(.*?)</p>")
ProgressFn = Callable[[int, int], None]
# scene draws per stand-in clip: a clip may need a rare scene (an object seen for less than half of it);
# a draw costs a few tens of milliseconds
MAX_SCENE_ATTEMPTS = 400


@dataclass(frozen=True)
class StandinConfig:
    """What the stand-ins are made of: the dataset's rendering parameters and a clip count per benchmark."""

    render: SynthConfig
    vidstg_clips: int = DEFAULT_CLIPS["vidstg"]
    anet_entities_clips: int = DEFAULT_CLIPS["anet_entities"]

    def __post_init__(self) -> None:
        if min(self.clips.values()) < 0:
            raise ValueError(f"stand-in sizes must be >= 0, got {self.clips}")

    @property
    def clips(self) -> dict[str, int]:
        return {name: getattr(self, f"{name}_clips") for name in BENCHMARKS}


def standins_folder(dataset_root: str | os.PathLike[str]) -> Path:
    """Where `grove data synth --out ROOT` puts the stand-ins: ROOT's sibling `ROOT_benchmarks`.

    Not inside ROOT: the pool's catalog scans every video under ROOT, and the dataset must stay
    exactly what it was."""
    root = Path(dataset_root)
    return root.parent / f"{root.name}_benchmarks"


def standin_config_from_params(params_file: str | os.PathLike[str], profile: str | None = None) -> StandinConfig:
    """The stand-ins of a params.yaml profile: its synthetic rendering parameters, and for each of
    `benchmarks.vidstg` / `benchmarks.anet_entities` whose `source` is "synthetic" its `clips`
    (default 24); a benchmark with another source (or none) gets 0 clips."""
    render = config_from_params(params_file, profile)
    params = yaml.safe_load(Path(params_file).read_text())
    name = profile or os.environ.get("GROVE_PROFILE") or params.get("profile") or "demo"
    section = params.get(name) or {}
    counts = {}
    for benchmark in BENCHMARKS:
        settings = (section.get("benchmarks") or {}).get(benchmark) or {}
        counts[f"{benchmark}_clips"] = int(settings.get("clips", DEFAULT_CLIPS[benchmark])) if settings.get("source") == "synthetic" else 0
    return StandinConfig(render, **counts)


def video_id(benchmark: str, index: int) -> str:
    return f"synth-{'vidstg' if benchmark == 'vidstg' else 'anet'}-{index:06d}"


def _fingerprint(config: SynthConfig, benchmark: str) -> str:
    return f"{config.render_fingerprint()} standin {benchmark} v{STANDIN_VERSION}"


# ---------------------------------------------------------------------------------------------- one clip


@dataclass(frozen=True)
class StandinTask:
    config: SynthConfig
    benchmark: str
    index: int
    video_file: str  # absolute path of the MP4
    fingerprint: str


@dataclass
class StandinClip:
    record: dict[str, Any]  # vidstg: {"video", "trajectory"}; anet_entities: {"video_id", "video"}
    encoded: bool


def longest_run(flags: list[bool]) -> tuple[int, int] | None:
    """First and last index of the longest run of True (the earliest on ties); None without any."""
    best, start = None, None
    for i, value in enumerate([*flags, False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            if best is None or i - 1 - start > best[1] - best[0]:
                best = (start, i - 1)
            start = None
    return best


def _render(task: StandinTask, choose: Callable[[Scene, dict[int, FrameVisibility], np.random.Generator, SynthConfig], Any]):
    """Draw a valid scene whose annotation `choose` accepts (not None); visibility on every native frame.
    Encodes the MP4 unless one with the same fingerprint exists (drawing is the same either way)."""
    config = task.config
    encode = read_mp4_comment(task.video_file) != task.fingerprint
    rng = np.random.default_rng([config.seed, STREAMS[task.benchmark], task.index])
    n_frames = config.n_frames
    grid = annotated_frame_ids(config.fps, 0, n_frames - 1)
    for _ in range(MAX_SCENE_ATTEMPTS):
        try:
            scene = sample_scene(rng, config.width, config.height, n_frames, np.array(grid))
        except Infeasible:
            continue
        compositor = make_compositor(scene, rng, config.width, config.height)
        pixels = np.empty((n_frames, config.height, config.width, 3), np.uint8) if encode else None
        visibility = {}
        for frame in range(n_frames):
            image, layout = compositor.draw(frame, with_ids=True)
            if pixels is not None:
                pixels[frame] = image
            visibility[frame] = compositor.visibility(layout)
        if not scene_is_valid(scene, {f: visibility[f] for f in grid}, len(grid)):
            continue
        chosen = choose(scene, visibility, rng, config)
        if chosen is not None:
            break
    else:
        raise RuntimeError(f"{task.benchmark} stand-in clip {task.index}: no usable scene in {MAX_SCENE_ATTEMPTS} draws "
                           f"at {config.width}x{config.height}")
    if pixels is not None:
        encode_mp4(pixels, task.video_file, config.fps, config.encoder, comment=task.fingerprint)
    return chosen, encode


def object_name(scene: Scene, entity_index: int) -> str:
    """The definite name of an entity: "the red cup", "the person in a blue shirt" ((kind, colour) is unique in a scene)."""
    entity = scene.entities[entity_index]
    spec = KINDS[entity.kind]
    if spec.is_human:
        return f"the {entity.kind} in {article(entity.colour)} {entity.colour} {spec.garment}"
    return f"the {entity.colour} {spec.nouns[0]}"


def _vidstg_choice(scene: Scene, visibility: dict[int, FrameVisibility], rng: np.random.Generator, config: SynthConfig,
                   short_tube: bool = False):
    n_frames = config.n_frames
    min_run = max(3 * frame_step(config.fps), n_frames // 8)
    drawn = Counter(inst.entity for inst in scene.instances)
    visible = [set(visibility[f].object_ids) for f in range(n_frames)]
    candidates = []
    for inst in scene.instances:
        if drawn[inst.entity] != 1:
            continue
        run = longest_run([inst.object_id in frame for frame in visible])
        if run is not None and run[1] - run[0] + 1 >= min_run:
            candidates.append((inst, run))
    partial = [c for c in candidates if c[1][1] - c[1][0] + 1 < VIDSTG_PARTIAL_SHARE * n_frames]
    pool = partial if short_tube else candidates
    if not pool:
        return None  # draw another scene
    inst, run = pool[int(rng.integers(len(pool)))]
    entity = scene.entities[inst.entity]
    action = canonical_action(entity, scene.entities)
    actions = Counter(canonical_action(e, scene.entities) for e in scene.entities)
    if actions[action] == 1 and rng.random() < 0.5:
        qtype, sentence = "interrogative", f"{'who' if KINDS[entity.kind].is_human else 'what'} {action}?"
    else:
        qtype, sentence = "declarative", f"{object_name(scene, inst.entity)} {action}."
    trajectory = {}
    for frame in range(n_frames):
        frame_visibility = visibility[frame]
        if inst.object_id in frame_visibility.object_ids:
            x1, y1, x2, y2 = frame_visibility.boxes[frame_visibility.object_ids.index(inst.object_id)]
            trajectory[str(frame)] = {"bbox": [x1, y1, x2 - x1, y2 - y1], "generated": 0}
    return inst, entity, run, qtype, sentence, trajectory


def vidstg_clip(task: StandinTask) -> StandinClip:
    """One VidSTG-like sentence: its `videos[]` entry and its target's trajectory."""
    # whether this sentence is about an object seen for less than half of the clip: decided once per clip
    # (a stream of its own), so the share does not depend on how rare such scenes are
    short_tube = np.random.default_rng([task.config.seed, STREAMS["vidstg"], task.index, 1]).random() < VIDSTG_PARTIAL_TUBES
    choose = functools.partial(_vidstg_choice, short_tube=short_tube)
    (inst, entity, run, qtype, sentence, trajectory), encoded = _render(task, choose)
    config, original = task.config, video_id("vidstg", task.index)
    video = {
        "original_video_id": original, "video_id": task.index, "video_path": f"videos/{original}.mp4",
        "caption": sentence, "qtype": qtype, "fps": float(config.fps), "width": config.width, "height": config.height,
        "target_id": inst.object_id, "tube_start_frame": run[0], "tube_end_frame": run[1] + 1,
        "start_frame": 0, "end_frame": config.n_frames, "frame_count": config.n_frames, "type": entity.kind,
    }
    return StandinClip({"video": video, "trajectory": trajectory}, encoded)


def caption_tokens(tagged_caption: str) -> tuple[list[str], list[list[int]]]:
    """Words and punctuation of a tagged caption (lower case), and the token indices of each `<p>` phrase."""
    tokens: list[str] = []
    phrases: list[list[int]] = []
    position = 0
    for match in _TAG.finditer(tagged_caption):
        tokens += [t.lower() for t in _WORD.findall(tagged_caption[position : match.start()])]
        words = [t.lower() for t in _WORD.findall(match.group(1))]
        phrases.append(list(range(len(tokens), len(tokens) + len(words))))
        tokens += words
        position = match.end()
    tokens += [t.lower() for t in _WORD.findall(tagged_caption[position:])]
    return tokens, phrases


def _object_word(tokens: list[str], phrase: list[int], kind: str) -> tuple[int, str] | None:
    """The phrase's noun (index into tokens) and its class (the noun's singular)."""
    spec = KINDS[kind]
    singular = {**{noun: noun for noun in spec.nouns}, **dict(zip(spec.plurals, spec.nouns))}
    return next(((i, singular[tokens[i]]) for i in phrase if tokens[i] in singular), None)


def _anet_choice(scene: Scene, visibility: dict[int, FrameVisibility], rng: np.random.Generator, config: SynthConfig):
    n_frames, fps = config.n_frames, config.fps
    last = (n_frames - 2) / fps  # GROVE clamps the end to the second-last frame's time
    start = math.floor(rng.uniform(0.0, 0.1 * config.seconds) * 100) / 100
    end = math.floor(rng.uniform(min(0.85 * config.seconds, last), last) * 100) / 100
    if end - start < ANET_MIN_SEGMENT_S:
        return None
    frames = [min(n_frames - 1, nearest_frame(t, fps)) for t in slot_times(start, end)]
    tokens, phrase_tokens = caption_tokens(scene.tagged_caption)
    scale = ANET_WIDTH / config.width
    boxes: dict[str, list] = {"process_clss": [], "process_idx": [], "process_bnd_box": [], "frame_ind": [], "crowds": []}
    for phrase_index, phrase in enumerate(phrase_tokens):
        members = [i for i, e in enumerate(scene.entities) if e.in_caption and e.phrase_index == phrase_index]
        if not members:
            continue
        word = _object_word(tokens, phrase, scene.entities[members[0]].kind)
        objects = {inst.object_id for inst in scene.instances if inst.entity in members}
        slots = [s for s, f in enumerate(frames) if objects & set(visibility[f].object_ids)]
        if word is None or not slots:
            continue  # an unboxed word, as ActivityNet-Entities has many
        slot = slots[int(rng.integers(len(slots)))]
        seen = visibility[frames[slot]]
        for object_id, box in zip(seen.object_ids, seen.boxes):
            if object_id in objects:
                boxes["process_clss"].append([word[1]])
                boxes["process_idx"].append([word[0]])
                boxes["process_bnd_box"].append([int(round(v * scale)) for v in box])
                boxes["frame_ind"].append(slot)
                boxes["crowds"].append(0)
    if not boxes["frame_ind"]:
        return None
    return {"tokens": tokens, "timestamps": [start, end], **boxes}


def anet_clip(task: StandinTask) -> StandinClip:
    """One ActivityNet-Entities-like video with one annotated segment."""
    segment, encoded = _render(task, _anet_choice)
    config = task.config
    video = {"duration": float(config.seconds), "fps": float(config.fps), "rwidth": ANET_WIDTH,
             "rheight": int(round(config.height * ANET_WIDTH / config.width)), "segments": {"0": segment}}
    return StandinClip({"video_id": video_id("anet_entities", task.index), "video": video}, encoded)


CLIP_FUNCTIONS = {"vidstg": vidstg_clip, "anet_entities": anet_clip}


# ---------------------------------------------------------------------------------------------- folders


@dataclass(frozen=True)
class StandinSummary:
    benchmark: str
    root: Path
    clips: int
    encoded: int
    seconds: float
    up_to_date: bool


def annotation_files(benchmark: str) -> list[str]:
    return [VIDSTG_FILE] if benchmark == "vidstg" else [ANET_FILE, ANET_SPLIT_IDS]


def video_file(root: Path, benchmark: str, index: int) -> Path:
    name = f"{video_id(benchmark, index)}.mp4"
    return root / "videos" / name if benchmark == "vidstg" else root / name


def _manifest(config: SynthConfig, benchmark: str, clips: int) -> dict[str, Any]:
    return {"benchmark": benchmark, "kind": "synthetic stand-in", "creator": CREATOR, "standin_version": STANDIN_VERSION,
            "seed": config.seed, "parameters": asdict(config), "fingerprint": _fingerprint(config, benchmark),
            "clips": clips, "split": VIDSTG_SPLIT if benchmark == "vidstg" else ANET_SPLIT,
            "files": annotation_files(benchmark), "complete": True}


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def is_complete(root: str | os.PathLike[str], config: SynthConfig, benchmark: str, clips: int) -> bool:
    root = Path(root)
    if _read_manifest(root) != _manifest(config, benchmark, clips):
        return False
    files = [root / name for name in annotation_files(benchmark)] + [video_file(root, benchmark, i) for i in range(clips)]
    return all(path.is_file() for path in files)


def _run(tasks: list[StandinTask], workers: int, progress: ProgressFn | None) -> list[StandinClip]:
    if not tasks:
        return []
    function = CLIP_FUNCTIONS[tasks[0].benchmark]
    results: list[StandinClip] = []
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            results.append(function(task))
            if progress is not None:
                progress(len(results), len(tasks))
        return results
    context = multiprocessing.get_context("spawn")  # as grove.data.synthetic: no forked locks
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        for result in pool.map(function, tasks, chunksize=max(1, min(4, len(tasks) // (workers * 8)))):
            results.append(result)
            if progress is not None:
                progress(len(results), len(tasks))
    return results


def _write_annotations(root: Path, benchmark: str, results: list[StandinClip]) -> None:
    if benchmark == "vidstg":
        trajectories = {r.record["video"]["original_video_id"]: {str(r.record["video"]["target_id"]): r.record["trajectory"]}
                        for r in results}
        atomic_write_json(root / VIDSTG_FILE, {"videos": [r.record["video"] for r in results], "trajectories": trajectories})
        return
    annotations = {r.record["video_id"]: r.record["video"] for r in results}
    vocab = sorted({c[0] for video in annotations.values() for s in video["segments"].values() for c in s["process_clss"]})
    atomic_write_json(root / ANET_FILE, {"vocab": vocab, "annotations": annotations})
    atomic_write_json(root / ANET_SPLIT_IDS, {"training": [], "validation": list(annotations), "testing": []})


def _remove_stale_videos(root: Path, benchmark: str, keep: set[Path]) -> int:
    folder = root / "videos" if benchmark == "vidstg" else root
    prefix = video_id(benchmark, 0).rsplit("-", 1)[0]
    removed = 0
    for path in sorted(folder.glob(f"{prefix}-*.mp4")) + sorted(folder.glob(f".{prefix}-*.tmp")):
        if path not in keep:
            path.unlink()
            removed += 1
    return removed


def generate_standin(out: str | os.PathLike[str], config: SynthConfig, benchmark: str, clips: int,
                     workers: int | None = None, progress: ProgressFn | None = None) -> StandinSummary:
    """Render the `benchmark` stand-in of `clips` clips into the folder `out` (see the module docstring)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown stand-in {benchmark!r}; expected one of {BENCHMARKS}")
    started = time.perf_counter()
    root = Path(out)
    if is_complete(root, config, benchmark, clips):
        logger.info("%s already holds this %s stand-in (%d clips); nothing to do", root, benchmark, clips)
        return StandinSummary(benchmark, root, clips, 0, time.perf_counter() - started, True)
    (root / "videos" if benchmark == "vidstg" else root).mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).unlink(missing_ok=True)
    fingerprint = _fingerprint(config, benchmark)
    tasks = [StandinTask(config, benchmark, i, str(video_file(root, benchmark, i)), fingerprint) for i in range(clips)]
    results = _run(tasks, max(1, workers if workers is not None else (os.cpu_count() or 1)), progress)
    _write_annotations(root, benchmark, results)
    removed = _remove_stale_videos(root, benchmark, {Path(t.video_file) for t in tasks})
    atomic_write_json(root / MANIFEST, _manifest(config, benchmark, clips))
    encoded = sum(r.encoded for r in results)
    elapsed = time.perf_counter() - started
    logger.info("%s stand-in: %d clips (%d encoded, %d stale videos removed) in %.1f s -> %s",
                benchmark, clips, encoded, removed, elapsed, root)
    return StandinSummary(benchmark, root, clips, encoded, elapsed, False)


def generate_standins(out: str | os.PathLike[str], config: StandinConfig, workers: int | None = None,
                      progress: Callable[[str, int, int], None] | None = None) -> list[StandinSummary]:
    """Every stand-in with clips > 0, each into `out/<benchmark>`."""
    summaries = []
    for benchmark, clips in config.clips.items():
        if clips > 0:
            report = None if progress is None else (lambda done, total, b=benchmark: progress(b, done, total))
            summaries.append(generate_standin(Path(out) / benchmark, config.render, benchmark, clips, workers, report))
    return summaries


def with_clips(config: StandinConfig, counts: Mapping[str, int | None]) -> StandinConfig:
    return replace(config, **{f"{name}_clips": n for name, n in counts.items() if n is not None})
