"""Predictions and metrics per fine-tuned model, the data-scaling curve, and the champion model.

Inference runs through Dagster Pipes like training (it needs the GPU); evaluation is the official
iGround protocol from evaluation/, appended to the DuckDB metric tables and logged to MLflow. The
metrics files (one JSON per partition, the same as `grove eval iground --json`) are what DVC tracks
and what the curve and `grove demo`'s table read.
"""

import json
from pathlib import Path

import dagster as dg

from grove.io import atomic_write_json, atomic_write_text
from orchestration.defs.benchmarks.assets import IGROUND
from orchestration.defs.common import FT_ONLY, OWNERS, code_version, dvc_stage, input_versions, numeric_metadata
from orchestration.defs.evaluation.checks import metric_check_results, metric_check_specs
from orchestration.defs.models.assets import FINETUNED
from orchestration.defs.models.partitions import variant_partitions
from orchestration.defs.scaling.assets import SUBSET
from orchestration.profile import Profile
from orchestration.report import ScalingPoint, plot_scaling_curve
from orchestration.resources import DvcResource, MlflowResource, PipelinePaths, PipesLauncher

GROUP = "evaluation"
PREDICTIONS = dg.AssetKey("iground_predictions")
METRICS = dg.AssetKey("iground_metrics")
CURVE = dg.AssetKey("data_scaling_curve")
CHAMPION = dg.AssetKey("champion_model")
CURVE_PLOT = "data_scaling.png"
CURVE_TABLE = "data_scaling.json"


def metrics_file(paths: PipelinePaths, variant: str) -> Path:
    return paths.path("metrics", "iground", f"{variant}.json")


def write_metrics_report(path: Path, report: dict) -> None:
    """The report exactly as `grove eval iground --json` prints it (DVC's `evaluate` stages write that
    output), so the asset and the stage make byte-identical files with the same DVC hash."""
    atomic_write_text(path, json.dumps(report, default=str) + "\n")


def metrics_database(paths: PipelinePaths) -> Path:
    return paths.path("metrics", "metrics.duckdb")


def subset_clips(paths: PipelinePaths, size: str) -> int:
    """How many clips the subset of `size` holds (its manifest), the x of the scaling curve."""
    manifest = json.loads((paths.path("subsets", size) / "dataset.json").read_text())
    return int(sum(manifest["splits"].values()))


def scaling_points(profile: Profile, paths: PipelinePaths) -> list[ScalingPoint]:
    """Rows of the data-scaling table: one per pre-training size, then FT-only (clips=None)."""
    points = []
    for variant in [*profile.sizes, FT_ONLY]:
        report = json.loads(metrics_file(paths, variant).read_text())
        clips = None if variant == FT_ONLY else subset_clips(paths, variant)
        label = "FT-only" if variant == FT_ONLY else f"{variant} ({clips})"
        points.append(ScalingPoint(label, clips, {k: float(v) for k, v in report["metrics"].items() if v is not None}))
    return points


def write_curve(profile: Profile, paths: PipelinePaths) -> tuple[Path, Path]:
    """The data-scaling plot and its table (JSON rows) from the metrics files."""
    metrics = list(profile.get("evaluation.metrics"))
    points = scaling_points(profile, paths)
    title = f"iGround {profile.get('inference.split')}: data scaling ({profile.name})"
    plot = plot_scaling_curve(points, metrics, paths.path("reports", CURVE_PLOT), title)
    table = paths.path("reports", CURVE_TABLE)
    atomic_write_json(table, [{"row": p.label, "clips": p.clips, **{m: p.metrics.get(m) for m in metrics}} for p in points])
    return plot, table


def curve_markdown(points: list[ScalingPoint], metrics: list[str]) -> str:
    """The table as Markdown, metrics x100 as the paper prints them."""
    lines = ["| pre-training | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    for p in points:
        lines.append("| " + p.label + " | " + " | ".join(f"{100 * p.metrics[m]:.2f}" if m in p.metrics else "-" for m in metrics) + " |")
    return "\n".join(lines)


def build(profile: Profile) -> list:
    variants = variant_partitions(profile)
    metrics = list(profile.get("evaluation.metrics"))
    split = str(profile.get("inference.split"))
    threshold = float(profile.get("inference.objectness_threshold"))
    threads = int(profile.get("inference.threads", 1))

    @dg.asset(
        key=PREDICTIONS,
        deps=[FINETUNED, IGROUND],
        partitions_def=variants,
        group_name=GROUP,
        kinds={"pytorch", "json"},
        owners=OWNERS[GROUP],
        pool="gpu",
        code_version=code_version(profile, "1", "inference"),
        automation_condition=dg.AutomationCondition.eager(),
        description=f"Grounded captions for iGround's {split} split by the official GROVE protocol (5 fps "
        "frames, sliding 8-frame windows, greedy caption from the centre window, objectness threshold), "
        "in the official prediction layout; a Pipes subprocess.",
    )
    def iground_predictions(
        context: dg.AssetExecutionContext, paths: PipelinePaths, launcher: PipesLauncher, mlflow: MlflowResource, dvc: DvcResource
    ) -> dg.MaterializeResult:
        variant = context.partition_key
        out = paths.path("predictions", f"{variant}.json")
        extras = {"checkpoint": str(paths.path("finetuned", variant)), "dataset": str(paths.path("iground")),
                  "split": split, "threshold": threshold, "threads": threads, "out": str(out)}
        inputs = input_versions(context, {"model": (FINETUNED, variant), "iground": (IGROUND, None)})
        with mlflow.start_run(context, params=extras, tags=inputs) as run:
            invocation = launcher.run(context, module="orchestration.pipes_infer", extras=extras, nproc=1)
            reported = invocation.get_materialize_result()
            version = dvc.record(dvc_stage("predict", variant), [out])
            run.set_tags({"dvc.output": version})
            run.log_metrics({"clips": float(reported.metadata["clips"].value), "infer_seconds": float(reported.metadata["infer_seconds"].value)})
            run.log_artifact(out, "predictions")
        metadata = {**reported.metadata, "mlflow_run": dg.MetadataValue.url(run.url), "path": dg.MetadataValue.path(str(out))}
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))

    @dg.asset(
        key=METRICS,
        deps=[PREDICTIONS],
        partitions_def=variants,
        group_name=GROUP,
        kinds={"python", "duckdb", "mlflow"},
        owners=OWNERS[GROUP],
        code_version=code_version(profile, "2", "evaluation"),
        automation_condition=dg.AutomationCondition.eager(),
        check_specs=metric_check_specs(METRICS, metrics),
        description="iGround METEOR, CIDEr, AP50 (per video, class-agnostic COCO) and Recall, exactly as the "
        "official evaluator computes them; appended to the DuckDB metric tables and logged to MLflow.",
    )
    def iground_metrics(context: dg.AssetExecutionContext, paths: PipelinePaths, mlflow: MlflowResource, dvc: DvcResource) -> dg.MaterializeResult:
        import dataclasses

        from evaluation.iground import PRESETS, evaluate_iground_files
        from evaluation.tables import record_report

        variant = context.partition_key
        protocol = dataclasses.replace(PRESETS["official"], objectness_threshold=threshold)
        inputs = input_versions(context, {"predictions": (PREDICTIONS, variant), "iground": (IGROUND, None)})
        with mlflow.start_run(context, params={"protocol": "official", "split": split, "threshold": threshold}, tags=inputs) as run:
            report = evaluate_iground_files(paths.path("iground"), paths.path("predictions", f"{variant}.json"), split, protocol)
            report.protocol["preset"] = "official"
            out = metrics_file(paths, variant)
            write_metrics_report(out, report.to_dict())
            pretrain_size = None if variant == FT_ONLY else subset_clips(paths, variant)
            record_report(metrics_database(paths), report, checkpoint=f"{profile.name}:{variant}", pretrain_size=pretrain_size)
            run.log_metrics({name: value for name, value in report.metrics.items() if value is not None})
            run.log_dict(report.to_dict(), "iground_report.json")
            version = dvc.record(dvc_stage("evaluate", variant), [out])
            run.set_tags({"dvc.output": version})
        metadata = numeric_metadata({name: float(value) for name, value in report.metrics.items() if value is not None})
        metadata |= {"counts": dg.MetadataValue.json(report.counts), "mlflow_run": dg.MetadataValue.url(run.url),
                     "path": dg.MetadataValue.path(str(out))}
        return dg.MaterializeResult(
            metadata=metadata, data_version=dg.DataVersion(version), check_results=metric_check_results(report.metrics, metrics, report.protocol)
        )

    @dg.asset(
        key=CURVE,
        deps=[METRICS, SUBSET],
        group_name=GROUP,
        kinds={"python", "matplotlib", "mlflow"},
        owners=OWNERS[GROUP],
        code_version=code_version(profile, "1", "evaluation.metrics"),
        automation_condition=dg.AutomationCondition.eager(),
        description="The data-scaling curve: each iGround metric against the number of pre-training clips, "
        "with FT-only as the baseline; a plot and its table.",
    )
    def data_scaling_curve(context: dg.AssetExecutionContext, paths: PipelinePaths, mlflow: MlflowResource, dvc: DvcResource) -> dg.MaterializeResult:
        plot, table = write_curve(profile, paths)
        with mlflow.start_run(context, params={"metrics": ",".join(metrics), "sizes": ",".join(profile.sizes)}) as run:
            run.log_artifact(plot, "reports")
            run.log_artifact(table, "reports")
            version = dvc.record("curve", [plot, table])
            run.set_tags({"dvc.output": version})
        return dg.MaterializeResult(
            metadata={"table": dg.MetadataValue.md(curve_markdown(scaling_points(profile, paths), metrics)), "plot": dg.MetadataValue.path(str(plot)),
                      "mlflow_run": dg.MetadataValue.url(run.url)},
            data_version=dg.DataVersion(version),
        )

    champion_metric = str(profile.get("evaluation.champion_metric"))

    @dg.asset(
        key=CHAMPION,
        deps=[METRICS, FINETUNED],
        group_name="models",
        kinds={"mlflow"},
        owners=OWNERS["models"],
        code_version=code_version(profile, "1", "evaluation.champion_metric"),
        automation_condition=dg.AutomationCondition.eager(),
        description=f"The fine-tuned model with the best iGround {champion_metric}, registered in the MLflow "
        "model registry under the alias 'champion'.",
    )
    def champion_model(context: dg.AssetExecutionContext, paths: PipelinePaths, mlflow: MlflowResource) -> dg.MaterializeResult:
        from grove.train import resolve_checkpoint

        scores = {p: json.loads(metrics_file(paths, p).read_text())["metrics"].get(champion_metric) for p in [*profile.sizes, FT_ONLY]}
        best = max((p for p in scores if scores[p] is not None), key=lambda p: scores[p])
        trained = mlflow.latest_run(FINETUNED.to_user_string(), best)
        if trained is None:
            raise RuntimeError(f"no finished MLflow run of {FINETUNED.to_user_string()}[{best}] to register")
        checkpoint = resolve_checkpoint(paths.path("finetuned", best))
        with mlflow.start_run(context, params={"metric": champion_metric, "chosen": best}) as run:
            run.log_metrics({f"{champion_metric}.{p}": v for p, v in scores.items() if v is not None})
            version = mlflow.register(trained.info.run_id, checkpoint.resolve().as_uri(), alias="champion",
                                      tags={"partition": best, champion_metric: str(scores[best])})
            run.set_tags({"registered_version": version})
        return dg.MaterializeResult(
            metadata={"chosen": best, champion_metric: float(scores[best]), "registered_model": mlflow.registered_model,
                      "version": version, "checkpoint": dg.MetadataValue.path(str(checkpoint)),
                      "mlflow_run": dg.MetadataValue.url(run.url)}
        )

    return [iground_predictions, iground_metrics, data_scaling_curve, champion_model]
