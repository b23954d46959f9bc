"""The Dagster UI of the tiny lineage in Chromium: the lineage graph's groups and assets, an asset's latest
materialisation with its metadata, and a materialisation launched by clicking "Materialize". What each
page must show is read from the definitions and the Dagster instance, not written down here."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from typing import Any, Iterator

import dagster as dg
import pytest

from orchestration.definitions import build_definitions
from orchestration.defs.evaluation.assets import CURVE
from orchestration.defs.models.assets import PRETRAINED
from orchestration.defs.reports.assets import RESULTS_PAGE
from orchestration.resources import LAYOUT
from tests.browser.conftest import Uis

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is missing: pip install -e '.[test]'").expect

RUN_TIMEOUT_S = 300.0  # a run of one cheap asset: a new process loads the code location, then the step runs
GRAPH_TIMEOUT_S = 60.0
# The graph's script that lists every node's label and on-screen box (group boxes and asset nodes alike).
NODE_BOXES = """nodes => nodes.map(node => {
    const box = node.getBoundingClientRect();
    return {label: (node.textContent || "").trim(), x: box.x, y: box.y, width: box.width, height: box.height};
})"""


@pytest.fixture(scope="module")
def instance(uis: Uis) -> Iterator[dg.DagsterInstance]:
    opened = dg.DagsterInstance.from_config(str(uis.root / LAYOUT["dagster_home"]))
    yield opened
    opened.dispose()


@pytest.fixture(scope="module")
def asset_groups(uis: Uis) -> dict[str, set[str]]:
    """Each group of the code location the UI loads, with its assets' keys."""
    groups: dict[str, set[str]] = defaultdict(set)
    for spec in build_definitions(uis.profile, uis.root).resolve_all_asset_specs():
        groups[spec.group_name or "default"].add(spec.key.to_user_string())
    return dict(groups)


def latest_materialization(instance: dg.DagsterInstance, key: dg.AssetKey) -> Any:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=1).records
    assert records, f"{key.to_user_string()} was never materialised in {instance.root_directory}"
    return records[0]


def shown_as(label: str, name: str) -> bool:
    """Whether a graph node's label is `name`, whole or cut in the middle ('stage1_f…_captions')."""
    if label == name:
        return True
    head, ellipsis, tail = label.partition("…")
    return bool(ellipsis) and len(head) + len(tail) < len(name) and name.startswith(head) and name.endswith(tail)


def inside(point: tuple[float, float], box: dict[str, float]) -> bool:
    x, y = point
    return box["x"] <= x <= box["x"] + box["width"] and box["y"] <= y <= box["y"] + box["height"]


def misplaced_assets(nodes: list[dict[str, Any]], groups: dict[str, set[str]]) -> list[str]:
    """The assets without exactly one node in the graph, or whose node is outside its group's box."""
    group_boxes = {}
    for group in groups:
        boxes = [n for n in nodes if n["label"] == group]
        if boxes:
            group_boxes[group] = max(boxes, key=lambda n: n["width"] * n["height"])
    problems = []
    for group, assets in sorted(groups.items()):
        for asset in sorted(assets):
            found = [n for n in nodes if n["label"] not in groups and shown_as(n["label"], asset)]
            if len(found) != 1:
                problems.append(f"{asset}: {len(found)} nodes")
            elif group not in group_boxes:
                problems.append(f"{asset}: no box of group {group}")
            elif not inside((found[0]["x"] + found[0]["width"] / 2, found[0]["y"] + found[0]["height"] / 2), group_boxes[group]):
                problems.append(f"{asset}: its node is outside group {group}'s box")
    return problems


def markdown_rows(text: str) -> list[list[str]]:
    """The cells of each row of a Markdown table (separator rows left out)."""
    rows = []
    for line in text.splitlines():
        if line.strip().startswith("|") and not re.fullmatch(r"[\s|:-]+", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def rendered_rows(page: Any) -> list[list[str]]:
    return page.locator("table tr").evaluate_all("rows => rows.map(row => Array.from(row.cells, cell => cell.innerText.trim()))")


def test_the_lineage_graph_shows_every_group_with_its_assets(uis: Uis, page: Any, screenshot: Any, asset_groups: dict[str, set[str]]):
    page.goto(f"{uis.dagster}/asset-groups")
    with screenshot("groups"):
        for group in asset_groups:  # the side panel's tree and a collapsed node of the graph
            expect(page.get_by_title(group, exact=True)).to_be_visible()
            expect(page.locator("svg foreignObject").filter(has_text=re.compile(rf"^\s*{re.escape(group)}\s*$")).first).to_be_attached()
    page.keyboard.press("Alt+e")  # the graph's "Expand all groups" (its settings menu names the shortcut)
    with screenshot("assets"):
        deadline, problems = time.monotonic() + GRAPH_TIMEOUT_S, ["not looked at yet"]
        while problems and time.monotonic() < deadline:
            page.wait_for_timeout(500)
            problems = misplaced_assets(page.locator("svg foreignObject").evaluate_all(NODE_BOXES), asset_groups)
        assert not problems, f"the expanded lineage graph does not show each asset in its group: {problems}"


def test_the_scaling_curves_latest_materialisation_shows_its_table_plot_and_mlflow_run(
    uis: Uis, page: Any, screenshot: Any, instance: dg.DagsterInstance
):
    metadata = latest_materialization(instance, CURVE).asset_materialization.metadata
    page.goto(f"{uis.dagster}/assets/{CURVE.to_user_string()}")
    with screenshot("metadata"):
        expect(page.get_by_text(metadata["plot"].value, exact=True)).to_be_visible()
        expect(page.get_by_role("link", name=metadata["mlflow_run"].value)).to_be_visible()
        table = markdown_rows(metadata["table"].value)
        assert table, f"the curve's table metadata holds no Markdown table: {metadata['table'].value!r}"
        shown = rendered_rows(page)
        assert [row for row in table if row not in shown] == [], f"rows of the table missing from the page; it shows {shown}"


def test_a_training_assets_latest_materialisation_links_its_mlflow_run(uis: Uis, page: Any, screenshot: Any, instance: dg.DagsterInstance):
    record = latest_materialization(instance, PRETRAINED)
    metadata = record.asset_materialization.metadata
    page.goto(f"{uis.dagster}/assets/{PRETRAINED.to_user_string()}")
    with screenshot("metadata"):
        expect(page.get_by_role("link", name=metadata["mlflow_run"].value)).to_be_visible()
        expect(page.get_by_text(metadata["path"].value, exact=True)).to_be_visible()
        expect(page.get_by_text(str(metadata["steps"].value), exact=True).first).to_be_visible()
        expect(page.get_by_text(record.partition_key, exact=True).first).to_be_visible()


def test_materialize_clicked_in_the_ui_runs_and_succeeds(uis: Uis, page: Any, screenshot: Any, instance: dg.DagsterInstance):
    page.goto(f"{uis.dagster}/assets/{RESULTS_PAGE.to_user_string()}")
    with screenshot("launched"):
        page.get_by_role("button", name=re.compile(r"Materialize$")).click()
        confirm = page.get_by_role("dialog").get_by_role("button", name=re.compile(r"^(Materialize|Launch)"))
        launched = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))
        expect(launched.or_(confirm).first).to_be_visible()
        if confirm.count():  # a dialog asks first (partitions, config): its defaults
            confirm.first.click()
        expect(launched).to_be_visible()
        prefix = re.search(r"[0-9a-f]{8}", launched.inner_text()).group(0)
    run = wait_for_run(instance, prefix)
    page.goto(f"{uis.dagster}/runs/{run.run_id}")
    with screenshot("run"):
        assert run.status == dg.DagsterRunStatus.SUCCESS, f"run {run.run_id} ended {run.status.value}; its page: {page.url}"
        expect(page.get_by_text("Success", exact=True).first).to_be_visible()
        expect(page.get_by_text("RUN_SUCCESS").first).to_be_visible()  # the run's event log, loaded
        materialized = latest_materialization(instance, RESULTS_PAGE)
        assert materialized.run_id == run.run_id, f"the newest {RESULTS_PAGE.to_user_string()} is run {materialized.run_id}'s"
        expect(page.get_by_text(materialized.asset_materialization.metadata["path"].value).first).to_be_visible()


def wait_for_run(instance: dg.DagsterInstance, prefix: str) -> dg.DagsterRun:
    """The run whose id starts with `prefix`, once it has finished (or failed, or was canceled)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        runs = [r.dagster_run for r in instance.get_run_records(limit=20) if r.dagster_run.run_id.startswith(prefix)]
        if runs and runs[0].is_finished:
            return runs[0]
        time.sleep(1.0)
    raise AssertionError(f"run {prefix} did not finish within {RUN_TIMEOUT_S:.0f} s (status: {runs[0].status.value if runs else 'not found'})")
