"""Dense captioning METEOR (densevid_eval) and SODA_c (fujiso/SODA), recomputed by hand from their rules."""

import itertools

import numpy as np
import pytest

from evaluation.captions import ptb_tokenize
from evaluation.dense_captioning import dense_captioning_meteor, soda_alignment, soda_c

REFS = [{"v1": {"timestamps": [[0, 10], [10, 20]], "sentences": ["A man cuts an onion.", "He fries it in a pan."]},
         "v2": {"timestamps": [[0, 5]], "sentences": ["a dog runs in the park"]},
         "v3": {"timestamps": [[0, 8]], "sentences": ["a woman sings"]}}]
PREDS = {"v1": [{"timestamp": [0, 9], "sentence": "a man is cutting an onion"},
                {"timestamp": [9, 21], "sentence": "he cooks it in a pan"},
                {"timestamp": [30, 40], "sentence": "someone dances"}],
         "v2": [{"timestamp": [0, 5], "sentence": "a dog runs"}],
         "x9": [{"timestamp": [0, 1], "sentence": "ignored"}]}


def _video_meteor(meteor, pairs):
    tokens = ptb_tokenize([t for pair in pairs for t in pair], fold_accents=False)
    return meteor.score([[tokens[2 * i + 1]] for i in range(len(pairs))], [tokens[2 * i] for i in range(len(pairs))])[0]


def test_meteor_over_tious_with_the_densevid_pairing(meteor):
    report = dense_captioning_meteor(PREDS, REFS, tious=(0.5, 0.9), garbage="abc123", meteor=meteor)
    garbage = "abc123!@#"
    # tIoU 0.5: v1 pred0-ref0 (0.9), pred1-ref1 (10/12), pred2 unmatched; v2 perfect; v3 unpredicted (0)
    v1 = _video_meteor(meteor, [("a man is cutting an onion", "A man cuts an onion."),
                                ("he cooks it in a pan", "He fries it in a pan."), ("someone dances", garbage)])
    v2 = _video_meteor(meteor, [("a dog runs", "a dog runs in the park")])
    assert report.metrics["METEOR@0.5"] == pytest.approx((v1 + v2 + 0.0) / 3, abs=1e-12)
    # tIoU 0.9: pred1 (0.833) falls below, and so does pred0: 9 / (10 + 1e-8) < 0.9 (densevid's epsilon)
    v1_09 = _video_meteor(meteor, [("a man is cutting an onion", garbage), ("he cooks it in a pan", garbage),
                                   ("someone dances", garbage)])
    assert report.metrics["METEOR@0.9"] == pytest.approx((v1_09 + v2) / 3, abs=1e-12)
    assert report.metrics["METEOR"] == pytest.approx((report.metrics["METEOR@0.5"] + report.metrics["METEOR@0.9"]) / 2)
    skipped = dense_captioning_meteor(PREDS, REFS, tious=(0.5,), garbage="abc123", missing_videos="skip", meteor=meteor)
    assert skipped.metrics["METEOR@0.5"] == pytest.approx((v1 + v2) / 2, abs=1e-12)
    assert {(p.item, p.kind) for p in report.problems} == {("x9", "unknown_video"), ("v3", "missing_prediction")}
    assert "seed 0" in dense_captioning_meteor(PREDS, REFS, tious=(0.3,), meteor=meteor).protocol["garbage_reference"]


def _tiou(a, b):
    """densevid/SODA iou: union = min(hull, sum of lengths), + 1e-8."""
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / (min(max(a[1], b[1]) - min(a[0], b[0]), (a[1] - a[0]) + (b[1] - b[0])) + 1e-8)


def _brute_force_alignment(scores):
    rows, cols = scores.shape
    best = 0.0
    for k in range(1, min(rows, cols) + 1):
        for r in itertools.combinations(range(rows), k):
            for c in itertools.combinations(range(cols), k):
                best = max(best, sum(scores[i, j] for i, j in zip(r, c)))
    return best


@pytest.mark.parametrize("seed", range(6))
def test_soda_dp_is_the_best_order_preserving_matching(seed):
    scores = np.random.default_rng(seed).random((int(seed % 3) + 2, int(seed % 4) + 1))
    assert soda_alignment(scores) == pytest.approx(_brute_force_alignment(scores))


def test_soda_c_from_pairwise_meteor(meteor):
    report = soda_c(PREDS, REFS, meteor=meteor)
    # v1: S[g, p] = METEOR of p against g alone, I = tIoU; F from the best alignment of I * S
    golds, preds = REFS[0]["v1"], PREDS["v1"]
    tokens = ptb_tokenize(golds["sentences"] + [p["sentence"] for p in preds], fold_accents=False)
    gold_tokens, pred_tokens = tokens[:2], tokens[2:]
    single = np.array([[meteor.score([[g]], [p])[0] for p in pred_tokens] for g in gold_tokens])
    iou = np.array([[_tiou(p["timestamp"], g) for p in preds] for g in golds["timestamps"]])
    total = _brute_force_alignment(iou * single)
    p, r = total / 3, total / 2
    v1 = 2 * p * r / (p + r)
    v2_tokens = ptb_tokenize(["a dog runs in the park", "a dog runs"])
    v2 = meteor.score([[v2_tokens[0]]], [v2_tokens[1]])[0]  # one pair: p = r = F = tIoU x METEOR
    v2 *= _tiou([0, 5], [0, 5])
    assert report.metrics["SODA_c"] == pytest.approx((v1 + v2) / 2, abs=1e-12)  # v3 unpredicted: skipped (fujiso)
    zero = soda_c(PREDS, REFS, missing_videos="zero", meteor=meteor)
    assert zero.metrics["SODA_c"] == pytest.approx((v1 + v2) / 3, abs=1e-12)
