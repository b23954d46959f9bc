import pytest

from annotation.engines import InvalidAnswer
from annotation.records import ClipFrames, FrameAnnotation, VideoCaption
from annotation.stage2 import load_prompt
from annotation.stage3 import (
    ClassifyRequest,
    EmbeddingClassifier,
    LexicalClassifier,
    LlmClassifier,
    Stage3Stats,
    assign_boxes,
    complete_tubes,
    make_classifier,
    stage3_prompt,
    validate_category,
)
from annotation.svo import SpacyParser

PARSER = SpacyParser()
CATEGORIES = ("a hand in a green glove", "a small red cup", "a large red cup", "a small blue ball")


def _classify(classifier, phrases, categories=CATEGORIES):
    return classifier.classify([ClassifyRequest(p, categories) for p in phrases], Stage3Stats())


def test_lexical_matches_heads_and_attributes_and_keeps_humans_apart():
    labels = _classify(LexicalClassifier(PARSER), [
        "a small red cup",  # exact
        "a small red mug",  # synonym head, both attributes shared
        "a red cup",  # attribute dropped: small or large? ambiguous
        "a blue ball",  # nested attributes, same head
        "a palm in a green glove",  # the only human phrase
        "a small red hand",  # a human never becomes an object
        "a green plate",
    ])
    assert labels == [1, 1, -1, 3, 0, 0, -1]


def test_embedding_matches_synonyms_above_the_threshold():
    classifier = EmbeddingClassifier(PARSER, threshold=0.6)
    labels = _classify(classifier, ["a small red mug", "a small blue sphere", "a person", "a purple bottle"])
    assert labels[:2] == [1, 3]
    assert labels[2] in (-1, 0)  # a human goes to the human phrase or nowhere, never to an object
    assert labels[3] == -1
    assert classifier.describe()["threshold"] == 0.6


def test_prompt_and_answer_validation():
    request = ClassifyRequest("a small red mug", CATEGORIES)
    prompt = stage3_prompt(request, load_prompt("stage3.txt"))
    assert "Example 5" in prompt and prompt.endswith(
        "Categories: ['a hand in a green glove', 'a small red cup', 'a large red cup', 'a small blue ball']\n"
        "Noun phrase: 'a small red mug'\nAnswer:\n")
    assert validate_category("{'CATEGORY': 'A small red cup'}", request, PARSER) == 1
    assert validate_category('{"CATEGORY": "None"}', request, PARSER) == -1
    with pytest.raises(InvalidAnswer, match="not one of the categories"):
        validate_category("{'CATEGORY': 'a mug'}", request, PARSER)
    with pytest.raises(InvalidAnswer, match="human and an object"):
        validate_category("{'CATEGORY': 'a hand in a green glove'}", request, PARSER)


class Scripted:
    def __init__(self, *calls):
        self.calls, self.schemas = list(calls), []

    def describe(self):
        return {"engine": "scripted"}

    def generate(self, prompts, schemas=None):
        self.schemas.append(schemas)
        return self.calls.pop(0)


def test_llm_classifier_repairs_once_then_falls_back_to_lexical():
    generator = Scripted(
        ["{'CATEGORY': 'a small red cup'}", "{'CATEGORY': 'a hand in a green glove'}", "nonsense"],
        ["{'CATEGORY': 'a small blue ball'}", "nonsense again"],
    )
    stats = Stage3Stats()
    labels = LlmClassifier(generator, PARSER, LexicalClassifier(PARSER)).classify(
        [ClassifyRequest(p, CATEGORIES) for p in ("a small red mug", "a blue ball", "a palm in a green glove")], stats)
    assert labels == [1, 3, 0]  # the last one from the lexical fallback
    assert (stats.llm, stats.repaired, stats.fallbacks) == (1, 1, 1)
    assert generator.schemas[0][0]["properties"]["CATEGORY"]["enum"] == [*CATEGORIES, "None"]


def test_assign_boxes_labels_boxes_with_video_phrases_and_drops_the_rest():
    clip = ClipFrames("c_0", [
        FrameAnnotation(0, 0, "", ["a small red mug", "a green plate"], [(1, 1, 5, 5), (6, 6, 9, 9)]),
        FrameAnnotation(1, 2, "", ["a small red cup", "a small red cup"], [(1, 1, 5, 5), (2, 2, 6, 6)]),
    ])
    caption = VideoCaption("c_0", "", "", ["a small red cup"], "consensus")
    stats = Stage3Stats()
    rows = assign_boxes([clip], {"c_0": caption}, make_classifier("lexical", PARSER, {}), stats)
    assert [(r["frame_index"], r["box_index"], r["phrase"]) for r in rows] == [
        (0, 0, "a small red cup"), (1, 0, "a small red cup"), (1, 1, "a small red cup")]
    assert stats.requests == 3 and stats.assigned == 2  # distinct (phrase, categories) pairs are classified once


def _row(frame, x, phrase_index=0, box_index=0):
    return {"key": "c_0", "frame_index": frame, "frame_id": 2 * frame, "box_index": box_index,
            "phrase_index": phrase_index, "phrase": "p", "x1": x, "y1": 0.0, "x2": x + 10, "y2": 10.0, "score": None}


def test_tubes_are_completed_over_short_gaps_only():
    grid = {"c_0": list(range(0, 40, 2))}
    rows = [_row(0, 0.0), _row(3, 30.0), _row(9, 30.0), _row(10, 0.0), _row(10, 50.0, box_index=1), _row(12, 0.0)]
    out = complete_tubes([dict(r) for r in rows], grid, max_missing=2)
    filled = [(r["frame_index"], r["x1"], r["frame_id"]) for r in out if r["frame_index"] in (1, 2)]
    assert filled == [(1, 10.0, 2), (2, 20.0, 4)]
    assert not [r for r in out if 4 <= r["frame_index"] <= 8]  # a gap of five frames stays a gap
    assert not [r for r in out if r["frame_index"] == 11]  # frame 10 has two instances: which one moved?
    assert complete_tubes([dict(r) for r in rows], grid, max_missing=0) == rows


def test_smoothing_replaces_jitter_with_the_tube_median():
    rows = [_row(0, 0.0), _row(1, 9.0), _row(2, 2.0), _row(3, 3.0)]
    out = complete_tubes([dict(r) for r in rows], {"c_0": list(range(0, 8, 2))}, max_missing=0, smooth_radius=1)
    assert [r["x1"] for r in out] == [4.5, 2.0, 3.0, 2.5]


def test_unknown_engine():
    with pytest.raises(ValueError, match="unknown stage-3 engine"):
        make_classifier("regex", PARSER, {})
