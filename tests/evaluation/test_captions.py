"""Caption metrics equal pycocoevalcap's own pipeline (COCOEvalCap's tokenizer and scorers); Java failures are clear."""

import contextlib
import io
import os
import stat
import time

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from evaluation.captions import (
    ALL_METRICS,
    JavaError,
    MeteorScorer,
    ptb_tokenize,
    sanitize_caption,
    score_captions,
    score_tokenized,
)

REFERENCES = {
    "a": ["The woman, wearing a red shirt, talks (loudly) to the reporter!"],
    "b": ["A man cuts an onion on a cutting-board.", "someone is slicing an onion"],
    "c": ["two dogs run in the park"],
    "d": ["someone pours water into a glass"],
    "e": ["a child plays with a red ball in the garden"],
}
HYPOTHESES = {"a": "a woman talks to a reporter", "b": "the man is cutting an onion", "c": "",
              "d": "someone pours milk into a cup", "e": "a kid is playing with a ball"}


@pytest.fixture(scope="module")
def ours(meteor):
    return score_captions(REFERENCES, HYPOTHESES, meteor=meteor)


@pytest.fixture(scope="module")
def reference():
    """COCOEvalCap.evaluate's steps with pycocoevalcap's own classes (its own JVMs)."""
    with contextlib.redirect_stdout(io.StringIO()):
        tokenizer = PTBTokenizer()
        gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in REFERENCES.items()})
        res = tokenizer.tokenize({k: [{"caption": v}] for k, v in HYPOTHESES.items()})
        out, per_item = {}, {}
        for scorer, names in [(Bleu(4), ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4"]), (Meteor(), ["METEOR"]),
                              (Rouge(), ["ROUGE_L"]), (Cider(), ["CIDEr"])]:
            score, scores = scorer.compute_score(gts, res)
            score, scores = (score, scores) if isinstance(score, list) else ([score], [scores])
            out.update(zip(names, score))
            per_item.update(zip(names, scores))
    return out, per_item, gts, res


def test_corpus_scores_equal_pycocoevalcap(ours, reference):
    expected, _, _, _ = reference
    assert set(ours.corpus) == set(ALL_METRICS)
    for name in ALL_METRICS:
        assert ours.corpus[name] == pytest.approx(float(expected[name]), abs=1e-12), name


def test_per_item_scores_equal_pycocoevalcap(ours, reference):
    _, per_item, _, _ = reference
    for name in ("Bleu_4", "METEOR", "ROUGE_L", "CIDEr"):
        for k, key in enumerate(REFERENCES):
            assert ours.per_item[key][name] == pytest.approx(float(per_item[name][k]), abs=1e-12)
    # METEOR's corpus score pools statistics: it is not the mean of the items
    meteor_items = [ours.per_item[k]["METEOR"] for k in REFERENCES]
    assert abs(ours.corpus["METEOR"] - sum(meteor_items) / len(meteor_items)) > 1e-4


def test_tokenization_equals_pycocoevalcap_and_the_lrb_vector(reference):
    _, _, gts, res = reference
    ours = ptb_tokenize([c for v in REFERENCES.values() for c in v] + list(HYPOTHESES.values()))
    assert ours == [c for v in gts.values() for c in v] + [v[0] for v in res.values()]
    assert ours[0] == "the woman wearing a red shirt talks -lrb- loudly -rrb- to the reporter"
    assert ours[1] == "a man cuts an onion on a cutting-board"


def test_cider_of_a_single_item_is_zero(meteor):
    corpus, _ = score_tokenized({"x": ["a man cuts an onion"]}, {"x": "a man cuts an onion"}, ("CIDEr",), meteor)
    assert corpus["CIDEr"] == 0.0


def test_line_breaks_separators_and_non_ascii_cannot_desync_java(meteor):
    assert sanitize_caption("café\nline|||two\r\tend") == "cafe line two  end"
    assert sanitize_caption("café", fold_accents=False) == "caf "
    refs = {"1": ["a man\ncuts ||| an onion"], "2": ["the soup is très hot"]}
    hyps = {"1": "a man cuts\r an onion", "2": "the soup is hot ||| "}
    scores = score_captions(refs, hyps, metrics=("METEOR", "CIDEr"), meteor=meteor)
    clean = score_captions({"1": ["a man cuts an onion"], "2": ["the soup is tres hot"]},
                           {"1": "a man cuts an onion", "2": "the soup is hot"}, metrics=("METEOR", "CIDEr"), meteor=meteor)
    assert scores.corpus == pytest.approx(clean.corpus)


def test_spice_is_reported_unavailable_not_faked(ours):
    assert "SPICE" not in ours.corpus and "offline" in ours.unavailable["SPICE"]
    assert ours.to_dict()["unavailable"]["SPICE"] == ours.unavailable["SPICE"]


def _fake_java(tmp_path, body):
    path = tmp_path / "java"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_a_dying_jvm_is_a_clear_error(tmp_path):
    scorer = MeteorScorer(java=_fake_java(tmp_path, "echo 'Error: Could not create the Java Virtual Machine' >&2; exit 1"))
    with pytest.raises(JavaError, match=r"(?s)(exited|stopped reading).*Could not create"):
        scorer.score([["a b"]], ["a b"])


def test_a_hung_jvm_is_killed_within_the_timeout(tmp_path):
    scorer = MeteorScorer(timeout_s=1.0, java=_fake_java(tmp_path, "exec sleep 60"))
    start = time.monotonic()
    with pytest.raises(JavaError, match="no answer within 1s"):
        scorer.score([["a b"]], ["a b"])
    assert time.monotonic() - start < 10
    assert scorer._process.poll() is not None  # killed, not left behind


def test_missing_java_and_a_hanging_tokenizer(tmp_path):
    with pytest.raises(JavaError, match="no 'java' on PATH"):
        ptb_tokenize(["a"], java=os.path.join(str(tmp_path), "absent-java"))
    with pytest.raises(JavaError, match="no result within 1s"):
        ptb_tokenize(["a"], timeout_s=1.0, java=_fake_java(tmp_path, "exec sleep 60"))


def test_mismatched_ids_are_rejected():
    with pytest.raises(ValueError, match="same ids"):
        score_captions({"a": ["x"]}, {"b": "x"})
    with pytest.raises(ValueError, match="non-empty list"):
        score_captions({"a": "x"}, {"a": "x"})
