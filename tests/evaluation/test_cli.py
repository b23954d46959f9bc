"""`grove eval ...`: official layouts in, one JSON object out, bad clips named and counted, runs recorded."""

import json
import pickle

import numpy as np
import pytest
from typer.testing import CliRunner

from evaluation.tables import benchmark_across_checkpoints
from grove.data.howtoground import records_to_tables, write_official
from orchestration.cli import app
from tests.evaluation.iground_fixtures import make_split

runner = CliRunner()


@pytest.fixture(scope="module")
def iground_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("iground")
    gt, pred = make_split(num_clips=8, frames=8, seed=5)
    write_official(gt, root / "gt.pkl")
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


def test_iground_json_counts_bad_clips_and_records_the_run(iground_files):
    root, _ = iground_files
    db = root / "metrics.duckdb"
    result = runner.invoke(app, ["eval", "iground", "--gt", str(root / "gt.pkl"), "--pred", str(root / "pred.pkl"),
                                 "--no-captions", "--no-recall", "--json", "--db", str(db), "--checkpoint", "ckpt-a",
                                 "--pretrain-size", "1000"])
    out = _json(result)
    assert out["counts"]["items"] == 8 and out["counts"]["scored"] == 5 and out["counts"]["items_with_errors"] == 4
    messages = {p["item"]: p["message"] for p in out["problems"]}
    assert "NaN" in messages["vid00001_1"] and "pred_text" in messages["vid00002_2"]
    assert "no prediction" in messages["vid00004_4"] and "not in the ground truth" in messages["nosuch_0"]
    assert out["protocol"]["pairing"] == "official" and out["protocol"]["preset"] == "official"
    assert "AP50" in out["metrics"] and "Recall" not in out["metrics"]
    rows = benchmark_across_checkpoints(db, "iground", metrics=["AP50"])
    assert rows[0]["checkpoint"] == "ckpt-a" and rows[0]["value"] == pytest.approx(out["metrics"]["AP50"])


def test_iground_full_default_path_on_a_dataset_folder(iground_files, tmp_path):
    from grove.data.dataset import write_manifest
    from grove.data.schema import write_boxes, write_clips

    root, gt = iground_files
    clips, boxes = records_to_tables(gt, "iground", "test")
    write_clips(clips, tmp_path / "clips.parquet")
    write_boxes(boxes, tmp_path / "boxes_raw.parquet")
    write_manifest(tmp_path, {"name": "fixture"})
    result = runner.invoke(app, ["eval", "iground", "--gt", str(tmp_path), "--pred", str(root / "pred.pkl"),
                                 "--protocol", "corrected", "--threshold", "0", "--embedding-model", "all-MiniLM-L6-v2",
                                 "--json"])
    out = _json(result)
    assert {"AP50", "Recall", "METEOR", "CIDEr", "Bleu_4", "ROUGE_L"} <= set(out["metrics"])
    assert out["protocol"]["objectness_threshold"] == 0.0 and out["protocol"]["recall_boxes"] == "xyxy"
    assert "MiniLM" in out["protocol"]["embedding_model"] and "SPICE" in out["unavailable"]
    assert out["counts"]["scored"] == 5


def test_unreadable_input_and_nothing_scorable(iground_files, tmp_path):
    root, _ = iground_files
    missing = runner.invoke(app, ["eval", "iground", "--gt", str(tmp_path / "absent.pkl"), "--pred", str(root / "pred.pkl")])
    assert missing.exit_code == 2 and "absent.pkl" in missing.output
    (tmp_path / "empty.json").write_text(json.dumps({"x_0": {"pred_bboxes": [], "pred_labels": [], "pred_text": ""}}))
    nothing = runner.invoke(app, ["eval", "iground", "--gt", str(root / "gt.pkl"), "--pred", str(tmp_path / "empty.json"),
                                  "--no-captions", "--no-recall"])
    assert nothing.exit_code == 1 and "x_0: empty predictions" in nothing.output


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
