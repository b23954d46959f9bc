"""Video ReCap hierarchical captioning (clip / segment / video summary): CIDEr, METEOR, ROUGE-L per level.

As VideoRecap's `eval.py` (metrics_spec.md 4), which is not plain pycocoevalcap:
- text is only `.strip().lower()`-ed; no PTB tokenizer (nlg-eval splits CIDEr n-grams on whitespace,
  punctuation stays attached);
- CIDEr-D over the whole evaluated level (pycocoevalcap's scorer, the code nlg-eval bundles);
- METEOR 1.5 with `-norm` (the jar normalises and tokenises);
- ROUGE-L as Google's rouge_score computes `rougeL`/`rougeLsum` on one-line captions: lower-case,
  non-alphanumerics -> spaces, no stemming, LCS F-measure. VideoRecap reports the median of 1000
  bootstrap means (`evaluate`'s default aggregator, non-deterministic); this reports the plain mean.
One reference per item; each level is scored on its own (CIDEr's IDF is per level).
"""

from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from evaluation.captions import MeteorScorer, sanitize_caption, score_tokenized
from evaluation.report import EvalReport, Problem

_NON_ALPHANUMERIC = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenizer without stemming."""
    return [t for t in _NON_ALPHANUMERIC.sub(" ", text.lower()).split() if t]


def lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(reference: str, prediction: str) -> float:
    """rouge_score `rougeL` F-measure (0 when either side has no token)."""
    target, candidate = rouge_tokens(reference), rouge_tokens(prediction)
    if not target or not candidate:
        return 0.0
    lcs = lcs_length(target, candidate)
    precision, recall = lcs / len(candidate), lcs / len(target)
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def recap_level_metrics(
    references: Mapping[str, str], predictions: Mapping[str, str], level: str = "clip",
    meteor: MeteorScorer | None = None, split: str = "val",
) -> EvalReport:
    """CIDEr, METEOR and ROUGE_L of one hierarchy level; items without a prediction are reported and left out."""
    problems = [Problem(k, "missing_prediction", "no prediction for this item") for k in references if k not in predictions]
    problems += [Problem(k, "unknown_item", "prediction for an item without reference", "warning")
                 for k in predictions if k not in references]
    keys = [k for k in references if k in predictions]
    refs = {k: [sanitize_caption(references[k]).strip().lower()] for k in keys}
    hyps = {k: sanitize_caption(predictions[k]).strip().lower() for k in keys}
    corpus, _ = score_tokenized(refs, hyps, ("METEOR", "CIDEr"), meteor)
    rouge = [rouge_l(references[k], predictions[k]) for k in keys]
    metrics = {"CIDEr": corpus["CIDEr"], "ROUGE_L": float(np.mean(rouge)) if rouge else 0.0, "METEOR": corpus["METEOR"]}
    protocol = {"level": level, "preprocessing": "strip().lower(), whitespace tokens (nlg-eval)",
                "rouge": "rouge_score rougeL F, no stemmer, plain mean (not the bootstrap median)",
                "meteor": "METEOR 1.5 -norm", "cider": "CIDEr-D over the level"}
    return EvalReport(f"recap_{level}", split, metrics, protocol, num_items=len(references), num_scored=len(keys),
                      problems=problems)
