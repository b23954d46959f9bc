"""Intervals in `grove compare`'s tables, paired differences from report JSON, and the scaling plot,
on small generated evaluations (no lineage run)."""

import json

import matplotlib.pyplot as plt
import pytest

from evaluation.bootstrap import BootstrapSettings, add_intervals
from evaluation.iground import evaluate_iground_protocols, gt_from_tables, protocols_side_by_side
from grove.data.howtoground import records_to_tables
from grove.data.predictions import clip_prediction
from orchestration.compare import ComparisonRow, mlflow_metrics, paired_difference_cells, protocol_section, row_cells
from orchestration.report import Cell, ScalingPoint, markdown_table, scaling_figure
from tests.evaluation.iground_fixtures import hashed_bag_of_words, make_split

BOXES = ["AP50", "mIoU", "Recall"]


def _report(threshold: float = 0.5, drop: str | None = None) -> dict:
    """A metric JSON as the evaluation asset writes it: both protocols, intervals, clip statistics. Another
    objectness threshold re-filters the boxes: another "model" scored on the same clips."""
    gt_records, pred_records = make_split(num_clips=6, frames=5, seed=3, all_query=True)
    if drop:
        del gt_records[drop]
    clips, boxes = records_to_tables(gt_records, "iground", "test")
    predictions = {k: clip_prediction(k, v) for k, v in pred_records.items()}
    report = evaluate_iground_protocols(gt_from_tables(clips, boxes), predictions, hashed_bag_of_words,
                                        protocols_side_by_side("official", "auto", threshold), captions=False)
    return json.loads(json.dumps(add_intervals(report, BootstrapSettings(200, seed=1)).to_dict()))


def test_mlflow_metric_names_and_table_cells_for_each_protocol():
    report = _report()
    logged = mlflow_metrics(report)
    assert {"AP50", "AP50.ci_low", "AP50.ci_high", "corrected.Recall", "corrected.Recall.ci_low"} <= set(logged)
    assert logged["corrected.Recall"] == report["other_protocols"]["corrected"]["metrics"]["Recall"]
    row = ComparisonRow("s", "r" * 32, 0, "1", logged, {"protocol": "official"})
    cell = row_cells(row, ["AP50"], scale=100.0)["AP50"]
    interval = report["intervals"]["AP50"]
    assert (cell.value, cell.low, cell.high) == pytest.approx((100 * report["metrics"]["AP50"], 100 * interval["low"],
                                                               100 * interval["high"]))
    assert str(cell) == f"{cell.value:.2f} [{cell.low:.2f}, {cell.high:.2f}]"
    corrected = row_cells(row, ["Recall"], preset="corrected")["Recall"]
    assert corrected.value == report["other_protocols"]["corrected"]["metrics"]["Recall"]
    assert row_cells(row, ["Recall"], preset="official") == row_cells(row, ["Recall"])
    with pytest.raises(ValueError, match="no 'paper' protocol"):
        protocol_section(report, "paper")


def test_paired_differences_from_report_json():
    reports = [("a", _report()), ("b", _report(0.8)), ("base", _report())]
    rows = dict(paired_difference_cells(reports, "base", BOXES, "corrected", scale=100.0))
    assert all((c.value, c.low, c.high, c.mark) == (0.0, 0.0, 0.0, False) for c in rows["a"].values())  # itself
    moved = rows["b"]["AP50"]
    expected = reports[1][1]["other_protocols"]["corrected"]["metrics"]["AP50"] - reports[2][1]["other_protocols"]["corrected"]["metrics"]["AP50"]
    assert expected != 0 and moved.value == pytest.approx(100 * expected) and moved.low <= moved.high
    assert str(Cell(1.5, 0.5, 2.5, signed=True, mark=True)) == "+1.50 [0.50, 2.50]*"
    with pytest.raises(ValueError, match="c vs base: paired comparison needs the same clips on both sides: 5 vs 6"):
        paired_difference_cells([*reports, ("c", _report(0.8, drop="vid00002_2"))], "base", BOXES)
    bare = {k: v for k, v in reports[0][1].items() if k != "clip_statistics"}
    with pytest.raises(ValueError, match="holds no clip statistics"):
        paired_difference_cells([("bare", bare), reports[2]], "base", BOXES)


def test_scaling_plot_has_a_log_axis_error_bars_and_the_ft_only_band():
    def point(label, clips, value):
        official = ScalingPoint(label, clips, {"CIDEr": value}, {"CIDEr": (value - 0.1, value + 0.2)})
        official.other_protocols = {"corrected": ScalingPoint(label, clips, {"CIDEr": value / 2}, {}, "corrected")}
        return official

    points = [point("small (60)", 60, 0.3), point("full (240)", 240, 0.5), point("FT-only", None, 0.1)]
    fig = scaling_figure(points, ["CIDEr"], "test")
    official, corrected = fig.axes
    assert official.get_xscale() == corrected.get_xscale() == "log"  # even though 240/60 < 10
    assert official.get_title() == "CIDEr (official)" and corrected.get_title() == "CIDEr (corrected)"
    (bars,) = official.containers
    low, high = bars.lines[2][0].get_segments()[0][:, 1]  # the first point's error bar spans its interval
    assert (low, high) == pytest.approx((0.2, 0.5))
    band = official.patches[0].get_extents()
    assert len(official.patches) == 1 and not corrected.patches  # the band: FT-only's interval, where it has one
    assert band.height > 0
    plt.close(fig)
    table = markdown_table("pre-training", ["CIDEr"], [(p.label, p.cells(100.0)) for p in points])
    assert "| small (60) | 30.00 [20.00, 50.00] |" in table and "| FT-only | 10.00 [0.00, 30.00] |" in table
