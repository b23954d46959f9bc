"""The results page (`grove report`, asset `results_page`) of the tiny profile's lineage (`tiny_demo`): every
benchmark table per protocol with intervals and links, the scaling plot and the grounded captions embedded,
the annotation's quality; and what the page says when a run has no outputs yet."""

import base64
import html
import re

import dagster as dg
import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from orchestration.resources import LAYOUT
from orchestration.results_page import MetricCell, ResultRow, ResultTable, table_html, write_results_page

IMAGE = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture(scope="module")
def page(tiny_demo):
    _, root = tiny_demo
    return root, (root / "reports" / "results.html").read_text()


def test_the_lineage_materialises_the_page_with_every_benchmark_and_both_protocols(tiny_demo, page):
    root, text = page
    instance = dg.DagsterInstance.from_config(str(root / LAYOUT["dagster_home"]))
    try:
        records = instance.fetch_materializations(dg.AssetKey("results_page"), limit=1).records
    finally:
        instance.dispose()
    assert records and records[0].asset_materialization.metadata["bytes"].value == len(text.encode())
    for title in ("iGround, official protocol", "iGround, corrected protocol"):
        assert title in html.unescape(text)
    for benchmark in ("VidSTG", "ActivityNet-Entities"):
        assert f"<h3>{benchmark}," in text
    # each model row links to its Dagster partition and its MLflow run
    assert "/assets/iground_metrics?partition=ft_only" in text and re.search(r"#/experiments/\d+/runs/[0-9a-f]{32}", text)
    assert re.search(r'<span class="ci">\[-?\d+\.\d\d, -?\d+\.\d\d\]</span>', text)  # bootstrap intervals
    assert "stage 3 output" in text and "stage2 fallbacks" in text  # annotation quality and stage counts


def test_pictures_are_embedded_pngs_prediction_beside_ground_truth(page):
    _, text = page
    images = IMAGE.findall(text)
    assert len(images) == 1 + 2 * 2  # the scaling plot, then prediction and truth of the tiny test split's 2 clips
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)
    assert text.count("prediction: ") == text.count("ground truth: ") == 2
    assert "http" not in "".join(re.findall(r'src="([^"]*)"', text))  # self-contained: no fetched resource


def test_grove_report_writes_the_page_where_asked(tiny_demo, tiny_profile, tmp_path, monkeypatch):
    _, root = tiny_demo
    monkeypatch.setenv("GROVE_RUNS", str(root))
    out = tmp_path / "page.html"
    result = CliRunner().invoke(app, ["report", "--profile", tiny_profile.name, "--params", str(tiny_profile.params_file),
                                      "--out", str(out), "--examples", "1"])
    assert result.exit_code == 0, result.output
    assert out.read_text().count("prediction: ") == 1


def test_a_run_without_outputs_says_what_is_missing(tiny_profile, tmp_path):
    (tmp_path / "metrics").mkdir()
    text = write_results_page(tiny_profile, tmp_path, examples=3).read_text()
    for missing in ("No metric files", "No data-scaling plot", "No annotation outputs", "No predictions"):
        assert missing in text
    result = CliRunner().invoke(app, ["report", "--profile", tiny_profile.name, "--params", str(tiny_profile.params_file)],
                                env={"GROVE_RUNS": str(tmp_path / "nothing")})
    assert result.exit_code == 1 and "no metrics yet" in result.output


def test_cells_show_value_and_interval_and_names_are_escaped():
    table = ResultTable("iground", "official", ["CIDEr"], [
        ResultRow("<b>", {"CIDEr": MetricCell(12.345, 10.0, 14.5)}, {"MLflow": "http://x/?a=1&b=2"}),
        ResultRow("none", {"CIDEr": MetricCell(None)})])
    text = table_html(table, {})
    assert "12.35 <span class=\"ci\">[10.00, 14.50]</span>" in text and "&lt;b&gt;" in text and "a=1&amp;b=2" in text
    assert "<td>-</td>" in text
