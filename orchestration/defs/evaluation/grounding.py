"""VidSTG and ActivityNet-Entities predictions and metrics per fine-tuned model (the paper's Tables 3-5).

Partitioned like iground_predictions / iground_metrics (one partition per fine-tuned variant).
Inference runs through Dagster Pipes (`orchestration.pipes_benchmarks`, grove.infer_benchmarks):
VidSTG by GROVE's single-phrase, teacher-forced grounding of the query on its tube (plus temporal
grounding of the query from the objectness curve), ActivityNet-Entities by GROVE's 10-frame
caption-and-ground protocol. Metrics are the official scorers of evaluation/ (msIoU per qtype and
R1@m / mIoU; F1_all / F1_loc and their per-sentence variants), written as one JSON per partition
under metrics/<benchmark>/, appended to the DuckDB metric tables and logged to MLflow.

In the paper profile the benchmarks are the official files ($GROVE_VIDSTG_DIR, $GROVE_ANET_DIR); in
the demo, synthetic stand-ins. The models are the iGround fine-tuned variants in both (the paper
fine-tunes a model on each of these benchmarks; that fine-tuning is not in this lineage).
"""

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

from grove.io import atomic_write_text
from orchestration.defs.benchmarks.assets import benchmark_key, benchmark_source
from orchestration.defs.common import FT_ONLY, OWNERS, code_version, input_dataset, input_versions, numeric_metadata, on_changed_inputs
from orchestration.compare import metric_key, mlflow_metrics
from orchestration.defs.evaluation.checks import metric_check_specs, report_check_results
from orchestration.defs.models.assets import FINETUNED
from orchestration.defs.models.partitions import variant_partitions
from orchestration.defs.scaling.assets import pretrain_clips, subset_clips
from orchestration.profile import Profile
from orchestration.resources import PRETRAIN_CLIPS, DvcResource, MlflowResource, PipelinePaths, PipesLauncher

GROUP = "evaluation"
BENCHMARKS = ("vidstg", "anet_entities")
CORENLP_ENV = "GROVE_CORENLP_URL"  # a running Stanford CoreNLP server: the reference's lemmatizer for ANet
DEFAULT_SPLIT = {"vidstg": "test", "anet_entities": "val"}
VIDSTG_TEMPORAL = ["R1@0.3", "R1@0.5", "R1@0.7", "mIoU"]
ANET_HEADLINE = ["F1_all", "F1_all_per_sent", "F1_loc", "F1_loc_per_sent"]


def predictions_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(f"{name}_predictions")


def metrics_key(name: str) -> dg.AssetKey:
    return dg.AssetKey(f"{name}_metrics")


def predictions_file(paths: PipelinePaths, name: str, variant: str) -> Path:
    """predictions/<benchmark>/<variant>.json, beside predictions/iground/."""
    return paths.path("predictions").parent / name / f"{variant}.json"


def metrics_file(paths: PipelinePaths, name: str, variant: str) -> Path:
    return paths.path("metrics", name, f"{variant}.json")


def mlflow_metric(name: str) -> str:
    """MLflow's name for a metric: it allows no '@' ("R1@0.5" -> "R1_at_0.5")."""
    return name.replace("@", "_at_")


def configured(profile: Profile) -> list[str]:
    """The benchmarks besides iGround that the profile names."""
    return [name for name in BENCHMARKS if profile.get(f"benchmarks.{name}", None)]


def split_of(profile: Profile, name: str) -> str:
    """The split of a benchmark that the lineage predicts and scores."""
    return str(profile.get(f"benchmarks.{name}.split", DEFAULT_SPLIT[name]))


def headline_metrics(profile: Profile, name: str) -> list[str]:
    """What a benchmark's table shows: VidSTG msIoU (all sentences, each qtype in the file) and the temporal
    R1@m / mIoU; ActivityNet-Entities F1_all / F1_loc and their per-sentence variants."""
    if name == "vidstg":
        return ["msIoU", *(VIDSTG_TEMPORAL if temporal_of(profile, name) else [])]
    return list(ANET_HEADLINE)


def evaluate(profile: Profile, paths: PipelinePaths, name: str, variant: str) -> Any:
    """The EvalReport of one variant's predictions, by the official scorer of the benchmark, with bootstrap
    intervals over its sentences / segments (`evaluation.bootstrap` of the profile)."""
    from evaluation.bootstrap import BootstrapSettings, add_intervals

    source = benchmark_source(profile, paths, name)
    split = split_of(profile, name)
    predictions = json.loads(predictions_file(paths, name, variant).read_text())
    bootstrap = BootstrapSettings.from_mapping(profile.get("evaluation.bootstrap", None))
    if name == "vidstg":
        from evaluation.vidstg import evaluate_vidstg_grounding, load_vidstg_gt

        gt = load_vidstg_gt(source.files[split])
        report = evaluate_vidstg_grounding(gt, predictions, split, temporal=temporal_of(profile, name))
        return add_intervals(report, bootstrap)
    from evaluation.anet_entities import CoreNLPLemmatizer, SpacyLemmatizer, evaluate_anet_entities, load_reference
    from grove.data.anet_entities import SPLIT_NAMES

    if source.split_ids is None:
        raise ValueError(f"benchmarks.{name}: no split_ids file to select the {split!r} videos")
    reference = load_reference(source.files[split], source.split_ids, [SPLIT_NAMES.get(split, split)])
    url = os.environ.get(CORENLP_ENV)
    lemmatizer = CoreNLPLemmatizer(url) if url else SpacyLemmatizer()

    def scored(class_match: str) -> Any:
        return evaluate_anet_entities(reference, predictions["results"], "gen", lemmatizer, split=split,
                                      class_match=class_match, bootstrap=bootstrap)

    report = scored("exact")  # the reference's numbers, always
    for option in [m for m in [str(profile.get(f"benchmarks.{name}.class_match", "exact"))] if m != "exact"]:
        report.alternatives[option] = scored(option)
    return report


def temporal_of(profile: Profile, name: str) -> bool:
    """Whether the benchmark's query is also grounded in time (VidSTG's `temporal` option)."""
    return name == "vidstg" and bool(profile.get("benchmarks.vidstg.temporal", True))


def dvc_grounding_stage(kind: str, name: str, variant: str) -> str:
    """dvc.yaml's stage of one variant's predictions or metrics (`kind`: predict, evaluate) on a benchmark."""
    return f"{kind}_grounding_{FT_ONLY}@{name}" if variant == FT_ONLY else f"{kind}_grounding@{name}-{variant}"


def prediction_extras(profile: Profile, paths: PipelinePaths, name: str, variant: str) -> dict[str, Any]:
    """What the prediction of one benchmark by one fine-tuned variant runs with (orchestration.pipes_benchmarks)."""
    return {"benchmark": name, "checkpoint": str(paths.path("finetuned", variant)), "dataset": str(paths.path("benchmarks", name)),
            "split": split_of(profile, name), "threshold": float(profile.get("inference.objectness_threshold")),
            "temporal": temporal_of(profile, name),
            "threads": int(profile.get("inference.threads", 1)), "out": str(predictions_file(paths, name, variant))}


def write_metrics(profile: Profile, paths: PipelinePaths, name: str, variant: str) -> tuple[Any, dict[str, Any]]:
    """Score one variant's predictions (`evaluate`) and write its metrics JSON atomically: (report, the JSON's dict).
    The metric asset and `grove pipeline evaluate-benchmark` (DVC's stage) both write the file through this."""
    report = evaluate(profile, paths, name, variant)
    written = report.to_dict()
    atomic_write_text(metrics_file(paths, name, variant), json.dumps(written, default=str) + "\n")
    return report, written


def _benchmark_assets(profile: Profile, name: str) -> list:
    variants = variant_partitions(profile)
    split = split_of(profile, name)
    temporal = temporal_of(profile, name)
    headline = headline_metrics(profile, name)
    benchmark = benchmark_key(name)
    protocol = {
        "vidstg": "GROVE's VidSTG protocol: the query sentence teacher-forced as one phrase (`<p> sentence </p> [DET]`, "
        "the first VidSTG question) on the 5 fps frames of its GT tube in sliding 8-frame windows, one box per frame"
        + ("; and the query grounded in time: the longest run of 5 fps frames of the video whose objectness passes "
           "the threshold" if temporal else ""),
        "anet_entities": "GROVE's ActivityNet-Entities protocol: per segment 10 frames at the midpoints of its tenths, "
        "a greedy caption from frames 0-7, then that answer teacher-forced on windows 0-7, 1-8 and 2-9; every phrase "
        "boxed on all 10 frames (720-pixel-wide coordinates)",
    }[name]

    @dg.asset(
        key=predictions_key(name),
        deps=[FINETUNED, benchmark],
        partitions_def=variants,
        group_name=GROUP,
        kinds={"pytorch", "json"},
        owners=OWNERS[GROUP],
        pool="gpu",
        code_version=code_version(profile, "1", f"benchmarks.{name}.split", f"benchmarks.{name}.temporal",
                                  "inference.objectness_threshold", stage="predict_grounding"),
        automation_condition=on_changed_inputs(),
        description=f"Predictions of each fine-tuned model on {name}'s {split} split by {protocol}; in the official "
        "prediction layout, a Pipes subprocess.",
    )
    def benchmark_predictions(
        context: dg.AssetExecutionContext, paths: PipelinePaths, launcher: PipesLauncher, mlflow: MlflowResource, dvc: DvcResource
    ) -> dg.MaterializeResult:
        variant = context.partition_key
        out = predictions_file(paths, name, variant)
        extras = prediction_extras(profile, paths, name, variant)
        inputs = input_versions(context, {"model": (FINETUNED, variant), name: (benchmark, None)})
        with mlflow.start_run(context, concern="inference", params=extras, tags=inputs) as run:
            run.log_axis(PRETRAIN_CLIPS, pretrain_clips(paths, variant))
            run.log_inputs([input_dataset(context, benchmark, None, Path(extras["dataset"]), "evaluation", split)])
            invocation = launcher.run(context, module="orchestration.pipes_benchmarks", extras=extras, nproc=1)
            reported = invocation.get_materialize_result()
            version = dvc.record(dvc_grounding_stage("predict", name, variant), [out])
            run.set_tags({"dvc.output": version})
            run.log_metrics({"clips": float(reported.metadata["clips"].value), "infer_seconds": float(reported.metadata["infer_seconds"].value)})
            run.log_artifact(out, "predictions")
        metadata = {**reported.metadata, "mlflow_run": dg.MetadataValue.url(run.url), "path": dg.MetadataValue.path(str(out))}
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))

    @dg.asset(
        key=metrics_key(name),
        deps=[predictions_key(name)],
        partitions_def=variants,
        group_name=GROUP,
        kinds={"python", "duckdb", "mlflow"},
        owners=OWNERS[GROUP],
        code_version=code_version(profile, "1", f"benchmarks.{name}", "evaluation.bootstrap", stage="evaluate_grounding"),
        automation_condition=on_changed_inputs(),
        check_specs=metric_check_specs(metrics_key(name), headline),
        description={
            "vidstg": "VidSTG msIoU per sentence type (declarative, interrogative; and over all sentences) and msIoU@0.3/0.5, "
            "exactly as GROVE's eval_vidstg.py computes them, and the temporal grounding of the query: R1@0.3/0.5/0.7 "
            "and mIoU of the predicted interval against the GT tube",
            "anet_entities": "ActivityNet-Entities F1_all, F1_all_per_sent, F1_loc, F1_loc_per_sent (and P/R) exactly as "
            "the reference evaluator (GROVE's eval_anet.py) computes them in `gen` mode, and beside them, where the "
            "profile's class_match says head_noun, the same with each predicted phrase read as its head noun",
        }[name] + "; with percentile bootstrap intervals over the sentences / segments; one JSON per model, appended "
        "to the DuckDB metric tables and logged to MLflow.",
    )
    def benchmark_metrics(context: dg.AssetExecutionContext, paths: PipelinePaths, mlflow: MlflowResource, dvc: DvcResource) -> dg.MaterializeResult:
        from evaluation.tables import record_report

        variant = context.partition_key
        inputs = input_versions(context, {"predictions": (predictions_key(name), variant), name: (benchmark, None)})
        settings = {key: value for key, value in dict(profile.get(f"benchmarks.{name}")).items() if not isinstance(value, dict)}
        with mlflow.start_run(context, concern="evaluation", params={"split": split, **settings}, tags=inputs) as run:
            run.log_axis(PRETRAIN_CLIPS, pretrain_clips(paths, variant))
            run.log_inputs([input_dataset(context, predictions_key(name), variant, predictions_file(paths, name, variant), "evaluation"),
                            input_dataset(context, benchmark, None, paths.path("benchmarks", name), "evaluation", split)])
            report, written = write_metrics(profile, paths, name, variant)
            out = metrics_file(paths, name, variant)
            record_report(paths.path("metrics", "metrics.duckdb"), report, checkpoint=f"{profile.name}:{variant}",
                          pretrain_size=None if variant == FT_ONLY else subset_clips(paths, variant))
            logged = {mlflow_metric(key): value for key, value in mlflow_metrics(written).items()}
            run.log_metrics(logged)
            run.log_dict(written, f"{name}_report.json")
            version = dvc.record(dvc_grounding_stage("evaluate", name, variant), [out])
            run.set_tags({"dvc.output": version})
        metadata = numeric_metadata({key: logged[key] for m in headline for bound in (None, "low", "high")
                                     if (key := mlflow_metric(metric_key(m, None, bound))) in logged})
        metadata |= {"bootstrap": dg.MetadataValue.json(written.get("uncertainty", {})), "counts": dg.MetadataValue.json(report.counts),
                     "mlflow_run": dg.MetadataValue.url(run.url), "path": dg.MetadataValue.path(str(out))}
        return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version),
                                    check_results=report_check_results(report, headline))

    return [benchmark_predictions, benchmark_metrics]


def build(profile: Profile) -> list:
    return [asset for name in configured(profile) for asset in _benchmark_assets(profile, name)]
