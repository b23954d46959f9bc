"""`grove eval iground --protocol official` reproduces what GROVE's own `eval_iground.py` printed on a fixed fixture.

tests/fixtures/official_eval/ holds official-layout predictions that cover frames dropping queries,
frames all keeping K < Q boxes, empty frames, a GT clip without boxes, extra predicted frames,
missing and empty predictions (see make_fixture.py), and `official_output.json`: the numbers the
UNMODIFIED official script printed on them, plus the same numbers unrounded and per video, written by
scripts/official_parity/official_eval.py (all-MiniLM-L6-v2 standing in for bert-base-uncased on both
sides; SPICE left out). No official checkout is needed here; the README there says how to regenerate.
"""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from evaluation.embeddings import packaged_model_path
from orchestration.cli import app

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official_eval"
GT, PRED = FIXTURE / "gt_iground.pkl", FIXTURE / "pred_official.pkl"
runner = CliRunner()


@pytest.fixture(scope="module")
def official():
    return json.loads((FIXTURE / "official_output.json").read_text())


@pytest.fixture(scope="module")
def ours():
    result = runner.invoke(app, ["eval", "iground", "--gt", str(GT), "--pred", str(PRED), "--protocol", "official",
                                 "--embedding-model", str(packaged_model_path()), "--json", "--per-clip"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_stand_in_bert_is_the_model_the_official_side_ran(official):
    import hashlib

    for name, digest in official["stand_in_bert"]["sha256"].items():
        assert hashlib.sha256((packaged_model_path() / name).read_bytes()).hexdigest() == digest, name


def test_every_printed_number_is_reproduced(official, ours):
    printed = dict(official["printed"])
    assert printed.pop("SPICE") == "nan"  # left out on the official side (no CoreNLP models offline)
    assert set(printed) == {"AP50", "Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "mIoU", "Recall"}
    for name, text in printed.items():
        assert f"{ours['metrics'][name]:.3f}" == text, name
    assert "SPICE" in ours["unavailable"]


def test_every_unrounded_number_is_reproduced(official, ours):
    for name, value in official["unrounded"].items():
        if name == "SPICE":
            continue
        assert ours["metrics"][name] == pytest.approx(value, abs=1e-9), name


def test_per_video_numbers_and_the_scored_clips(official, ours):
    assert list(ours["per_item"]) == official["video_ids"]  # the same clips, in the same order
    for name in ("AP50", "mIoU", "Recall"):
        for key, value in zip(official["video_ids"], official["per_video"][name]):
            assert ours["per_item"][key][name] == pytest.approx(value, abs=1e-9), (name, key)
    assert -1.0 in official["per_video"]["AP50"]  # the GT clip without boxes, averaged in
    counts = ours["counts"]
    assert counts["items"] == 36 and counts["scored"] == len(official["video_ids"]) == 33 and counts["skipped"] == 3
    assert counts["skipped_by_reason"] == {"empty_prediction": 1, "missing_prediction": 2}
    missing = {p["item"] for p in ours["problems"] if p["kind"] == "missing_prediction"}
    assert {f"Warning: {key} not found in predictions." for key in missing} == set(official["warnings"])
    dropped = {p["item"] for p in ours["problems"] if p["kind"] == "extra_frame_dropped"}
    assert dropped == {"vid006_2", "vid013_1"}
    assert ours["protocol"]["record_layouts"] == {"all_query": 0, "kept_only_with_probs": 33, "kept_only_without_probs": 0}
    assert str(packaged_model_path()) in ours["protocol"]["embedding_model"]


def test_the_fixture_holds_the_cases_it_claims():
    with open(PRED, "rb") as handle:
        pred = pickle.load(handle)
    with open(GT, "rb") as handle:
        gt = pickle.load(handle)
    assert all(len(b) == 2 for b in pred["vid003_3"]["pred_bboxes"])  # every frame keeps K = 2 of Q = 3
    assert all(len(p) == 3 for p in pred["vid003_3"]["probs_temp_objectness"])
    assert all(len(b) == 1 and len(p) == 2 for b, p in zip(pred["vid004_0"]["pred_bboxes"],
                                                           pred["vid004_0"]["probs_temp_objectness"]))
    assert not any(gt["vid005_1"]["bboxes"])  # a GT clip without boxes
    assert len(pred["vid006_2"]["pred_bboxes"]) == len(gt["vid006_2"]["bboxes"]) + 1
    assert "vid007_3" not in pred and pred["vid008_0"]["pred_bboxes"] == []
    assert all(len(b) == 0 for b in pred["vid009_1"]["pred_bboxes"])  # every frame empty
    frames = [(b, p) for r in pred.values() for b, p in zip(r["pred_bboxes"], r["probs_temp_objectness"])]
    assert any(len(b) == 0 for b, _ in frames) and any(0 < len(b) < len(p) for b, p in frames)
    assert all(isinstance(b, np.ndarray) and b.dtype == np.float32 and b.shape[1:] == (4,) for b, _ in frames)
    assert any(len(labels) < len(boxes) for labels, boxes in zip(pred["vid010_2"]["pred_labels"],
                                                                 pred["vid010_2"]["pred_bboxes"]))


def test_the_fixture_is_rebuilt_identically():
    import sys

    sys.path.insert(0, str(FIXTURE))
    try:
        from make_fixture import build
    finally:
        sys.path.remove(str(FIXTURE))
    gt, pred = build()
    with open(GT, "rb") as handle:
        assert pickle.load(handle) == gt
    with open(PRED, "rb") as handle:
        stored = pickle.load(handle)
    assert list(stored) == list(pred)
    for key, record in pred.items():
        for name, value in record.items():
            if name in ("pred_bboxes", "probs_temp_objectness"):
                assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(stored[key][name], value))
            else:
                assert stored[key][name] == value


@pytest.fixture()
def broken_predictions(tmp_path):
    with open(PRED, "rb") as handle:
        pred = pickle.load(handle)
    pred["vid001_1"]["pred_bboxes"][0] = pred["vid001_1"]["pred_bboxes"][0] * np.nan  # unreadable: NaN box
    pred["vid002_2"]["pred_bboxes"] = pred["vid002_2"]["pred_bboxes"][:-2]  # frame count mismatch
    pred["vid002_2"]["pred_labels"] = pred["vid002_2"]["pred_labels"][:-2]
    pred["vid002_2"]["probs_temp_objectness"] = pred["vid002_2"]["probs_temp_objectness"][:-2]
    pred["vid011_3"] = "not a record"
    path = tmp_path / "pred.pkl"
    with open(path, "wb") as handle:
        pickle.dump(pred, handle)
    return path


def test_bad_records_fail_without_the_skip_flag(broken_predictions):
    args = ["eval", "iground", "--gt", str(GT), "--pred", str(broken_predictions), "--no-captions", "--no-recall", "--json"]
    failed = runner.invoke(app, args)
    assert failed.exit_code == 4
    assert "3 of 36 iground items have predictions that cannot be scored (vid001_1, vid011_3, vid002_2)" in failed.stderr
    report = json.loads(failed.stdout.strip().splitlines()[-1])
    reasons = {p["item"]: p["message"] for p in report["problems"] if p["severity"] == "error"}
    assert "NaN" in reasons["vid001_1"] and "record must be a dict" in reasons["vid011_3"]
    assert "predicted frames for" in reasons["vid002_2"]

    passed = runner.invoke(app, args + ["--skip-bad-clips"])
    assert passed.exit_code == 0, passed.output
    report = json.loads(passed.stdout.strip().splitlines()[-1])
    assert report["counts"]["scored"] == 30 and report["counts"]["skipped"] == 6
    assert report["counts"]["skipped_by_reason"] == {"empty_prediction": 1, "invalid_prediction": 3, "missing_prediction": 2}
    assert report["protocol"]["skip_bad_clips"] is True

    text = runner.invoke(app, args[:-1] + ["--skip-bad-clips"])
    assert "30 of 36 items scored" in text.output
    assert "left out: 6 (empty_prediction: 1, invalid_prediction: 3, missing_prediction: 2)" in text.output
    assert "[error] vid001_1:" in text.output
