"""Predictions and metrics per fine-tuned model, the data-scaling curve, and the champion model.

Inference runs through Dagster Pipes like training (it needs the GPU); evaluation is the official
iGround protocol from evaluation/ beside the corrected one, every metric with its bootstrap interval
over the test clips (the profile's `evaluation.bootstrap`), appended to the DuckDB metric tables and
logged to MLflow. The metrics files (one JSON per partition, the same as `grove eval iground --json`)
are what DVC tracks and what the curve, `grove compare`'s paired differences and `grove demo`'s table read.
"""

import json
from pathlib import Path

import dagster as dg

from evaluation.bootstrap import BootstrapSettings
from grove.io import atomic_write_json, atomic_write_text
from orchestration.defs.benchmarks.assets import IGROUND
from orchestration.defs.common import (
    FT_ONLY, OWNERS, code_version, dvc_stage, input_dataset, input_versions, numeric_metadata, on_changed_inputs)
from orchestration.compare import REPORT_ARTIFACT, metric_key, mlflow_metrics, paired_difference_cells
from orchestration.defs.evaluation.checks import metric_check_specs, report_check_results
from orchestration.defs.models.assets import FINETUNED
from orchestration.defs.models.logged import example_video, model_to_register
from orchestration.defs.models.partitions import variant_partitions
from orchestration.defs.scaling.assets import SUBSET, pretrain_clips, subset_clips
from orchestration.profile import Profile
from orchestration.report import Cell, ScalingPoint, markdown_table, plot_scaling_curve
from orchestration.resources import PRETRAIN_CLIPS, DvcResource, MlflowResource, PipelinePaths, PipesLauncher

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


def variant_label(variant: str, clips: int | None) -> str:
    return "FT-only" if variant == FT_ONLY else f"{variant} ({clips})"


def point_of(label: str, clips: int | None, section: dict, protocol: str) -> ScalingPoint:
    """One protocol's numbers of a metrics file as a row of the scaling table."""
    intervals = {k: (float(v["low"]), float(v["high"])) for k, v in section.get("intervals", {}).items()}
    return ScalingPoint(label, clips, {k: float(v) for k, v in section["metrics"].items() if v is not None}, intervals,
                        protocol)


def scaling_points(profile: Profile, paths: PipelinePaths, benchmark: str = "iground") -> list[ScalingPoint]:
    """Rows of the data-scaling table of a benchmark's metrics (metrics/<benchmark>/<variant>.json): one per
    pre-training size, then FT-only (clips=None); each under the metrics file's primary protocol (official),
    with the other protocols' numbers in `other_protocols`."""
    points = []
    for variant in [*profile.sizes, FT_ONLY]:
        report = json.loads(paths.path("metrics", benchmark, f"{variant}.json").read_text())
        clips = None if variant == FT_ONLY else subset_clips(paths, variant)
        label = variant_label(variant, clips)
        point = point_of(label, clips, report, report["protocol"].get("preset", "official"))
        point.other_protocols = {name: point_of(label, clips, section, name)
                                 for name, section in report.get("other_protocols", {}).items()}
        points.append(point)
    return points


def differences_vs_ft_only(profile: Profile, paths: PipelinePaths, protocols: list[str],
                           metrics: list[str]) -> dict[str, list[tuple[str, dict[str, Cell]]]]:
    """Per protocol: each pre-training size minus FT-only (x100), with the paired interval of the difference
    (none without bootstrap resamples)."""
    if BootstrapSettings.from_mapping(profile.get("evaluation.bootstrap", None)).resamples == 0:
        return {}
    reports = variant_reports(profile, paths)
    return {protocol: paired_difference_cells(reports, "FT-only", metrics, protocol, scale=100.0) for protocol in protocols}


def variant_reports(profile: Profile, paths: PipelinePaths) -> list[tuple[str, dict]]:
    """(row label, iGround metrics JSON) of every fine-tuned variant: the sizes, then FT-only."""
    return [(variant_label(v, None if v == FT_ONLY else subset_clips(paths, v)), json.loads(metrics_file(paths, v).read_text()))
            for v in [*profile.sizes, FT_ONLY]]


def write_curve(profile: Profile, paths: PipelinePaths) -> tuple[Path, Path]:
    """The data-scaling plot (one row of panels per protocol) and its table (JSON rows: one per row and protocol)."""
    metrics = list(profile.get("evaluation.metrics"))
    points = scaling_points(profile, paths)
    title = f"iGround {profile.get('inference.split')}: data scaling ({profile.name})"
    plot = plot_scaling_curve(points, metrics, paths.path("reports", CURVE_PLOT), title)
    table = paths.path("reports", CURVE_TABLE)
    rows = []
    for point in points:
        for protocol in point.protocols:
            part = point.under(protocol)
            rows.append({"row": part.label, "clips": part.clips, "protocol": protocol,
                         **{m: part.metrics.get(m) for m in metrics},
                         **{f"{m}.ci_{bound}": part.intervals[m][i] for m in metrics if m in part.intervals
                            for i, bound in enumerate(("low", "high"))}})
    atomic_write_json(table, rows)
    return plot, table


def curve_markdown(points: list[ScalingPoint], metrics: list[str]) -> str:
    """The table as Markdown, one block per protocol: metrics x100 as the paper prints them, with their intervals."""
    return "\n\n".join(markdown_table(f"pre-training ({protocol})", metrics, [(p.label, p.under(protocol).cells(100.0)) for p in points])
                       for protocol in (points[0].protocols if points else []))


def build(profile: Profile) -> list:
    variants = variant_partitions(profile)
    metrics = list(profile.get("evaluation.metrics"))
    split = str(profile.get("inference.split"))
    threshold = float(profile.get("inference.objectness_threshold"))
    threads = int(profile.get("inference.threads", 1))
    bootstrap = BootstrapSettings.from_mapping(profile.get("evaluation.bootstrap", None))

    @dg.asset(
        key=PREDICTIONS,
        deps=[FINETUNED, IGROUND],
        partitions_def=variants,
        group_name=GROUP,
        kinds={"pytorch", "json"},
        owners=OWNERS[GROUP],
        pool="gpu",
        code_version=code_version(profile, "1", "inference", stage="predict"),
        automation_condition=on_changed_inputs(),
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
        with mlflow.start_run(context, concern="inference", params=extras, tags=inputs) as run:
            run.log_axis(PRETRAIN_CLIPS, pretrain_clips(paths, variant))
            run.log_inputs([input_dataset(context, IGROUND, None, paths.path("iground"), "evaluation", split)])
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
        code_version=code_version(profile, "3", "evaluation", stage="evaluate"),
        automation_condition=on_changed_inputs(),
        check_specs=metric_check_specs(METRICS, metrics),
        description="iGround METEOR, CIDEr, AP50 (per video, class-agnostic COCO) and Recall, exactly as the "
        "official evaluator computes them, beside the corrected protocol's (xyxy recall, by-query pairing), each "
        "with its bootstrap interval over the test clips; appended to the DuckDB metric tables and logged to MLflow.",
    )
    def iground_metrics(context: dg.AssetExecutionContext, paths: PipelinePaths, mlflow: MlflowResource, dvc: DvcResource) -> dg.MaterializeResult:
        from evaluation.bootstrap import add_intervals
        from evaluation.iground import evaluate_iground_files, protocols_side_by_side
        from evaluation.tables import record_report

        variant = context.partition_key
        protocols = protocols_side_by_side("official", "auto", threshold)
        inputs = input_versions(context, {"predictions": (PREDICTIONS, variant), "iground": (IGROUND, None)})
        params = {"protocol": "official", "protocols": ",".join(protocols), "split": split, "threshold": threshold,
                  **{f"bootstrap.{k}": v for k, v in bootstrap.to_dict().items() if k != "method"}}
        predictions = paths.path("predictions", f"{variant}.json")
        with mlflow.start_run(context, concern="evaluation", params=params, tags=inputs) as run:
            run.log_axis(PRETRAIN_CLIPS, pretrain_clips(paths, variant))
            run.log_inputs([input_dataset(context, PREDICTIONS, variant, predictions, "evaluation"),
                            input_dataset(context, IGROUND, None, paths.path("iground"), "evaluation", split)])
            report = evaluate_iground_files(paths.path("iground"), predictions, split, protocols)
            add_intervals(report, bootstrap)
            out = metrics_file(paths, variant)
            written = report.to_dict()
            write_metrics_report(out, written)
            pretrain_size = None if variant == FT_ONLY else subset_clips(paths, variant)
            record_report(metrics_database(paths), report, checkpoint=f"{profile.name}:{variant}", pretrain_size=pretrain_size)
            logged = mlflow_metrics(written)
            run.log_metrics(logged)
            run.log_dict(written, REPORT_ARTIFACT)
            version = dvc.record(dvc_stage("evaluate", variant), [out])
            run.set_tags({"dvc.output": version})
        # the headline metrics and their bounds, every protocol, as numbers Dagster plots over materialisations
        presets = [None, *written.get("other_protocols", {})]
        metadata = numeric_metadata({key: logged[key] for preset in presets for m in metrics for bound in (None, "low", "high")
                                     if (key := metric_key(m, preset, bound)) in logged})
        points = [point_of(variant, None, written, "official"),
                  *(point_of(variant, None, section, name) for name, section in written.get("other_protocols", {}).items())]
        metadata |= {"metrics": dg.MetadataValue.md(markdown_table("protocol", metrics, [(p.protocol, p.cells(100.0)) for p in points])),
                     "bootstrap": dg.MetadataValue.json(written.get("uncertainty", {})),
                     "counts": dg.MetadataValue.json(report.counts), "mlflow_run": dg.MetadataValue.url(run.url),
                     "path": dg.MetadataValue.path(str(out))}
        return dg.MaterializeResult(
            metadata=metadata, data_version=dg.DataVersion(version), check_results=report_check_results(report, metrics)
        )

    @dg.asset(
        key=CURVE,
        deps=[METRICS, SUBSET],
        group_name=GROUP,
        kinds={"python", "matplotlib", "mlflow"},
        owners=OWNERS[GROUP],
        code_version=code_version(profile, "2", "evaluation.metrics"),
        automation_condition=on_changed_inputs(),
        description="The data-scaling curve: each iGround metric against the number of pre-training clips (log "
        "axis), with its interval as an error bar and FT-only as a band, under the official and the corrected "
        "protocol; a plot and its table, and each size's paired difference from FT-only.",
    )
    def data_scaling_curve(context: dg.AssetExecutionContext, paths: PipelinePaths, mlflow: MlflowResource, dvc: DvcResource) -> dg.MaterializeResult:
        plot, table = write_curve(profile, paths)
        with mlflow.start_run(context, concern="reports", params={"metrics": ",".join(metrics), "sizes": ",".join(profile.sizes)}) as run:
            run.log_artifact(plot, "reports")
            run.log_artifact(table, "reports")
            version = dvc.record("curve", [plot, table])
            run.set_tags({"dvc.output": version})
        points = scaling_points(profile, paths)
        differences = {protocol: markdown_table("minus FT-only", metrics, rows) for protocol, rows in
                       differences_vs_ft_only(profile, paths, points[0].protocols if points else [], metrics).items()}
        return dg.MaterializeResult(
            metadata={"table": dg.MetadataValue.md(curve_markdown(points, metrics)), "plot": dg.MetadataValue.path(str(plot)),
                      **{f"vs FT-only ({p})": dg.MetadataValue.md(text) for p, text in differences.items()},
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
        automation_condition=on_changed_inputs(),
        description=f"The fine-tuned model with the best iGround {champion_metric}, registered in the MLflow "
        "model registry under the alias 'champion': the GROVE MLflow model its training run logged (or, with "
        "`mlflow.log_models` off, the one this asset logs), loadable as `models:/<name>@champion`.",
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
            model_id, logged_by = model_to_register(mlflow, run, trained.info.run_id, checkpoint,
                                                    example=example_video(paths.path("iground")), work_dir=paths.path("finetuned", best))
            version = mlflow.register(model_id, alias="champion",
                                      tags={"partition": best, champion_metric: str(scores[best]), "training_run": trained.info.run_id})
            run.set_tags({"registered_version": version, "registered_model_id": model_id})
        return dg.MaterializeResult(
            metadata={"chosen": best, champion_metric: float(scores[best]), "registered_model": mlflow.registered_model,
                      "version": version, "model_uri": f"models:/{mlflow.registered_model}@champion",
                      "logged_model": f"models:/{model_id}", "logged_by": logged_by,
                      "checkpoint": dg.MetadataValue.path(str(checkpoint)), "mlflow_run": dg.MetadataValue.url(run.url)}
        )

    return [iground_predictions, iground_metrics, data_scaling_curve, champion_model]
