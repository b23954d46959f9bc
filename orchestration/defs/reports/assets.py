"""The run's results page (`grove report`): one self-contained HTML file made from every metric asset, the
data-scaling curve and the annotation's quality, rows linked to their MLflow runs and Dagster assets.

Not versioned by DVC: its links name MLflow run ids, which every run makes anew.
"""

from pathlib import Path
from typing import Sequence

import dagster as dg

from orchestration.defs.common import OWNERS, code_version, numeric_metadata, on_changed_inputs, timed
from orchestration.profile import Profile
from orchestration.resources import MlflowResource, PipelinePaths

GROUP = "reports"
RESULTS_PAGE = dg.AssetKey("results_page")


def report_inputs(assets: Sequence[dg.AssetsDefinition | dg.AssetSpec]) -> list[dg.AssetKey]:
    """What the page shows: every metric asset, the data-scaling curve and the annotation's quality."""
    keys = [key for asset in assets for key in (asset.keys if isinstance(asset, dg.AssetsDefinition) else [asset.key])]
    shown = {"data_scaling_curve", "annotation_quality"}
    return [key for key in keys if key.path[-1].endswith("_metrics") or key.path[-1] in shown]


def build(profile: Profile, inputs: Sequence[dg.AssetKey]) -> list:
    @dg.asset(
        key=RESULTS_PAGE,
        deps=list(inputs),
        group_name=GROUP,
        kinds={"python", "html"},
        owners=OWNERS[GROUP],
        code_version=code_version(profile, "1", "evaluation.metrics", "inference.split"),
        automation_condition=on_changed_inputs(),
        description="One self-contained HTML page of the run (`grove report`): each benchmark's table per protocol "
        "with bootstrap intervals, the data-scaling plot, the automatic annotation's quality and counts, and "
        "grounded captions of test clips beside their ground truth; rows link to MLflow runs and Dagster assets.",
    )
    def results_page(context: dg.AssetExecutionContext, paths: PipelinePaths, mlflow: MlflowResource) -> dg.MaterializeResult:
        from orchestration.results_page import write_results_page

        metadata: dict = {}
        with timed(metadata):
            page = write_results_page(profile, Path(paths.root), mlflow=mlflow)
        metadata |= numeric_metadata({"bytes": page.stat().st_size})
        metadata["path"] = dg.MetadataValue.path(str(page))
        return dg.MaterializeResult(metadata=metadata)

    return [results_page]
