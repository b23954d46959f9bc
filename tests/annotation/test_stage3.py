import numpy as np
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
    Tracking,
    assign_boxes,
    box_iou,
    complete_tubes,
    label_tracks,
    link_tracks,
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


def test_link_tracks_follows_moving_objects_and_keeps_them_apart():
    # two objects moving right at 4 px a frame, side by side; frame 3 misses the first one, and a
    # one-frame invention appears in frame 2; boxes come in a different order each frame
    a = [(4.0 * t, 0.0, 4.0 * t + 10, 10.0) for t in range(6)]
    b = [(4.0 * t, 20.0, 4.0 * t + 10, 30.0) for t in range(6)]
    frames = [[a[0], b[0]], [b[1], a[1]], [a[2], (60.0, 60.0, 70.0, 70.0), b[2]], [b[3]], [a[4], b[4]], [b[5], a[5]]]
    ids = link_tracks(frames, min_iou=0.3, max_gap=2)
    track_a, track_b = ids[0]
    assert [f[frame.index(a[t])] for t, (f, frame) in enumerate(zip(ids, frames)) if a[t] in frame] == [track_a] * 5
    assert all(f[frame.index(b[t])] == track_b for t, (f, frame) in enumerate(zip(ids, frames)))
    assert ids[2][1] not in (track_a, track_b)
    # a still object missed in three frames: the track ends after max_gap frames without a box
    assert link_tracks([[a[0]], [], [], [], [a[0]]], 0.3, 2) == [[0], [], [], [], [1]]
    assert link_tracks([[a[0]], [], [], [], [a[0]]], 0.3, 3) == [[0], [], [], [], [0]]


def test_velocity_carries_a_moving_object_over_missed_frames():
    # 4 px a frame on a 10 px box, missed in frames 3 and 4: its last box no longer overlaps where it
    # reappears, the box moved at the track's velocity does
    moving = [[(4.0 * t, 0.0, 4.0 * t + 10, 10.0)] if t not in (3, 4) else [] for t in range(6)]
    assert link_tracks(moving, min_iou=0.3, max_gap=2) == [[0], [0], [0], [], [], [0]]


def test_label_tracks_takes_the_majority_and_drops_what_is_inconsistent():
    # track 0: phrase 1 three times, none once, phrase 2 once -> all five boxes phrase 1
    # track 1: none everywhere -> dropped; track 2: one frame only -> dropped
    # track 3: phrases 1 and 2 equally often -> ambiguous, dropped
    tracks = [[0, 1, 2, 3], [0, 1, 3], [0, 1], [0], [0]]
    votes = [[1, -1, 1, 1], [-1, -1, 2], [1, -1], [2], [1]]
    humans = [[False] * len(f) for f in tracks]
    final, support = label_tracks(tracks, votes, humans, [True, False, False], min_frames=2)
    assert final == [[1, -1, -1, -1], [1, -1, -1], [1, -1], [1], [1]]
    assert support[0] == 3 / 5 and support[1] == 0.0
    # a box whose own phrase is a human never takes an object phrase
    final, _ = label_tracks([[0], [0], [0]], [[1], [1], [-1]], [[False], [False], [True]], [True, False], 2)
    assert final == [[1], [1], [-1]]


def test_tracking_recovers_boxes_whose_frame_phrase_is_unmatched():
    # the cup is called "a red mug" in frame 1 (ambiguous: small or large?) and a one-frame invention
    # "a small red cup" appears in frame 2 far away; the paper's stage 3 loses the mug box and keeps the
    # invention, tracking does the reverse
    cup = [(2.0 * t, 0.0, 2.0 * t + 10, 10.0) for t in range(4)]
    clip = ClipFrames("c_0", [
        FrameAnnotation(0, 0, "", ["a small red cup"], [cup[0]]),
        FrameAnnotation(1, 2, "", ["a red mug"], [cup[1]]),
        FrameAnnotation(2, 4, "", ["a small red cup", "a small red cup"], [cup[2], (40.0, 40.0, 50.0, 50.0)]),
        FrameAnnotation(3, 6, "", ["a small red cup"], [cup[3]]),
    ])
    captions = {"c_0": VideoCaption("c_0", "", "", ["a small red cup", "a large red cup"], "consensus")}
    classifier = make_classifier("lexical", PARSER, {})
    paper = assign_boxes([clip], captions, classifier, Stage3Stats())
    assert [(r["frame_index"], r["x1"]) for r in paper] == [(0, 0.0), (2, 4.0), (2, 40.0), (3, 6.0)]
    tracked = assign_boxes([clip], captions, classifier, Stage3Stats(), Tracking(), PARSER)
    assert [(r["frame_index"], r["x1"], r["phrase_index"]) for r in tracked] == [(0, 0.0, 0), (1, 2.0, 0), (2, 4.0, 0),
                                                                               (3, 6.0, 0)]
    assert {r["track"] for r in tracked} == {0} and tracked[0]["score"] == 0.75
    assert "track" not in complete_tubes(tracked, {"c_0": [0, 2, 4, 6]}, max_missing=2)[0]
    with pytest.raises(ValueError, match="needs the phrase parser"):
        assign_boxes([clip], captions, classifier, Stage3Stats(), Tracking())
    with pytest.raises(ValueError, match="unknown stage-3 tracking"):
        Tracking("kalman")


def test_tubes_of_tracks_fill_gaps_even_with_two_instances_of_a_phrase():
    grid = {"c_0": list(range(0, 20, 2))}
    rows = [_row(0, 0.0) | {"track": 0}, _row(0, 50.0, box_index=1) | {"track": 1},
            _row(2, 20.0) | {"track": 0}, _row(2, 50.0, box_index=1) | {"track": 1}]
    out = complete_tubes([dict(r) for r in rows], grid, max_missing=2)
    assert [(r["frame_index"], r["x1"]) for r in out if r["frame_index"] == 1] == [(1, 10.0), (1, 50.0)]
    assert all("track" not in r for r in out)


def test_box_iou():
    iou = box_iou(np.array([[0.0, 0.0, 10.0, 10.0]]),
                  np.array([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 0.0, 0.0]]))
    assert iou.tolist() == [[1 / 3, 0.0, 0.0]]


def test_unknown_engine():
    with pytest.raises(ValueError, match="unknown stage-3 engine"):
        make_classifier("regex", PARSER, {})
