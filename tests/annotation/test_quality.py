import json

import pytest

from annotation.quality import (
    METRICS,
    Scorer,
    format_table,
    naive_predictions,
    predictions_from_tables,
    run_ablation,
    score_annotation,
)
from annotation.shards import AnnotatorConfig, annotate
from grove.data.dataset import load_dataset


@pytest.fixture(scope="module")
def scorer(synthetic):
    return Scorer(synthetic.gt, captions=False)


def test_the_truth_scores_perfectly_against_itself(synthetic, scorer):
    truth = load_dataset(synthetic.gt, processed=False)
    row = scorer.score(predictions_from_tables(truth.clips, truth.boxes), {"variant": "truth"})
    assert row["AP50"] == 100.0 and row["Recall"] == 100.0
    assert row["clips"] == row["annotated"] == 12 and row["METEOR"] is None  # captions not computed here


def test_rejected_clips_count_as_empty_predictions(synthetic, scorer, tmp_path):
    annotate(synthetic.catalog, tmp_path, AnnotatorConfig(stage1_options={"noise": "none"}), shard_size=20)
    row = score_annotation(tmp_path, synthetic.gt, scorer=scorer)
    assert row["annotated"] == 11 and row["clips"] == 12
    assert 0 < row["AP50"] <= 100 * 11 / 12 + 1e-6  # the corrupt clip scores 0
    naive = row["naive"]
    assert naive["variant"] == "stage-1 naive" and naive["annotated"] == 11
    predictions = naive_predictions(tmp_path, scorer.gt_clips)
    assert all(len(p.pred_bboxes) == 10 for p in predictions.values())


def test_ablation_rows_and_noise_ordering(synthetic, tmp_path):
    rows = run_ablation(synthetic.catalog, synthetic.gt, tmp_path, noise_levels=["none", "high"],
                        stage3_engines=["lexical"], fill_gaps=[2], tracking=["iou"], shard_size=20, captions=False)
    assert [(r["noise"], r["stage3"], r["tracking"]) for r in rows] == [
        ("none", "stage-1 naive", "-"), ("none", "lexical", "iou"),
        ("high", "stage-1 naive", "-"), ("high", "lexical", "iou")]
    assert rows[1]["AP50"] > rows[3]["AP50"] and rows[0]["AP50"] > rows[2]["AP50"]
    assert json.loads((tmp_path / "ablation.json").read_text()) == rows
    table = format_table(rows)
    assert all(m in table for m in METRICS) and "stage-1 naive" in table and "(Recall phrase similarity:" in table


def test_tracked_stage3_beats_naive_labels_and_the_paper_stage3_under_noise(synthetic, tmp_path):
    rows = run_ablation(synthetic.catalog, synthetic.gt, tmp_path, noise_levels=["moderate"],
                        stage3_engines=["lexical"], fill_gaps=[0, 2], tracking=["none", "iou"], shard_size=20,
                        captions=False)
    by = {(r["tracking"], r["fill_gaps"]): r for r in rows}
    naive, paper, tracked = by[("-", "-")], by[("none", 0)], by[("iou", 2)]
    assert [(r["tracking"], r["fill_gaps"]) for r in rows[1:]] == [("none", 0), ("none", 2), ("iou", 0), ("iou", 2)]
    for metric in ("AP50", "Recall"):
        assert tracked[metric] > naive[metric] and tracked[metric] > paper[metric]
        assert by[("iou", 0)][metric] > paper[metric]  # tracking alone, without filling gaps
    assert "tracking" in format_table(rows)
