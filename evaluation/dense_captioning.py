"""Dense video captioning (ActivityNet Captions): METEOR over tIoU {0.3, 0.5, 0.7, 0.9} and SODA_c (metrics_spec.md 3).

METEOR, as densevid_eval `evaluate.py` (2019 and later):
- at most 1000 predictions per video; each prediction is paired with every GT sentence (of every
  reference file) with tIoU >= tau, tIoU = inter / (min(hull, len_a + len_b) + 1e-8); a prediction
  matching nothing is paired with a garbage reference (a random 10-20 lowercase letters, seeded;
  or the pre-2019 fixed "abc123!@#");
- non-ASCII characters become spaces, PTB tokenization, then one METEOR corpus score per video;
- `missing_videos`: "zero" (the original: a GT video without predictions scores 0 and counts) or
  "skip" (VTimeLLM's copy); final score = mean over the taus of the mean over videos.
SODA_c, as fujiso/SODA (`soda_type="c"`, no tIoU threshold):
- predictions and GT sorted by start; S[g, p] = METEOR of p against g alone, I[g, p] = tIoU;
  the best order-preserving one-to-one alignment maximises the sum of I * S (an LCS-like DP);
  p = sum / |P|, r = sum / |G|, F = 2pr / (p + r); reference files merged into one sorted list
  (`merge_references`, the CLI default) or the best F over files; mean F over videos in both GT and
  predictions ("skip", fujiso) or with 0 for unpredicted GT videos ("zero", TimeChat).
Both need METEOR's Java; pass a `MeteorScorer` to share one JVM.
"""

from __future__ import annotations

import random
import string
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from evaluation.captions import MeteorScorer, ptb_tokenize
from evaluation.iou import temporal_iou_densevid
from evaluation.report import EvalReport, Problem

TIOUS = (0.3, 0.5, 0.7, 0.9)
MAX_PROPOSALS = 1000
References = Sequence[Mapping[str, Mapping[str, Any]]]


def _segments(entry: Mapping[str, Any]) -> list[tuple[tuple[float, float], str]]:
    return [((float(t[0]), float(t[1])), s) for t, s in zip(entry["timestamps"], entry["sentences"])]


def _predictions(predictions: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[dict, list[Problem]]:
    clean: dict[str, list[tuple[tuple[float, float], str]]] = {}
    problems = []
    for vid, items in predictions.items():
        try:
            clean[vid] = [((float(p["timestamp"][0]), float(p["timestamp"][1])), str(p["sentence"])) for p in items]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            problems.append(Problem(vid, "invalid_prediction", f"each prediction needs 'timestamp' [s, e] and 'sentence' ({exc!r})"))
    return clean, problems


class _Tokens:
    """PTB tokens of every distinct string, computed in one Java call."""

    def __init__(self, texts: set[str]) -> None:
        ordered = sorted(texts)
        self._map = dict(zip(ordered, ptb_tokenize(ordered, fold_accents=False)))

    def __getitem__(self, text: str) -> str:
        return self._map[text]


def dense_captioning_meteor(
    predictions: Mapping[str, Sequence[Mapping[str, Any]]], references: References, tious: Sequence[float] = TIOUS,
    missing_videos: Literal["zero", "skip"] = "zero", garbage: Literal["random", "abc123"] = "random",
    seed: int = 0, meteor: MeteorScorer | None = None, split: str = "val",
) -> EvalReport:
    """densevid_eval's METEOR averaged over `tious` (and per tau as `METEOR@tau`)."""
    preds, problems = _predictions(predictions)
    gt_vids = sorted(set().union(*[set(r) for r in references]))
    problems += [Problem(v, "unknown_video", "prediction for a video not in the references", "warning")
                 for v in preds if v not in set(gt_vids)]
    rng = random.Random(seed)
    pairs: dict[float, dict[str, list[tuple[str, str]]]] = {}
    for tau in tious:
        pairs[tau] = {}
        for vid in gt_vids:
            if vid not in preds:
                continue
            video_pairs = []
            for (interval, sentence) in preds[vid][:MAX_PROPOSALS]:
                matched = [g for ref in references if vid in ref for (g_interval, g) in _segments(ref[vid])
                           if temporal_iou_densevid(interval, g_interval) >= tau]
                if not matched:
                    matched = ["abc123!@#" if garbage == "abc123" else
                               "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(10, 20)))]
                video_pairs += [(sentence, g) for g in matched]
            pairs[tau][vid] = video_pairs
    tokens = _Tokens({t for by_vid in pairs.values() for vp in by_vid.values() for pair in vp for t in pair})
    owned = meteor is None
    scorer = meteor or MeteorScorer()
    metrics: dict[str, float] = {}
    try:
        for tau in tious:
            scores = []
            for vid in gt_vids:
                if vid not in preds or not pairs[tau].get(vid):
                    if missing_videos == "zero":
                        scores.append(0.0)
                    continue
                video_pairs = pairs[tau][vid]
                score, _ = scorer.score([[tokens[g]] for _, g in video_pairs], [tokens[p] for p, _ in video_pairs])
                scores.append(score)
            metrics[f"METEOR@{tau}"] = float(np.mean(scores)) if scores else 0.0
    finally:
        if owned:
            scorer.close()
    metrics = {"METEOR": float(np.mean([metrics[f"METEOR@{t}"] for t in tious])), **metrics}
    missing = [v for v in gt_vids if v not in preds]
    problems += [Problem(v, "missing_prediction", "no prediction for this video" +
                         ("; scored 0" if missing_videos == "zero" else "; left out"), "warning") for v in missing]
    protocol = {"tious": list(tious), "pairing": "tIoU >= tau (densevid iou: union = min(hull, sum of lengths) + 1e-8)",
                "max_proposals": MAX_PROPOSALS, "missing_videos": missing_videos,
                "garbage_reference": garbage if garbage == "abc123" else f"random 10-20 lowercase letters, seed {seed}",
                "non_ascii": "replaced by spaces", "tokenizer": "PTB", "meteor": "corpus score per video, mean over videos"}
    return EvalReport("dense_captioning", split, metrics, protocol, num_items=len(gt_vids),
                      num_scored=len(gt_vids) - len(missing), problems=problems)


def soda_alignment(scores: np.ndarray) -> float:
    """fujiso/SODA `chased_dp_assignment`'s optimum: best order-preserving one-to-one sum of `scores` [G, P]."""
    rows, cols = scores.shape
    dp = np.zeros((rows + 1, cols + 1))
    for i in range(rows):
        for j in range(cols):
            dp[i + 1, j + 1] = max(dp[i, j + 1], dp[i + 1, j], dp[i, j] + scores[i, j])
    return float(dp[rows, cols])


def soda_c(
    predictions: Mapping[str, Sequence[Mapping[str, Any]]], references: References, merge_references: bool = True,
    missing_videos: Literal["skip", "zero"] = "skip", meteor: MeteorScorer | None = None, split: str = "val",
) -> EvalReport:
    """SODA_c (and its precision/recall), METEOR-weighted, as fujiso/SODA computes it."""
    preds, problems = _predictions(predictions)
    gt_vids = sorted(set().union(*[set(r) for r in references]))
    if merge_references:
        merged: dict[str, dict[str, Any]] = {}
        for vid in gt_vids:
            segments = [s for ref in references if vid in ref for s in _segments(ref[vid])]
            merged[vid] = {"timestamps": [s[0] for s in segments], "sentences": [s[1] for s in segments]}
        references = [merged]
    golds = [{vid: sorted(_segments(ref[vid]), key=lambda s: s[0][0]) for vid in ref} for ref in references]
    ordered = {vid: sorted(items, key=lambda s: s[0][0]) for vid, items in preds.items()}
    vids = [v for v in gt_vids if v in ordered] if missing_videos == "skip" else gt_vids
    tokens = _Tokens({s for v in vids for _, s in ordered.get(v, [])} |
                     {s for gold in golds for v in vids for _, s in gold.get(v, [])})
    owned = meteor is None
    scorer = meteor or MeteorScorer()
    results = []
    try:
        for vid in vids:
            pred = ordered.get(vid, [])
            if not pred:
                results.append((0.0, 0.0, 0.0))
                continue
            best = None
            for gold in golds:
                if vid not in gold or not gold[vid]:
                    continue
                g_items = gold[vid]
                _, per_item = scorer.score([[tokens[g]] for _, g in g_items for _ in pred],
                                           [tokens[p] for _ in g_items for _, p in pred])
                meteor_matrix = np.array(per_item).reshape(len(g_items), len(pred))
                iou = np.array([[temporal_iou_densevid(p_int, g_int) for p_int, _ in pred] for g_int, _ in g_items])
                total = soda_alignment(iou * meteor_matrix)
                p, r = total / len(pred), total / len(g_items)
                f = 2 * p * r / (p + r) if p + r > 0 else 0.0
                if best is None or f > best[2]:
                    best = (p, r, f)
            results.append(best or (0.0, 0.0, 0.0))
    finally:
        if owned:
            scorer.close()
    array = np.array(results).reshape(-1, 3)
    metrics = {"SODA_c": float(array[:, 2].mean()) if len(array) else 0.0,
               "SODA_c_precision": float(array[:, 0].mean()) if len(array) else 0.0,
               "SODA_c_recall": float(array[:, 1].mean()) if len(array) else 0.0}
    protocol = {"scorer": "METEOR per (GT, prediction) pair x tIoU", "tiou_threshold": 0.0,
                "merge_references": merge_references, "missing_videos": missing_videos, "tokenizer": "PTB"}
    return EvalReport("soda_c", split, metrics, protocol, num_items=len(gt_vids), num_scored=len(vids),
                      problems=problems)
