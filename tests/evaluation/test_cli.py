"""`grove eval ...`: official layouts in, one JSON object out, bad clips named and counted, runs recorded."""

import json
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from evaluation.tables import benchmark_across_checkpoints
from grove.data.howtoground import records_to_tables, write_official
from grove.data.predictions import official_record
from orchestration.cli import app
from tests.evaluation.iground_fixtures import make_split

runner = CliRunner()


@pytest.fixture(scope="module")
def iground_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("iground")
    gt, pred = make_split(num_clips=8, frames=8, seed=5, all_query=True)
    write_official(gt, root / "gt.pkl")
    with open(root / "pred_all_query.pkl", "wb") as handle:
        pickle.dump(pred, handle)
    pred = {k: {n: v for n, v in r.items() if n not in ("all_bboxes", "objectness_threshold")} for k, r in pred.items()}
    pred["vid00001_1"] = {**pred["vid00001_1"], "pred_bboxes": [b * np.nan for b in pred["vid00001_1"]["pred_bboxes"]]}
    pred["vid00002_2"] = {k: v for k, v in pred["vid00002_2"].items() if k != "pred_text"}
    del pred["vid00004_4"]
    pred["nosuch_0"] = pred["vid00000_0"]
    with open(root / "pred.pkl", "wb") as handle:
        pickle.dump(pred, handle)
    return root, gt


def _json(result):
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_iground_bad_clips_are_listed_counted_and_fail_without_the_skip_flag(iground_files):
    root, _ = iground_files
    db = root / "metrics.duckdb"
    args = ["eval", "iground", "--gt", str(root / "gt.pkl"), "--pred", str(root / "pred.pkl"), "--no-captions",
            "--no-recall", "--json", "--db", str(db), "--checkpoint", "ckpt-a", "--pretrain-size", "1000"]
    failed = runner.invoke(app, args)
    assert failed.exit_code == 4, failed.output
    assert "2 of 8 iground items have predictions that cannot be scored" in failed.stderr
    assert "--skip-bad-clips" in failed.stderr and not db.exists()  # a refused run is not recorded
    out = json.loads(failed.stdout.strip().splitlines()[-1])  # the report is still printed, with the counts
    assert out["counts"]["scored"] == 5 and out["counts"]["skipped"] == 3

    result = runner.invoke(app, args + ["--skip-bad-clips"])
    out = _json(result)
    assert out["counts"]["items"] == 8 and out["counts"]["scored"] == 5 and out["counts"]["skipped"] == 3
    assert out["counts"]["skipped_by_reason"] == {"invalid_prediction": 2, "missing_prediction": 1}
    assert out["counts"]["items_with_errors"] == 2
    messages = {p["item"]: (p["severity"], p["message"]) for p in out["problems"]}
    assert messages["vid00001_1"][0] == "error" and "NaN" in messages["vid00001_1"][1]
    assert messages["vid00002_2"][0] == "error" and "pred_text" in messages["vid00002_2"][1]
    assert messages["vid00004_4"] == ("skipped", "no prediction for this clip; left out, as the official evaluator does")
    assert messages["nosuch_0"][0] == "warning" and "not in the ground truth" in messages["nosuch_0"][1]
    assert out["protocol"]["pairing"] == "official" and out["protocol"]["preset"] == "official"
    assert out["protocol"]["skip_bad_clips"] is True and out["protocol"]["objectness_threshold"] is None
    assert {"AP50", "mIoU"} <= set(out["metrics"]) and "Recall" not in out["metrics"]
    rows = {r["preset"]: r for r in benchmark_across_checkpoints(db, "iground", metrics=["AP50"])}
    assert rows["official"]["checkpoint"] == "ckpt-a" and rows["official"]["value"] == pytest.approx(out["metrics"]["AP50"])
    # both protocols, each with its interval, recorded as one run
    corrected = out["other_protocols"]["corrected"]
    assert corrected["protocol"]["preset"] == "corrected" and corrected["protocol"]["recall_boxes"] == "xyxy"
    assert rows["corrected"]["value"] == pytest.approx(corrected["metrics"]["AP50"])
    assert rows["corrected"]["run_id"] == rows["official"]["run_id"]
    for row, part in ((rows["official"], out), (rows["corrected"], corrected)):
        interval = part["intervals"]["AP50"]
        assert (row["ci_low"], row["ci_high"], row["ci_resamples"], row["ci_seed"]) == pytest.approx(
            (interval["low"], interval["high"], 1000, 0))

    text = runner.invoke(app, args[:-7] + ["--skip-bad-clips"])
    assert text.exit_code == 0, text.output
    assert "iground (test): 5 of 8 items scored" in text.output
    assert "left out: 3 (invalid_prediction: 2, missing_prediction: 1)" in text.output


def test_iground_frames_keeping_the_same_number_of_boxes_do_not_crash(tmp_path):
    # every frame keeps K = 1 of Q = 2 queries: an IndexError escaped the CLI here before
    gt, _ = make_split(num_clips=3, frames=6, seed=8)
    write_official(gt, tmp_path / "gt.pkl")
    pred = {}
    for key, record in gt.items():
        boxes = [np.array([frame[0] if frame else [0, 0, 9, 9], [1, 1, 5, 5]], np.float32) for frame in record["bboxes"]]
        probs = [np.array([0.8, 0.1], np.float32)] * len(boxes)
        pred[key] = official_record(boxes, probs, record["phrases"][:2], "a caption", "", 0.5).to_record()
        del pred[key]["all_bboxes"]
    with open(tmp_path / "pred.pkl", "wb") as handle:
        pickle.dump(pred, handle)
    result = runner.invoke(app, ["eval", "iground", "--gt", str(tmp_path / "gt.pkl"), "--pred", str(tmp_path / "pred.pkl"),
                                 "--no-captions", "--no-recall", "--json"])
    out = _json(result)
    assert out["counts"]["scored"] == 3 and out["counts"]["skipped"] == 0


def test_iground_unexpected_errors_are_reported_not_raised(iground_files, monkeypatch):
    import evaluation.iground

    def broken(*args, **kwargs):
        raise IndexError("boolean index did not match")

    monkeypatch.setattr(evaluation.iground, "evaluate_iground_files", broken)
    root, _ = iground_files
    result = runner.invoke(app, ["eval", "iground", "--gt", str(root / "gt.pkl"), "--pred", str(root / "pred.pkl")])
    assert result.exit_code == 5, result.output
    assert "internal error (IndexError: boolean index did not match)" in result.output


def test_iground_full_default_path_on_a_dataset_folder(iground_files, tmp_path):
    from grove.data.dataset import write_manifest
    from grove.data.schema import write_boxes, write_clips

    root, gt = iground_files
    clips, boxes = records_to_tables(gt, "iground", "test")
    write_clips(clips, tmp_path / "clips.parquet")
    write_boxes(boxes, tmp_path / "boxes_raw.parquet")
    write_manifest(tmp_path, {"name": "fixture"})
    result = runner.invoke(app, ["eval", "iground", "--gt", str(tmp_path), "--pred", str(root / "pred_all_query.pkl"),
                                 "--protocol", "corrected", "--threshold", "0", "--embedding-model", "all-MiniLM-L6-v2",
                                 "--json"])
    out = _json(result)
    assert {"AP50", "Recall", "mIoU", "METEOR", "CIDEr", "Bleu_4", "ROUGE_L"} <= set(out["metrics"])
    assert out["protocol"]["objectness_threshold"] == 0.0 and out["protocol"]["recall_boxes"] == "xyxy"
    assert "MiniLM" in out["protocol"]["embedding_model"] and "SPICE" in out["unavailable"]
    assert out["protocol"]["record_layouts"]["all_query"] == 8 and out["counts"]["scored"] == 8


def test_unreadable_input_and_nothing_scorable(iground_files, tmp_path):
    root, _ = iground_files
    missing = runner.invoke(app, ["eval", "iground", "--gt", str(tmp_path / "absent.pkl"), "--pred", str(root / "pred.pkl")])
    assert missing.exit_code == 2 and "absent.pkl" in missing.output
    (tmp_path / "empty.json").write_text(json.dumps({"x_0": {"pred_bboxes": [], "pred_labels": [], "pred_text": ""}}))
    nothing = runner.invoke(app, ["eval", "iground", "--gt", str(root / "gt.pkl"), "--pred", str(tmp_path / "empty.json"),
                                  "--no-captions", "--no-recall"])
    assert nothing.exit_code == 1 and "no iground item could be scored" in nothing.output
    assert "left out: 8 (missing_prediction: 8)" in nothing.output


def test_vidstg_anet_and_temporal_commands(tmp_path):
    gt = {"videos": [{"video_id": 7, "original_video_id": "A", "target_id": 1, "qtype": "declarative", "fps": 25.0,
                      "start_frame": 0, "end_frame": 10, "tube_start_frame": 0, "tube_end_frame": 10}],
          "trajectories": {"A": {"1": {str(f): {"bbox": [0, 0, 10, 10]} for f in range(10)}}}}
    (tmp_path / "vidstg.json").write_text(json.dumps(gt))
    (tmp_path / "vidstg_pred.json").write_text(json.dumps({"7": {"frame_ids": [0, 5], "boxes": [[0, 0, 10, 10]] * 2,
                                                                "sted": [0, 10]}}))
    out = _json(runner.invoke(app, ["eval", "vidstg", "--gt", str(tmp_path / "vidstg.json"), "--pred",
                                    str(tmp_path / "vidstg_pred.json"), "--protocol", "tubedetr", "--json"]))
    assert out["metrics"]["declarative_m_vIoU"] == 1.0

    ref = {"annotations": {"v": {"segments": {"0": {"tokens": ["a", "dog"], "process_idx": [[1]], "process_clss": [["dog"]],
                                                    "frame_ind": [3], "process_bnd_box": [[0, 0, 9, 9]]}}}}}
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    (tmp_path / "split.json").write_text(json.dumps({"validation": ["v"]}))
    (tmp_path / "sub.json").write_text(json.dumps({"results": {"v": {"0": {"clss": ["dog"], "idx_in_sent": [1],
                                                                          "bbox_for_all_frames": [[[0, 0, 9, 9]] * 10]}}}}))
    out = _json(runner.invoke(app, ["eval", "anet", "--reference", str(tmp_path / "ref.json"), "--split-file",
                                    str(tmp_path / "split.json"), "--submission", str(tmp_path / "sub.json"),
                                    "--mode", "GT", "--json"]))
    assert out["metrics"] == {"Acc": 1.0}

    (tmp_path / "tsg.json").write_text(json.dumps({"q1": {"timestamp": [3.0, 6.0], "duration": 30.0}}))
    (tmp_path / "tsg_pred.json").write_text(json.dumps({"q1": "From <30> to <60>."}))
    out = _json(runner.invoke(app, ["eval", "temporal", "grounding", "--gt", str(tmp_path / "tsg.json"), "--pred",
                                    str(tmp_path / "tsg_pred.json"), "--json"]))
    assert out["metrics"]["R1@0.7"] == 1.0 and out["metrics"]["mIoU"] == pytest.approx(1.0)
    bad = runner.invoke(app, ["eval", "temporal", "nonsense", "--gt", str(tmp_path / "tsg.json"), "--pred",
                              str(tmp_path / "tsg_pred.json")])
    assert bad.exit_code == 2 and "unknown task" in bad.output
