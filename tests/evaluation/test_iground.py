"""evaluation.iground against a step-by-step restatement of GROVE's eval_iground.py, and hand-checked vectors."""

import dataclasses

import numpy as np
import pytest

from evaluation.iground import (
    CORRECTED,
    OFFICIAL,
    IGroundProtocol,
    _clip_detections,
    _frame_detections,
    evaluate_iground,
    gt_from_tables,
    greedy_recall_tp,
    load_iground_gt,
)
from grove.data.howtoground import records_to_tables, write_official
from grove.data.predictions import clip_prediction
from tests.evaluation.iground_fixtures import hashed_bag_of_words, make_split
from tests.evaluation.official_iground import official_iground


def _inputs(gt_records, pred_records):
    clips, boxes = records_to_tables(gt_records, "iground", "test")
    return gt_from_tables(clips, boxes), {k: clip_prediction(k, v) for k, v in pred_records.items()}


@pytest.mark.parametrize("seed", range(4))
def test_official_protocol_equals_the_official_evaluator(seed):
    gt_records, pred_records = make_split(num_clips=25, frames=14, seed=seed)
    gt, preds = _inputs(gt_records, pred_records)
    report = evaluate_iground(gt, preds, hashed_bag_of_words, OFFICIAL, captions=False)
    reference = official_iground(gt_records, pred_records, hashed_bag_of_words)
    assert report.num_scored == len(reference["ap_per_video"]) == 25
    for key, ap in reference["ap_per_video"].items():
        assert report.per_item[key]["AP50"] == pytest.approx(ap, abs=1e-12)
        assert report.per_item[key]["Recall"] == pytest.approx(reference["recall_per_video"][key], abs=1e-12)
    assert report.metrics["AP50"] == pytest.approx(reference["AP50"], abs=1e-12)  # clip 3 has no GT: its -1 is averaged in
    assert report.metrics["Recall"] == pytest.approx(reference["Recall"], abs=1e-12)
    assert report.per_item["vid00003_3"]["AP50"] == -1.0


def _by_query_reference(gt_records, pred_records, threshold):
    """The corrected pairing and xyxy recall, restated: keep box j with phrase j when its objectness passes."""
    fixed = {}
    for key, pred in pred_records.items():
        boxes, labels = [], []
        for frame, probs in zip(pred["pred_bboxes"], pred["probs_temp_objectness"]):
            kept = [j for j in range(min(len(probs), len(pred["pred_phrases"]))) if probs[j] > threshold]
            boxes.append(frame[kept])
            labels.append([pred["pred_phrases"][j] for j in kept])
        fixed[key] = {**pred, "pred_bboxes": boxes, "pred_labels": labels}
    return fixed


def test_corrected_pairing_and_threshold_zero_against_a_restatement():
    gt_records, pred_records = make_split(num_clips=20, frames=12, seed=7)
    gt, preds = _inputs(gt_records, pred_records)
    for threshold in (0.0, 0.5):
        protocol = dataclasses.replace(OFFICIAL, pairing="by_query", objectness_threshold=threshold)
        report = evaluate_iground(gt, preds, hashed_bag_of_words, protocol, captions=False)
        reference = official_iground(gt_records, _by_query_reference(gt_records, pred_records, threshold), hashed_bag_of_words)
        assert report.metrics["AP50"] == pytest.approx(reference["AP50"], abs=1e-12)
        assert report.metrics["Recall"] == pytest.approx(reference["Recall"], abs=1e-12)
    kept_all = evaluate_iground(gt, preds, hashed_bag_of_words, dataclasses.replace(CORRECTED, objectness_threshold=0.0), captions=False)
    kept_half = evaluate_iground(gt, preds, hashed_bag_of_words, CORRECTED, captions=False)
    assert kept_all.metrics != kept_half.metrics
    assert kept_half.protocol["pairing"] == "by_query" and kept_half.protocol["recall_boxes"] == "xyxy"


def test_vectorised_frame_selection_equals_the_per_frame_rule():
    _, pred_records = make_split(num_clips=6, frames=9, seed=3)
    for key, record in pred_records.items():
        pred = clip_prediction(key, record)
        n = pred.num_frames
        for protocol in (OFFICIAL, CORRECTED, dataclasses.replace(OFFICIAL, objectness_threshold=0.0)):
            boxes, labels, scores, frames = _clip_detections(pred, n, protocol)
            per_frame = [_frame_detections(key, t, pred, protocol) for t in range(n)]
            np.testing.assert_array_equal(boxes, np.concatenate([b for b, _, _ in per_frame]))
            assert labels == [label for _, ls, _ in per_frame for label in ls]
            np.testing.assert_array_equal(scores, np.concatenate([s for _, _, s in per_frame]))
            np.testing.assert_array_equal(frames, np.concatenate([np.full(len(b), t) for t, (b, _, _) in enumerate(per_frame)]))


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
    # recall IoU on xywh read as corners: the onion box [60, 20, 30, 30] is "inverted" and never matches
    assert official.per_item["v_0"] == {"AP50": 1.0, "Recall": 0.5}
    assert official.per_item["v_1"] == {"AP50": -1.0, "Recall": 0.0}
    assert official.metrics == {"AP50": 0.0, "Recall": 0.25}  # the empty clip's -1 and 0 are averaged in
    corrected = evaluate_iground(gt, preds, _embed_identity, CORRECTED, captions=False)
    assert corrected.per_item["v_0"] == {"AP50": 1.0, "Recall": 1.0}
    assert corrected.metrics == {"AP50": 1.0, "Recall": 1.0}  # the empty clip is left out


def test_bad_input_is_named_and_counted_while_good_clips_are_scored():
    gt_records, pred_records = {}, {}
    for c in range(5):
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
    gt, preds = _inputs(gt_records, pred_records)
    report = evaluate_iground(gt, preds, _embed_identity, OFFICIAL, captions=False)
    problems = {(p.item, p.kind, p.severity) for p in report.problems}
    assert problems == {("v_1", "invalid_prediction", "error"), ("v_2", "missing_prediction", "error"),
                        ("other_9", "unknown_clip", "error"), ("v_3", "box_outside_frame", "warning")}
    assert "3 predicted frames" not in str(report.problems) and "2 predicted frames for 3 GT frames" in str(report.problems)
    assert report.num_scored == 3 and report.counts["items_with_errors"] == 3
    assert report.per_item["v_4"]["AP50"] == 1.0  # the extra last frame is dropped, as the official script does
    # per frame an FP (the clamped, empty man box) then a TP: precision 0.5 up to recall 0.5
    assert report.per_item["v_3"]["AP50"] == pytest.approx(0.5 * 51 / 101, abs=1e-12)
    zero = evaluate_iground(gt, preds, _embed_identity, dataclasses.replace(OFFICIAL, missing_predictions="zero"),
                            captions=False)
    assert zero.per_item["v_2"] == {"AP50": 0.0, "Recall": 0.0} and zero.num_scored == 4


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
