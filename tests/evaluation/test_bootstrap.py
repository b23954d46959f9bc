"""Bootstrap intervals over test clips and paired differences (evaluation.bootstrap).

Pure-function checks on known distributions, then the claim the module rests on: a metric recomputed
from per-clip statistics on a resample equals the evaluator run on that resampled clip set (clips
drawn twice scored twice), for the box metrics and for the pooled caption metrics (Java's METEOR).
"""

import json

import numpy as np
import pytest

from evaluation.bootstrap import (
    BootstrapSettings,
    ClipStatistics,
    add_intervals,
    intervals,
    paired_differences,
    percentile_interval,
    resample_counts,
)
from evaluation.captions import score_captions
from evaluation.iground import CORRECTED, OFFICIAL, evaluate_iground, evaluate_iground_protocols, gt_from_tables
from grove.data.howtoground import records_to_tables
from grove.data.predictions import clip_prediction
from tests.evaluation.iground_fixtures import hashed_bag_of_words, make_split

KEYS = [f"clip{i:03d}" for i in range(40)]


def _mean_stats(values, keys=None):
    keys = keys or [f"c{i:04d}" for i in range(len(values))]
    return ClipStatistics(keys, {"m": (np.asarray(values, np.float64), None)})


def test_counts_draw_n_clips_per_resample_and_follow_the_seed():
    counts = resample_counts(KEYS, 500, seed=3)
    assert counts.shape == (500, 40) and (counts.sum(axis=1) == 40).all()
    assert np.array_equal(counts, resample_counts(KEYS, 500, seed=3))
    assert not np.array_equal(counts, resample_counts(KEYS, 500, seed=4))
    # the draws index the sorted keys: listing the clips in another order resamples the same clips
    order = np.random.default_rng(0).permutation(40)
    shuffled = resample_counts([KEYS[i] for i in order], 500, seed=3)
    assert np.array_equal(shuffled, counts[:, order])
    with pytest.raises(ValueError, match="unique"):
        resample_counts(["a", "a"], 10, 0)


def test_interval_of_a_normal_mean_has_the_textbook_width():
    values = np.random.default_rng(1).normal(1.0, 2.0, 400)
    (interval,) = intervals(_mean_stats(values), {"m": values.mean()}, BootstrapSettings(2000, seed=0)).values()
    expected = 2 * 1.959964 * values.std() / np.sqrt(len(values))
    assert interval.high - interval.low == pytest.approx(expected, rel=0.08)
    assert interval.low < values.mean() < interval.high
    assert (interval.confidence, interval.resamples, interval.seed) == (0.95, 2000, 0)


def test_intervals_cover_the_true_mean_at_about_their_level():
    rng = np.random.default_rng(7)
    settings = BootstrapSettings(1000, seed=11, confidence=0.9)
    covered = []
    for _ in range(300):  # skewed data (exponential, mean 1), 60 clips per experiment
        values = rng.exponential(1.0, 60)
        (interval,) = intervals(_mean_stats(values), {"m": values.mean()}, settings).values()
        covered.append(interval.low <= 1.0 <= interval.high)
    assert 0.84 <= np.mean(covered) <= 0.96


def test_percentile_interval_and_settings():
    assert percentile_interval(np.arange(101.0), 0.9) == pytest.approx((5.0, 95.0))
    assert BootstrapSettings.from_mapping({"resamples": 200}) == BootstrapSettings(200, 0, 0.95)
    assert BootstrapSettings.from_mapping(None) == BootstrapSettings()
    with pytest.raises(ValueError, match="unknown key"):
        BootstrapSettings.from_mapping({"samples": 10})
    with pytest.raises(ValueError, match="confidence"):
        BootstrapSettings(confidence=95)
    assert intervals(_mean_stats([1.0, 2.0]), {"m": 1.5}, BootstrapSettings(resamples=0)) == {}


def test_a_mean_over_included_clips_and_an_empty_resample():
    stats = ClipStatistics(["a", "b", "c"], {"m": (np.array([1.0, -1.0, 3.0]), np.array([True, False, True]))})
    counts = np.array([[3, 0, 0], [0, 3, 0], [1, 1, 1]])
    assert stats.replicates(counts)["m"].tolist() == [1.0, 0.0, 2.0]  # no included clip drawn: 0, as `mean` of nothing


def _caption_inputs():
    refs = {f"v{i}_0": [text] for i, text in enumerate([
        "a man cuts an onion on a board", "a woman pours water into a glass", "two dogs run in the park",
        "someone stirs the soup in a pot", "a child plays with a red ball", "the chef slices bread with a knife"])}
    hyps = dict(zip(refs, ["a man cuts an onion on a board", "a woman pours milk into a cup", "", "a person stirs soup",
                           "a kid plays with a ball", "the man cuts bread"]))
    return refs, hyps


def test_paired_difference_of_a_model_with_itself_is_exactly_zero(meteor):
    refs, hyps = _caption_inputs()
    scores = score_captions(refs, hyps, meteor=meteor)
    keys = list(refs)
    stats = ClipStatistics(keys, {"CIDEr": (np.array([scores.per_item[k]["CIDEr"] for k in keys]), None)},
                           dict(scores.statistics))
    settings = BootstrapSettings(500, seed=5)
    differences = paired_differences(stats, scores.corpus, stats.aligned(keys[::-1]), scores.corpus, settings)
    assert set(differences) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "CIDEr"}
    for interval in differences.values():
        assert (interval.value, interval.low, interval.high) == (0.0, 0.0, 0.0) and not interval.separates
    # another model on the same clips: its replicates are drawn on the same resamples
    worse = {k: "a thing" for k in keys}
    other = score_captions(refs, worse, meteor=meteor)
    other_stats = ClipStatistics(keys, {"CIDEr": (np.array([other.per_item[k]["CIDEr"] for k in keys]), None)},
                                 dict(other.statistics))
    difference = paired_differences(stats, scores.corpus, other_stats, other.corpus, settings)["METEOR"]
    assert difference.value == pytest.approx(scores.corpus["METEOR"] - other.corpus["METEOR"]) and difference.separates
    with pytest.raises(ValueError, match="same clips on both sides: 6 vs 5 clips, 1 only in the first"):
        paired_differences(stats, scores.corpus, ClipStatistics(keys[:5]), {}, settings)


def _renamed(records, key, copy):
    """A record drawn a second (third...) time, under a key of its own."""
    video, clip = key.rsplit("_", 1)
    record = dict(records[key])
    if "video_id" in record:
        record |= {"video_id": f"{video}x{copy}", "video_fname": f"{video}x{copy}_{clip}.mp4"}
    return f"{video}x{copy}_{clip}", record


def _resampled(counts_row, keys, *record_sets):
    out = [{} for _ in record_sets]
    for key, count in zip(keys, counts_row):
        for copy in range(count):
            for records, resampled in zip(record_sets, out):
                new_key, record = _renamed(records, key, copy)
                resampled[new_key] = record
    return out


def _evaluate(gt_records, pred_records, protocol):
    clips, boxes = records_to_tables(gt_records, "iground", "test")
    gt = gt_from_tables(clips, boxes)
    return evaluate_iground(gt, {k: clip_prediction(k, v) for k, v in pred_records.items()}, hashed_bag_of_words,
                            protocol, captions=False)


@pytest.mark.parametrize("protocol", [OFFICIAL, CORRECTED], ids=["official", "corrected"])
def test_box_metrics_on_a_resample_equal_the_evaluator_on_the_resampled_clips(protocol):
    gt_records, pred_records = make_split(num_clips=10, frames=6, seed=2, all_query=True)
    report = _evaluate(gt_records, pred_records, protocol)
    stats = report.clip_statistics
    assert set(stats.metrics) == {"AP50", "mIoU", "Recall"} and stats.keys == list(gt_records)
    counts = resample_counts(stats.keys, 4, seed=1)
    replicates = stats.replicates(counts)
    for b, row in enumerate(counts):
        resampled = _evaluate(*_resampled(row, stats.keys, gt_records, pred_records), protocol)
        for name in ("AP50", "mIoU", "Recall"):
            assert replicates[name][b] == pytest.approx(resampled.metrics[name], abs=1e-12), (name, b)


def test_caption_metrics_on_a_resample_equal_pycocoevalcap_on_the_resampled_clips(meteor):
    refs, hyps = _caption_inputs()
    keys = list(refs)
    scores = score_captions(refs, hyps, meteor=meteor)
    stats = ClipStatistics(keys, {name: (np.array([scores.per_item[k][name] for k in keys]), None)
                                  for name in ("ROUGE_L", "CIDEr")}, dict(scores.statistics))
    counts = resample_counts(keys, 2, seed=4)
    replicates = stats.replicates(counts)
    as_records = {k: {"r": refs[k], "h": hyps[k]} for k in keys}
    for b, row in enumerate(counts):
        (resampled,) = _resampled(row, keys, as_records)
        rescored = score_captions({k: r["r"] for k, r in resampled.items()}, {k: r["h"] for k, r in resampled.items()},
                                  meteor=meteor)
        # BLEU and METEOR from summed statistics: what Java / pycocoevalcap give on the resampled corpus
        for name in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L"):
            assert replicates[name][b] == pytest.approx(rescored.corpus[name], abs=1e-12), (name, b)
        # CIDEr-D keeps the whole split's IDF: the mean of the clips' split-level scores, not a rescoring
        per_clip = np.array([scores.per_item[k]["CIDEr"] for k in keys])
        assert replicates["CIDEr"][b] == pytest.approx((row * per_clip).sum() / row.sum(), abs=1e-12)


def test_both_protocols_side_by_side_with_intervals_in_the_json():
    gt_records, pred_records = make_split(num_clips=8, frames=5, seed=4, all_query=True)
    clips, boxes = records_to_tables(gt_records, "iground", "test")
    gt, preds = gt_from_tables(clips, boxes), {k: clip_prediction(k, v) for k, v in pred_records.items()}
    report = evaluate_iground_protocols(gt, preds, hashed_bag_of_words, {"official": OFFICIAL, "corrected": CORRECTED},
                                        captions=False)
    alone = evaluate_iground(gt, preds, hashed_bag_of_words, CORRECTED, captions=False)
    assert report.alternatives["corrected"].metrics == alone.metrics  # the same numbers as a run of its own
    out = json.loads(json.dumps(add_intervals(report, BootstrapSettings(300, seed=2)).to_dict()))
    assert out["protocol"]["preset"] == "official"
    corrected = out["other_protocols"]["corrected"]
    assert corrected["protocol"]["preset"] == "corrected" and corrected["metrics"] == alone.metrics
    for part in (out, corrected):
        assert set(part["intervals"]) == set(part["metrics"]) == {"AP50", "mIoU", "Recall"}
        for name, interval in part["intervals"].items():
            assert interval["low"] <= interval["high"] and (interval["resamples"], interval["seed"]) == (300, 2)
        assert part["uncertainty"]["clips"] == 8 and part["uncertainty"]["resamples"] == 300
        # the intervals are reproduced from the JSON's clip statistics alone
        stats = ClipStatistics.from_dict(part["clip_statistics"])
        again = intervals(stats, part["metrics"], BootstrapSettings(300, seed=2))
        assert {n: [i.low, i.high] for n, i in again.items()} == {n: [i["low"], i["high"]] for n, i in part["intervals"].items()}
