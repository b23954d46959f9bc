"""The MLflow UI of the tiny lineage in Chromium: every experiment and its runs, the comparison of the iGround
evaluation runs across pre-training sizes, and the registered model with its `champion` alias. What each page
must show is what the tracking store holds, queried here with MlflowClient (experiment names, run ids, the
alias), so the tests follow however the lineage splits its runs into experiments."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestration.compare import comparison_rows, search_asset_runs
from orchestration.definitions import experiment_name
from orchestration.defs.evaluation.assets import METRICS
from orchestration.resources import MlflowResource
from tests.browser.conftest import Uis

expect = pytest.importorskip("playwright.sync_api", reason="Playwright is missing: pip install -e '.[test]'").expect

CHAMPION_ALIAS = "champion"


@pytest.fixture(scope="module")
def tracking(uis: Uis) -> MlflowResource:
    return MlflowResource.local(uis.root, experiment_name(uis.profile))


@pytest.fixture(scope="module")
def client(tracking: MlflowResource) -> Any:
    return tracking.client()


def run_link(page: Any, run_id: str) -> Any:
    """The link to one run (the runs table's and the comparison's links end with the run id)."""
    return page.locator(f'a[href$="/runs/{run_id}"]').first


def test_every_experiment_is_listed_with_its_runs(uis: Uis, page: Any, screenshot: Any, client: Any):
    experiments = client.search_experiments()
    page.goto(f"{uis.mlflow}/#/experiments")
    with screenshot("experiments"):
        for experiment in experiments:
            expect(page.get_by_role("link", name=experiment.name, exact=True)).to_be_visible()
    with_runs = [(e, runs) for e in experiments if (runs := client.search_runs([e.experiment_id], max_results=1000))]
    assert with_runs, f"no MLflow runs in {uis.root}"
    for experiment, runs in with_runs:
        page.goto(f"{uis.mlflow}/#/experiments/{experiment.experiment_id}/runs")
        with screenshot(f"runs-{experiment.experiment_id}"):
            for run in runs:
                expect(run_link(page, run.info.run_id)).to_have_text(run.info.run_name)


def test_the_comparison_view_shows_the_evaluation_runs_of_every_pretraining_size(uis: Uis, page: Any, screenshot: Any, client: Any):
    experiments = [e.experiment_id for e in client.search_experiments()]
    rows = comparison_rows(search_asset_runs(client, experiments, METRICS.to_user_string()))  # the newest run per partition
    assert len(rows) >= 2, f"fewer than two finished {METRICS.to_user_string()} runs to compare: {[r.partition for r in rows]}"
    runs, where = [row.run_id for row in rows], sorted({row.experiment_id for row in rows})
    page.set_viewport_size({"width": 1600, "height": 3000})  # the page scrolls inside a frame: tall enough for the tables
    page.goto(f"{uis.mlflow}/#/compare-runs?runs={json.dumps(runs)}&experiments={json.dumps(where)}")
    with screenshot("compare"):
        expect(page.get_by_text(f"Comparing {len(runs)} Runs")).to_be_visible()
        for row in rows:
            expect(page.get_by_text(row.run_id, exact=True)).to_be_visible()
            expect(page.get_by_text(client.get_run(row.run_id).info.run_name, exact=True)).to_be_visible()
        # one row per parameter and tag, one cell per run, in the order the runs were given
        expect(values_of(page, "dagster.partition")).to_have_text([row.partition for row in rows])
        for key in sorted(set.intersection(*(set(row.params) for row in rows))):
            expect(values_of(page, key)).to_have_text([row.params[key] for row in rows])
        # the metrics' grid draws the rows in view only: those it drew are the runs' metrics
        metric_links = page.locator('a[href^="#/metric?"]')
        expect(metric_links.first).to_be_visible()
        logged = set.union(*(set(row.metrics) for row in rows))
        assert set(metric_links.all_inner_texts()) <= logged, f"metrics shown that the runs did not log (they logged {sorted(logged)})"


def values_of(page: Any, key: str) -> Any:
    """The cells of the comparison's row of one parameter or tag."""
    return page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=key, exact=True)).get_by_role("cell")


def test_the_registered_model_shows_its_champion_alias(uis: Uis, page: Any, screenshot: Any, client: Any, tracking: MlflowResource):
    name = tracking.registered_model
    champion = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
    versions = client.search_model_versions(f"name = '{name}'")
    page.goto(f"{uis.mlflow}/#/models/{name}")
    with screenshot("model"):
        for version in versions:
            expect(page.get_by_role("link", name=f"Version {version.version}", exact=True)).to_be_visible()
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=f"Version {champion.version}", exact=True))
        expect(row).to_contain_text(f"@ {CHAMPION_ALIAS}")
    page.goto(f"{uis.mlflow}/#/models/{name}/versions/{champion.version}")
    with screenshot("champion-version"):
        expect(page.get_by_text(f"@ {CHAMPION_ALIAS}").first).to_be_visible()
        if champion.run_id:
            expect(run_link(page, champion.run_id)).to_be_visible()
