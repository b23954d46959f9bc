"""evaluation.iground against a step-by-step restatement of GROVE's eval_iground.py on random splits, and hand-checked vectors.

The real official script is run on a fixed fixture in test_official_parity.py.
"""

import dataclasses

import numpy as np
import pytest

from evaluation.iground import (
    CORRECTED,
    OFFICIAL,
    IGroundProtocol,
    _frame_detections,
    evaluate_iground,
    gt_from_tables,
    greedy_recall_tp,
    load_iground_gt,
)
from grove.data.howtoground import records_to_tables, write_official
from grove.data.predictions import clip_prediction, official_record
from tests.evaluation.iground_fixtures import hashed_bag_of_words, make_split
from tests.evaluation.official_iground import official_iground


def _inputs(gt_records, pred_records):
    clips, boxes = records_to_tables(gt_records, "iground", "test")
    return gt_from_tables(clips, boxes), {k: clip_prediction(k, v) for k, v in pred_records.items()}


def _assert_equal_to_reference(report, reference, count):
    assert report.num_scored == len(reference["ap_per_video"]) == count
    for key, ap in reference["ap_per_video"].items():
        assert report.per_item[key]["AP50"] == pytest.approx(ap, abs=1e-12)
        assert report.per_item[key]["Recall"] == pytest.approx(reference["recall_per_video"][key], abs=1e-12)
        assert report.per_item[key]["mIoU"] == pytest.approx(reference["miou_per_video"][key], abs=1e-12)
    for name in ("AP50", "Recall", "mIoU"):
        assert report.metrics[name] == pytest.approx(reference[name], abs=1e-12)


@pytest.mark.parametrize("all_query", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_official_protocol_equals_the_official_evaluator(seed, all_query):
    gt_records, pred_records = make_split(num_clips=25, frames=14, seed=seed, all_query=all_query)
    gt, preds = _inputs(gt_records, pred_records)
    report = evaluate_iground(gt, preds, hashed_bag_of_words, OFFICIAL, captions=False)
    reference = official_iground(gt_records, pred_records, hashed_bag_of_words)
    _assert_equal_to_reference(report, reference, 25)
    assert report.per_item["vid00003_3"]["AP50"] == -1.0  # clip 3 has no GT: its -1 is averaged in
    assert {p.kind for p in report.problems} <= {"box_outside_frame", "extra_frame_dropped"}
    dropped = {p.item for p in report.problems if p.kind == "extra_frame_dropped"}
    assert dropped == {k for k in gt if int(k[3:8]) % 5 == 0}
    assert report.protocol["record_layouts"]["all_query" if all_query else "kept_only_with_probs"] == 25


def test_frames_that_all_keep_the_same_number_of_boxes_are_scored():
    # regression: every frame keeps K = 1 of Q = 3 queries (the old vectorised path raised IndexError here)
    gt_records, _ = make_split(num_clips=3, frames=6, seed=1)
    preds = {}
    for key, gt in gt_records.items():
        boxes = [np.array([gt["bboxes"][t][0] if gt["bboxes"][t] else [0, 0, 5, 5]] * 3, np.float32)
                 for t in range(len(gt["bboxes"]))]
        probs = [np.array([0.9, 0.1, 0.2], np.float32)] * len(boxes)
        preds[key] = official_record(boxes, probs, gt["phrases"][:3], "a caption", "", 0.5).to_record()
        del preds[key]["all_bboxes"]
        assert all(len(b) == 1 for b in preds[key]["pred_bboxes"])
    gt, loaded = _inputs(gt_records, preds)
    for protocol in (OFFICIAL, CORRECTED, dataclasses.replace(OFFICIAL, objectness_threshold=0.6)):
        report = evaluate_iground(gt, loaded, hashed_bag_of_words, protocol, captions=False)
        assert report.num_scored == 3 and not report.error_items
    reference = official_iground(gt_records, preds, hashed_bag_of_words)
    _assert_equal_to_reference(evaluate_iground(gt, loaded, hashed_bag_of_words, OFFICIAL, captions=False), reference, 3)


def _rewritten(pred_records, threshold):
    """What the official inference would have written at `threshold`, from all-query records."""
    return {key: official_record(r["all_bboxes"], r["probs_temp_objectness"], r["pred_phrases"], r["pred_text"],
                                 "", threshold).to_record() for key, r in pred_records.items()}


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.7])
def test_threshold_refilters_all_query_records_as_inference_would(threshold):
    gt_records, pred_records = make_split(num_clips=12, frames=10, seed=7, all_query=True)
    gt, preds = _inputs(gt_records, pred_records)
    protocol = dataclasses.replace(OFFICIAL, objectness_threshold=threshold)
    report = evaluate_iground(gt, preds, hashed_bag_of_words, protocol, captions=False)
    _assert_equal_to_reference(report, official_iground(gt_records, _rewritten(pred_records, threshold),
                                                        hashed_bag_of_words), 12)
    assert report.protocol["objectness_threshold"] == threshold


def test_threshold_on_kept_only_records_can_only_drop_boxes():
    gt_records, pred_records = make_split(num_clips=12, frames=10, seed=7, all_query=True)
    kept_only = {k: {n: v for n, v in r.items() if n not in ("all_bboxes", "objectness_threshold")}
                 for k, r in pred_records.items()}
    gt, preds = _inputs(gt_records, kept_only)
    above = evaluate_iground(gt, preds, hashed_bag_of_words, dataclasses.replace(OFFICIAL, objectness_threshold=0.7),
                             captions=False)
    _assert_equal_to_reference(above, official_iground(gt_records, _rewritten(pred_records, 0.7), hashed_bag_of_words), 12)
    below = evaluate_iground(gt, preds, hashed_bag_of_words, dataclasses.replace(OFFICIAL, objectness_threshold=0.3),
                             captions=False)
    assert below.num_scored == 0 and len(below.error_items) == 12
    assert all("below the one this kept-only record was filtered with" in p.message for p in below.problems
               if p.severity == "error")


def test_by_query_pairing_agrees_with_the_zip_on_official_records_and_not_on_all_box_records():
    gt_records, pred_records = make_split(num_clips=10, frames=8, seed=3)
    gt, preds = _inputs(gt_records, pred_records)
    by_query = dataclasses.replace(OFFICIAL, pairing="by_query")
    for key, pred in preds.items():
        for t in range(pred.num_frames):
            zipped, by_q = _frame_detections(key, t, pred, OFFICIAL), _frame_detections(key, t, pred, by_query)
            np.testing.assert_array_equal(zipped[0], by_q[0])
            assert zipped[1] == by_q[1]
    # records of earlier grove versions: every query's box, the kept labels: the zip pairs the wrong boxes
    gt_records, pred_records = make_split(num_clips=6, frames=8, seed=3, all_query=True)
    old = {k: {**r, "pred_bboxes": r["all_bboxes"]} for k, r in pred_records.items()}
    for record in old.values():
        del record["all_bboxes"], record["objectness_threshold"]
    gt, preds = _inputs(gt_records, old)
    report = evaluate_iground(gt, preds, hashed_bag_of_words, OFFICIAL, captions=False)
    assert "layout_mismatch" in {p.kind for p in report.problems}
    # without probabilities by_query cannot know the queries: a named error
    no_probs = {k: {n: v for n, v in r.items() if n != "probs_temp_objectness"} for k, r in old.items()}
    gt, preds = _inputs(gt_records, no_probs)
    report = evaluate_iground(gt, preds, hashed_bag_of_words, by_query, captions=False)
    assert report.num_scored == 0 and all("no probs_temp_objectness" in p.message for p in report.problems
                                          if p.severity == "error")
    assert evaluate_iground(gt, preds, hashed_bag_of_words, OFFICIAL, captions=False).num_scored == 6


def test_objectness_ap_scores_use_each_kept_box_query_probability():
    gt_records, pred_records = make_split(num_clips=4, frames=6, seed=2)
    _, preds = _inputs(gt_records, pred_records)
    protocol = dataclasses.replace(OFFICIAL, ap_scores="objectness")
    for key, pred in preds.items():
        for t in range(pred.num_frames):
            probs = pred.probs_temp_objectness[t]
            _, labels, scores = _frame_detections(key, t, pred, protocol)
            np.testing.assert_array_equal(scores, probs[np.flatnonzero(probs > 0.5)][:len(labels)])


def _embed_identity(phrases):
    """One-hot per distinct word set: similarity 1 for equal phrases, < 0.5 for unrelated ones."""
    return hashed_bag_of_words(phrases, dim=512)


def test_recall_greedy_stops_at_the_first_failing_pair():
    # one frame, GT [a, b]; prediction [a (IoU 0.9 with GT a), b (IoU 0.95 with GT a, 0.6 with GT b)]
    # the best-IoU pair (GT a, pred b) has different phrases: the official loop stops there -> TP 0
    gt = np.array([[0, 0, 99, 99], [200, 0, 299, 99]], float)
    dt = np.array([[0, 0, 89, 99], [0, 0, 94, 99]], float)
    dt[1] = [5, 0, 99, 99]
    phrases = ["red onion", "wooden board"]
    unit = _embed_identity(phrases)
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    tp = greedy_recall_tp(gt, np.array([0, 0]), np.array([0, 1]), dt, np.array([0, 0]), np.array([0, 1]), 1, unit)
    assert tp.tolist() == [0]
    # with the phrases swapped on the predictions, the best pair agrees, then the next pair's IoU is 0 -> TP 1
    tp = greedy_recall_tp(gt, np.array([0, 0]), np.array([0, 1]), dt, np.array([0, 0]), np.array([1, 0]), 1, unit)
    assert tp.tolist() == [1]
    # IoU exactly 0.5 passes (the loop stops only below the threshold): +1 areas 10x10 vs 10x20 overlap 10x10
    tp = greedy_recall_tp(np.array([[0, 0, 9, 19]], float), np.array([0]), np.array([0]),
                          np.array([[0, 0, 9, 9]], float), np.array([0]), np.array([0]), 1, unit)
    assert tp.tolist() == [1]


def _tiny(num_frames=3, with_gt=True):
    gt = {"video_fname": "v.mp4", "video_id": "v", "clip_id": "0", "fps": 25.0, "clip_start_frame": 0,
          "clip_end_frame": 10, "width": 100, "height": 80, "caption": "a man cuts an onion",
          "tagged_caption": "", "phrases": ["a man", "an onion"],
          "bboxes": [[[10, 10, 50, 60], [60, 20, 90, 50]] if with_gt else [] for _ in range(num_frames)],
          "labels": [["a man", "an onion"] if with_gt else [] for _ in range(num_frames)]}
    pred = {"pred_bboxes": [np.array([[10, 10, 50, 60], [60, 20, 90, 50]], np.float32) for _ in range(num_frames)],
            "pred_labels": [["a man", "an onion"] for _ in range(num_frames)], "pred_phrases": ["a man", "an onion"],
            "pred_text": "a man cuts an onion", "probs_temp_objectness": [np.array([0.9, 0.8], np.float32)] * num_frames}
    return gt, pred


def test_perfect_prediction_and_empty_gt_policy():
    gt_a, pred_a = _tiny()
    gt_b, pred_b = _tiny(with_gt=False)
    gt_b["clip_id"] = "1"
    gt, preds = _inputs({"v_0": gt_a, "v_1": gt_b}, {"v_0": pred_a, "v_1": pred_b})
    official = evaluate_iground(gt, preds, _embed_identity, OFFICIAL, captions=False)
    # recall IoU on xywh read as corners: the onion box [60, 20, 30, 30] is "inverted" and never matches;
    # mIoU: the whole 2x2 matrix [[1, 0], [0, 0]] per frame
    assert official.per_item["v_0"] == {"AP50": 1.0, "Recall": 0.5, "mIoU": 0.25}
    assert official.per_item["v_1"] == {"AP50": -1.0, "Recall": 0.0, "mIoU": 0.0}
    assert official.metrics == {"AP50": 0.0, "mIoU": 0.125, "Recall": 0.25}  # the empty clip's -1 and 0s are averaged in
    corrected = evaluate_iground(gt, preds, _embed_identity, CORRECTED, captions=False)
    assert corrected.per_item["v_0"] == {"AP50": 1.0, "Recall": 1.0, "mIoU": 0.5}
    assert corrected.metrics == {"AP50": 1.0, "mIoU": 0.5, "Recall": 1.0}  # the empty clip is left out


def test_bad_input_is_named_and_counted_while_good_clips_are_scored():
    gt_records, pred_records = {}, {}
    for c in range(6):
        gt_records[f"v_{c}"], pred_records[f"v_{c}"] = _tiny()
        gt_records[f"v_{c}"]["clip_id"] = str(c)
    pred_records["v_1"]["pred_bboxes"] = pred_records["v_1"]["pred_bboxes"][:2]  # frame count mismatch
    pred_records["v_1"]["pred_labels"] = pred_records["v_1"]["pred_labels"][:2]
    pred_records["v_1"]["probs_temp_objectness"] = pred_records["v_1"]["probs_temp_objectness"][:2]
    del pred_records["v_2"]  # missing prediction
    pred_records["other_9"] = pred_records["v_0"]  # unknown clip
    pred_records["v_3"]["pred_bboxes"] = [np.array([[120, 10, 150, 60], [60, 20, 90, 50]], np.float32)] * 3  # outside
    pred_records["v_4"]["pred_bboxes"] = [np.array([[10, 10, 50, 60], [60, 20, 90, 50]], np.float32)] * 4  # one extra frame
    pred_records["v_4"]["pred_labels"] = [["a man", "an onion"]] * 4
    pred_records["v_4"]["probs_temp_objectness"] = [np.array([0.9, 0.8], np.float32)] * 4
    pred_records["v_5"] = {**pred_records["v_5"], "pred_bboxes": [], "pred_labels": [], "probs_temp_objectness": []}
    gt, preds = _inputs(gt_records, pred_records)
    report = evaluate_iground(gt, preds, _embed_identity, OFFICIAL, captions=False)
    problems = {(p.item, p.kind, p.severity) for p in report.problems}
    assert problems == {("v_1", "invalid_prediction", "error"), ("v_2", "missing_prediction", "skipped"),
                        ("v_5", "empty_prediction", "skipped"), ("other_9", "unknown_clip", "warning"),
                        ("v_3", "box_outside_frame", "warning"), ("v_4", "extra_frame_dropped", "warning")}
    assert "2 predicted frames for 3 GT frames" in str(report.problems)
    assert report.num_scored == 3 and report.error_items == ["v_1"]
    assert report.counts["skipped"] == 3
    assert report.counts["skipped_by_reason"] == {"empty_prediction": 1, "invalid_prediction": 1, "missing_prediction": 1}
    assert report.per_item["v_4"]["AP50"] == 1.0  # the extra last frame is dropped, as the official script does
    # per frame an FP (the clamped, empty man box) then a TP: precision 0.5 up to recall 0.5
    assert report.per_item["v_3"]["AP50"] == pytest.approx(0.5 * 51 / 101, abs=1e-12)
    assert "left out: 3 (empty_prediction: 1, invalid_prediction: 1, missing_prediction: 1)" in report.summary_lines()[1]
    zero = evaluate_iground(gt, preds, _embed_identity, dataclasses.replace(OFFICIAL, missing_predictions="zero"),
                            captions=False)
    assert zero.per_item["v_2"] == {"AP50": 0.0, "Recall": 0.0, "mIoU": 0.0} and zero.num_scored == 5
    assert zero.per_item["v_5"] == {"AP50": 0.0, "Recall": 0.0, "mIoU": 0.0}


def test_each_distinct_phrase_is_embedded_once():
    gt_records, pred_records = make_split(num_clips=10, frames=10, seed=2)
    gt, preds = _inputs(gt_records, pred_records)
    calls = []

    def counting(phrases):
        calls.append(list(phrases))
        return hashed_bag_of_words(phrases)

    evaluate_iground(gt, preds, counting, OFFICIAL, captions=False)
    embedded = [p for call in calls for p in call]
    every_phrase = {p for c in gt.values() for p in c.labels} | {p for pred in preds.values() for f in pred.pred_labels for p in f}
    assert len(embedded) == len(set(embedded)) and set(embedded) <= every_phrase


def test_dataset_folder_and_pickle_give_the_same_ground_truth(tmp_path):
    from grove.data.dataset import write_manifest
    from grove.data.schema import write_boxes, write_clips

    gt_records, _ = make_split(num_clips=4, frames=6, seed=4)
    write_official(gt_records, tmp_path / "gt.pkl")
    clips, boxes = records_to_tables(gt_records, "iground", "test")
    folder = tmp_path / "dataset"
    write_clips(clips, folder / "clips.parquet")
    write_boxes(boxes, folder / "boxes_raw.parquet")
    write_manifest(folder, {"name": "t"})
    from_pickle, from_folder = load_iground_gt(tmp_path / "gt.pkl"), load_iground_gt(folder, "test")
    assert list(from_pickle) == list(from_folder)
    for key in from_pickle:
        np.testing.assert_array_equal(from_pickle[key].boxes, from_folder[key].boxes)
        assert from_pickle[key].labels == from_folder[key].labels
    with pytest.raises(ValueError, match="no clips of split 'val'"):
        load_iground_gt(folder, "val")


def test_protocol_rejects_unknown_options():
    with pytest.raises(ValueError, match="pairing"):
        IGroundProtocol(pairing="zip")
    with pytest.raises(ValueError, match="objectness_threshold"):
        IGroundProtocol(objectness_threshold=1.5)
