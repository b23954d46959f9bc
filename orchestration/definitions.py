"""The GROVE code location: the whole lineage as Dagster assets, built from one params.yaml profile.

`dagster dev -w workspace.yaml` loads `defs`; tests and `grove demo` call `build_definitions` with
their own profile and runs root. Library modules (torch, mlflow, the annotators) are imported
inside asset bodies, so loading the definitions stays quick.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import dagster as dg

from orchestration import schedules, sensors
from orchestration.jobs import lineage_jobs
from orchestration.defs.annotation import assets as annotation_assets
from orchestration.defs.benchmarks import assets as benchmark_assets
from orchestration.defs.evaluation import assets as evaluation_assets
from orchestration.defs.evaluation import grounding as grounding_assets
from orchestration.defs.models import assets as model_assets
from orchestration.defs.raw_videos import assets as raw_video_assets
from orchestration.defs.reports import assets as report_assets
from orchestration.defs.scaling import assets as scaling_assets
from orchestration.profile import REPO_ROOT, Profile, ProfileError, load_profile, runs_root
from orchestration.resources import DvcResource, MlflowResource, PipelinePaths, TorchrunLauncher

DVC_PROFILE = "demo"  # the profile dvc.yaml's stages describe (paths under runs/demo)
DVC_ENV = "GROVE_DVC"  # "0" turns DVC commits off (data versions are then computed without DVC)


def experiment_name(profile: Profile) -> str:
    """The prefix of the profile's MLflow experiments (`<prefix>/<concern>`)."""
    return str(profile.get("mlflow.experiment", f"grove-{profile.name}"))


def mlflow_settings(profile: Profile) -> dict[str, Any]:
    """The profile's `mlflow` settings of MlflowResource besides the experiment (e.g. system_metrics_interval_s, log_models)."""
    fields = ("system_metrics_interval_s", "metrics_flush_s")
    settings: dict[str, Any] = {name: float(profile.get(f"mlflow.{name}")) for name in fields if profile.get(f"mlflow.{name}", None) is not None}
    log_models = profile.get("mlflow.log_models", None)
    if log_models is not None:
        if not isinstance(log_models, bool):
            raise ProfileError(f"{profile.params_file}: profile '{profile.name}': mlflow.log_models must be true or false, not {log_models!r}")
        settings["log_models"] = log_models
    return settings


def dvc_enabled(profile: Profile, root: Path) -> bool:
    """DVC records outputs only where dvc.yaml describes them: the demo profile under runs/demo."""
    if os.environ.get(DVC_ENV, "1") == "0" or profile.name != DVC_PROFILE:
        return False
    default = (REPO_ROOT / "runs" / DVC_PROFILE).resolve()
    return root.resolve() == default and (REPO_ROOT / "dvc.yaml").exists()


def default_resources(profile: Profile, root: Path) -> dict[str, Any]:
    return {
        "paths": PipelinePaths(root=str(root)),
        "mlflow": MlflowResource.from_env(root, experiment_name(profile), **mlflow_settings(profile)),
        "dvc": DvcResource(enabled=dvc_enabled(profile, root)),
        "launcher": TorchrunLauncher(nproc_per_node=int(profile.get("model.nproc_per_node", 1))),
    }


def build_definitions(
    profile: Profile | None = None, root: Path | None = None, resources: Mapping[str, Any] | None = None
) -> dg.Definitions:
    profile = profile or load_profile()
    root = Path(root) if root is not None else runs_root(profile)
    assets = [
        *raw_video_assets.build(profile),
        *benchmark_assets.build(profile),
        *annotation_assets.build(profile),
        *scaling_assets.build(profile),
        *model_assets.build(profile),
        *evaluation_assets.build(profile),
        *grounding_assets.build(profile),
    ]
    assets += report_assets.build(profile, report_assets.report_inputs(assets))
    return dg.Definitions(
        assets=assets,
        jobs=lineage_jobs(assets, profile),
        sensors=sensors.build(profile),
        schedules=schedules.build(profile),
        resources={**default_resources(profile, root), **(resources or {})},
        # One run may hold several steps at once; the `gpu` pool (dagster.yaml) limits GPU steps.
        executor=dg.multiprocess_executor.configured({"max_concurrent": int(profile.get("orchestration.max_concurrent", 2))}),
    )


defs = build_definitions()
