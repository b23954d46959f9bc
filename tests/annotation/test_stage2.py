import pytest

from annotation.engines import LLM_ENV, InvalidAnswer
from annotation.records import ClipFailure, ClipFrames, FrameAnnotation, VideoCaption
from annotation.stage2 import (
    Stage2,
    load_prompt,
    normalise_tags,
    stage2_prompt,
    strip_tags,
    tagged_phrases,
    validate_caption,
)
from annotation.svo import SVO, SpacyParser

PARSER = SpacyParser()


def _clip(key, frames):
    return ClipFrames(key, [FrameAnnotation(t, 2 * t, caption, phrases, [(0, 0, 5, 5)] * len(phrases))
                            for t, (caption, phrases) in enumerate(frames)])


CUP_CLIP = _clip("cup_0", [
    ("A small red cup moves to the left next to a large blue box.", ["a small red cup", "a large blue box"]),
    ("A small red mug moves to the left.", ["a small red mug"]),
    ("In this image, a small red cup moves to the left, with a large blue box nearby.", ["a small red cup", "a large blue box"]),
    ("A large blue box is in the scene and a small red cup moves to the left.", ["a large blue box", "a small red cup"]),
    ("A small green ball is visible.", ["a small green ball"]),  # a one-frame hallucination
    ("A small red cup moves to the left.", ["a small red cup"]),
])
HAND_CLIP = _clip("hand_0", [
    ("A hand in a green glove pushes a small yellow ball to the right.", ["a hand in a green glove", "a small yellow ball"]),
    ("A hand in a green glove pushes a small yellow ball to the right.", ["a hand in a green glove", "a small yellow ball"]),
    ("A palm in a green glove pushes a small yellow sphere to the right.", ["a palm in a green glove", "a small yellow sphere"]),
])


def test_tag_helpers():
    tagged = normalise_tags("<p> a man </p> cuts <p>a tomato</p>  with <p>a man</p>.")
    assert tagged == "<p>a man</p> cuts <p>a tomato</p> with <p>a man</p>."
    assert tagged_phrases(tagged) == ["a man", "a tomato"]
    assert strip_tags(tagged) == "a man cuts a tomato with a man."


def test_consensus_keeps_frequent_entities_with_their_usual_name_and_action():
    (caption,), stats = Stage2("consensus", parser=PARSER).run([CUP_CLIP])
    assert caption.source == "consensus" and stats.consensus == 1
    assert caption.tagged_caption == "<p>a small red cup</p> moves to the left and <p>a large blue box</p> is in the scene."
    assert caption.phrases == ["a small red cup", "a large blue box"]  # the green ball was seen once: dropped


def test_consensus_tags_the_object_a_human_acts_on_in_place():
    (caption,), _ = Stage2("consensus", parser=PARSER).run([HAND_CLIP])
    assert caption.tagged_caption == "<p>a hand in a green glove</p> pushes <p>a small yellow ball</p> to the right."


def test_consensus_fails_a_clip_with_nothing_seen():
    empty = _clip("empty_0", [("An empty background.", [])] * 3)
    (result,), _ = Stage2("consensus", parser=PARSER).run([empty])
    assert isinstance(result, ClipFailure) and "no object" in result.reason


def test_prompt_lists_sampled_frames_after_the_in_context_examples():
    template = load_prompt("stage2.txt")
    prompt = stage2_prompt([(SVO("a cup", "move", "", (("to", "the left"),)),), None, ()], template)
    assert "Example 2" in prompt and "CAPTION" in prompt
    assert prompt.endswith('1: [["a cup", "move", "", ["to", "the left"]]]\n2: []\nAnswer:\n')


def test_clause_frames_are_spread_over_the_clip():
    stage2 = Stage2("consensus", parser=PARSER, clause_frames=3)
    assert stage2.clause_frame_mask(9) == [True, False, False, False, True, False, False, False, True]
    assert stage2.clause_frame_mask(2) == [True, True]


@pytest.mark.parametrize(
    "answer, reason",
    [
        ("no dictionary", "not a dictionary"),
        ("{'CAPTION': 42}", "not a non-empty string"),
        ("{'CAPTION': 'a cup moves.'}", "no <p></p>-tagged"),
        ("{'CAPTION': '<p>a cup</p> moves <p>to</p></p>.'}", "unbalanced"),
        ("{'CAPTION': '<p>a giraffe</p> moves.'}", "names nothing"),
    ],
)
def test_invalid_captions_are_rejected_with_a_reason(answer, reason):
    with pytest.raises(InvalidAnswer, match=reason):
        validate_caption(answer, {"cup", "box"}, PARSER)


def test_a_valid_caption_is_normalised():
    assert validate_caption('{"CAPTION": "\'<p> a red cup </p> slides left.\'"}', {"cup"}, PARSER) == "<p>a red cup</p> slides left."


class Scripted:
    """An LLM engine that answers from a script, one list per call; records the prompts it got."""

    def __init__(self, *calls):
        self.calls = list(calls)
        self.prompts = []

    def describe(self):
        return {"engine": "scripted"}

    def generate(self, prompts, schemas=None):
        self.prompts.append(list(prompts))
        assert schemas is not None and len(schemas) == len(prompts)
        return self.calls.pop(0)


def _llm_stage2(generator):
    stage2 = Stage2("consensus", parser=PARSER)
    from annotation.stage2 import LlmAggregator

    stage2.llm = LlmAggregator(generator, PARSER, stage2.consensus)
    return stage2


def test_llm_answers_are_used_repaired_once_or_replaced_by_consensus():
    generator = Scripted(
        ["{'CAPTION': '<p>a red mug</p> slides to the left.'}", "garbage", "{'CAPTION': 'untagged'}"],
        ["{'CAPTION': '<p>a hand</p> pushes <p>a yellow ball</p>.'}", "still garbage"],
    )
    empty = _clip("x_0", [("A small red cup moves.", ["a small red cup"])] * 2)
    results, stats = _llm_stage2(generator).run([CUP_CLIP, HAND_CLIP, empty])
    assert [r.source for r in results] == ["llm", "llm-repaired", "consensus-fallback"]
    assert results[0].phrases == ["a red mug"]
    assert results[2].note.startswith("the answer is not a dictionary")
    assert (stats.llm, stats.repaired, stats.fallbacks) == (1, 1, 1)
    assert sum(stats.fallback_reasons.values()) == 1
    assert len(generator.prompts[0]) == 3 and len(generator.prompts[1]) == 2  # one call per round, per shard
    assert "cannot be used" in generator.prompts[1][0]


def test_transformers_engine_end_to_end_falls_back_on_garbage(tiny_causal_lm, monkeypatch):
    monkeypatch.delenv(LLM_ENV, raising=False)  # it would name the model instead
    stage2 = Stage2("transformers", model=str(tiny_causal_lm), max_new_tokens=12, batch_size=4)
    results, stats = stage2.run([CUP_CLIP, HAND_CLIP])
    assert all(isinstance(r, VideoCaption) for r in results)
    assert stats.fallbacks == 2 and [r.source for r in results] == ["consensus-fallback"] * 2
    assert stats.as_dict()["fallbacks"] == 2 and sum(stats.fallback_reasons.values()) == 2
