"""Asset checks fire on good and on bad data: annotation shards and metric reports."""

import json
import math

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from annotation.records import CAPTION_SCHEMA, FAILURE_SCHEMA, FRAME_SCHEMA
from grove.data.schema import box_table, clip_table, write_boxes, write_clips, write_table
from orchestration.defs.annotation.checks import (
    boxes_outside_frame,
    empty_captions,
    fallback_rate,
    shard_check_results,
    shard_check_specs,
)
from evaluation.iground import PRESETS
from orchestration.defs.evaluation.checks import metric_check_results, metric_problems


def clip(key, caption="a cup moves", phrases=("a cup",), width=160, height=96):
    return dict(
        key=key, dataset="auto", split="pool", video_id=key, clip_id="0", video_path=f"{key}.mp4", fps=10.0,
        clip_start_frame=0, clip_end_frame=79, num_frames=40, width=width, height=height, caption=caption,
        tagged_caption=caption, phrases=list(phrases), extra={},
    )


def box(key, x1=10.0, y1=10.0, x2=50.0, y2=40.0):
    return dict(key=key, frame_index=0, frame_id=0, box_index=0, phrase_index=0, phrase="a cup", x1=x1, y1=y1, x2=x2, y2=y2)


def stage3_shard(folder, clips, boxes):
    write_clips(clip_table(clips), folder / "clips.parquet")
    write_boxes(box_table(boxes), folder / "boxes_raw.parquet")
    write_table(FAILURE_SCHEMA.empty_table(), folder / "failures.parquet")
    return folder


def results_by_name(results):
    return {r.check_name: r for r in results}


def test_stage3_checks_pass_on_a_good_shard(tmp_path):
    folder = stage3_shard(tmp_path, [clip("a"), clip("b")], [box("a"), box("b", 0.0, 0.0, 160.0, 96.0)])
    results = results_by_name(shard_check_results(3, folder, 0.2))
    assert set(results) == {"stage3_schema", "stage3_captions_non_empty", "stage3_boxes_inside_frame"}
    assert all(r.passed for r in results.values())


def test_stage3_checks_fail_on_empty_captions_and_boxes_outside_the_frame(tmp_path):
    clips = [clip("a"), clip("blank", caption="  "), clip("untagged", phrases=())]
    boxes = [box("a"), box("a", x2=170.0), box("a", x1=60.0, x2=50.0), box("ghost")]
    results = results_by_name(shard_check_results(3, stage3_shard(tmp_path, clips, boxes), 0.2))
    assert results["stage3_schema"].passed
    assert not results["stage3_captions_non_empty"].passed
    assert results["stage3_captions_non_empty"].metadata["empty"].value == 2
    assert not results["stage3_boxes_inside_frame"].passed
    assert results["stage3_boxes_inside_frame"].metadata["outside"].value == 3  # too wide, inverted, unknown clip


def test_a_broken_table_fails_the_blocking_schema_check_and_skips_the_rest(tmp_path):
    stage3_shard(tmp_path, [clip("a")], [box("a")])
    pq.write_table(pa.table({"key": ["a"]}), tmp_path / "boxes_raw.parquet")
    results = results_by_name(shard_check_results(3, tmp_path, 0.2))
    assert not results["stage3_schema"].passed
    assert "missing canonical column" in json.dumps(results["stage3_schema"].metadata["problems"].value)
    assert not results["stage3_boxes_inside_frame"].passed
    specs = {spec.name: spec for spec in shard_check_specs(dg.AssetKey("s3"), 3, 0.2)}
    assert specs["stage3_schema"].blocking and not specs["stage3_boxes_inside_frame"].blocking


@pytest.mark.parametrize("fallbacks, passed", [(1, True), (3, False)])
def test_stage2_fallback_rate_is_held_under_its_limit(tmp_path, fallbacks, passed):
    write_table(CAPTION_SCHEMA.empty_table(), tmp_path / "captions.parquet")
    write_table(FAILURE_SCHEMA.empty_table(), tmp_path / "failures.parquet")
    (tmp_path / "done.json").write_text(json.dumps({"stats": {"clips": 10, "fallbacks": fallbacks, "fallback_reasons": {"no tags": fallbacks}}}))
    results = results_by_name(shard_check_results(2, tmp_path, 0.2))
    assert results["stage2_schema"].passed
    assert results["stage2_fallback_rate"].passed is passed
    assert results["stage2_fallback_rate"].metadata["fallback_rate"].value == pytest.approx(fallbacks / 10)


def test_stage1_schema_check_names_the_missing_file(tmp_path):
    write_table(FRAME_SCHEMA.empty_table(), tmp_path / "frames.parquet")
    (result,) = shard_check_results(1, tmp_path, 0.2)
    assert not result.passed and "failures.parquet" in json.dumps(result.metadata["problems"].value)


def test_small_helpers():
    assert fallback_rate({}) == 0.0 and fallback_rate({"clips": 4, "fallbacks": 1}) == 0.25
    clips = clip_table([clip("a"), clip("b", caption="")])
    assert empty_captions(clips) == ["b"]
    assert boxes_outside_frame(clips, box_table([box("a", x1=-0.5)])).num_rows == 0  # within the 1 px tolerance


GOOD = {"METEOR": 0.12, "CIDEr": 1.7, "AP50": 0.4, "Recall": 0.3, "Bleu_4": 0.05}


def test_metric_check_passes_on_finite_in_range_metrics():
    (result,) = metric_check_results(GOOD, ["METEOR", "CIDEr", "AP50", "Recall"])
    assert result.passed and result.check_name == "metrics_finite_in_range"


@pytest.mark.parametrize(
    "change, message",
    [({"AP50": math.nan}, "AP50: not a finite number"), ({"Recall": 1.2}, "Recall: 1.2 outside"),
     ({"CIDEr": -0.1}, "CIDEr: -0.1 outside"), ({"METEOR": None}, "METEOR: missing")],
)
def test_metric_check_fails_on_bad_metrics(change, message):
    metrics = {**GOOD, **change}
    assert any(p.startswith(message) for p in metric_problems(metrics, ["METEOR", "CIDEr", "AP50", "Recall"]))
    (result,) = metric_check_results(metrics, ["METEOR", "CIDEr", "AP50", "Recall"])
    assert not result.passed


def test_ap50_may_be_negative_under_the_official_protocol_only():
    """The official evaluator averages COCOeval's -1 for clips without GT boxes into AP50 (empty_gt_videos)."""
    official, corrected = PRESETS["official"].to_dict(), PRESETS["corrected"].to_dict()
    metrics = {**GOOD, "AP50": -0.25}  # e.g. a quarter of the clips have no GT box and the rest score 0
    (result,) = metric_check_results(metrics, ["AP50"], official)
    assert result.passed and result.metadata["ranges"].value == {"AP50": [-1.0, 1.0]}
    assert metric_problems(metrics, ["AP50"]) == []  # no protocol record: the official one
    (result,) = metric_check_results(metrics, ["AP50"], corrected)
    assert not result.passed and result.metadata["problems"].value == ["AP50: -0.25 outside [0, 1]"]
    assert metric_problems({"AP50": -1.5}, ["AP50"], official) == ["AP50: -1.5 outside [-1, 1]"]
    assert metric_problems({"AP50": True}, ["AP50"], official) == ["AP50: not a finite number (True)"]


def test_the_metric_check_passes_a_real_official_report_whose_ap50_is_negative():
    """evaluation/'s official protocol on two clips, one without GT boxes and one missed: AP50 = (0 + -1) / 2."""
    import numpy as np

    from evaluation.iground import IGroundClip, evaluate_iground
    from grove.data.predictions import ClipPrediction

    box = np.array([[10.0, 10.0, 40.0, 40.0]])
    gt = {
        "boxed_0": IGroundClip("boxed_0", 64, 48, "a cup", 1, box, np.array([0]), ["a cup"]),
        "empty_0": IGroundClip("empty_0", 64, 48, "nothing", 1, np.zeros((0, 4)), np.zeros(0, np.int64), []),
    }
    miss = ClipPrediction([np.array([[50.0, 30.0, 60.0, 40.0]], np.float32)], [["a cup"]], "a cup", ["a cup"])
    report = evaluate_iground(gt, {"boxed_0": miss, "empty_0": miss}, embed=None, captions=False)
    assert report.protocol["empty_gt_videos"] == "include" and report.metrics["AP50"] == -0.5  # (0 + -1) / 2
    (result,) = metric_check_results(report.metrics, ["AP50"], report.protocol)
    assert result.passed
    (result,) = metric_check_results(report.metrics, ["AP50"], PRESETS["corrected"].to_dict())
    assert not result.passed
