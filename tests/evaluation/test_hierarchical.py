"""Video ReCap level metrics: rouge_score's ROUGE-L, nlg-eval-style CIDEr and METEOR (no PTB tokenizer)."""

import pytest
from pycocoevalcap.cider.cider import Cider

from evaluation.hierarchical import recap_level_metrics, rouge_l, rouge_tokens


def test_rouge_l_vectors():
    assert rouge_tokens("A man cuts the cutting-board!") == ["a", "man", "cuts", "the", "cutting", "board"]
    # LCS "man cuts board" = 3 of 5 predicted and 6 reference tokens
    assert rouge_l("a man cuts the cutting-board", "The man cuts a board") == pytest.approx(2 * 0.6 * 0.5 / 1.1)
    assert rouge_l("", "anything") == 0.0


def test_level_metrics(meteor):
    refs = {"1": "A man cuts an onion.", "2": "The woman washes the dishes", "3": "a dog sleeps"}
    preds = {"1": "a man cuts an onion", "2": "a woman washes dishes", "4": "extra"}
    report = recap_level_metrics(refs, preds, "segment", meteor)
    cider, _ = Cider().compute_score({"1": ["a man cuts an onion."], "2": ["the woman washes the dishes"]},
                                     {"1": ["a man cuts an onion"], "2": ["a woman washes dishes"]})
    assert report.metrics["CIDEr"] == pytest.approx(cider)  # "onion." keeps its full stop: no PTB tokenizer
    expected_meteor = meteor.score([["a man cuts an onion."], ["the woman washes the dishes"]],
                                   ["a man cuts an onion", "a woman washes dishes"])[0]
    assert report.metrics["METEOR"] == pytest.approx(expected_meteor)
    assert report.metrics["ROUGE_L"] == pytest.approx((1.0 + rouge_l(refs["2"], preds["2"])) / 2)
    assert {(p.item, p.kind) for p in report.problems} == {("3", "missing_prediction"), ("4", "unknown_item")}
