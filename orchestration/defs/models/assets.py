"""Checkpoints: pre-trained per subset size, fine-tuned on iGround from each (and from scratch: FT-only).

Training runs as a subprocess launched through Dagster Pipes (`torchrun` with the profile's
processes per node; on a cluster the launcher resource is swapped for Slurm or Kubernetes). Every
materialisation is one MLflow run (experiment `<prefix>/pretraining` or `/finetuning`): the training
config and the pre-training clips as params, the loss curves and system metrics that the training
process logs to the run while it trains, its data as dataset inputs (the DVC hash as the digest; also
as tags), and the run's small files as artifacts.
"""

from pathlib import Path
from typing import Any, Mapping, Sequence

import dagster as dg

from orchestration.defs.benchmarks.assets import IGROUND
from orchestration.defs.common import FT_ONLY, OWNERS, code_version, dvc_stage, input_dataset, input_versions, on_changed_inputs
from orchestration.defs.models.logged import log_trained_model
from orchestration.defs.models.partitions import pretrained_of_variant, variant_partitions
from orchestration.defs.raw_videos.assets import external_folder
from orchestration.defs.scaling.assets import SUBSET, pretrain_clips
from orchestration.defs.scaling.partitions import size_partitions
from orchestration.profile import Profile
from orchestration.resources import PRETRAIN_CLIPS, DvcResource, MlflowResource, PipelinePaths, PipesLauncher, RunDataset

GROUP = "models"
PRETRAINED = dg.AssetKey("pretrained_model")
FINETUNED = dg.AssetKey("finetuned_model")
TRAINING_FILES = ("train_config.json", "result.json", "metrics.jsonl")


def train_config(profile: Profile, phase: str, **fields: Any) -> dict[str, Any]:
    """A grove.train.TrainConfig as a dict: the profile's model and `model.<phase>` settings, then `fields`.

    Every materialisation may resume: grove.train continues the run in its folder when the run's
    fingerprint (parameters, data and code versions) is the one recorded with its checkpoints,
    whoever started it (a retry, a new run after a crash, a backfill); new data or new parameters
    start fresh and move the previous run aside (grove.resume).
    """
    return {"model": profile.get("model.config"), "seed": profile.seed, **dict(profile.get(f"model.{phase}")), **fields, "resume": True}


GLAMM_DESCRIPTION = "the imported GLaMM checkpoint (`grove weights import --from glamm SRC --out DIR`)"


def start_from(profile: Profile) -> str | None:
    """The checkpoint every training of the profile starts from when nothing better is given (the paper
    profile: GLaMM, as the official train.py), or None (random initialisation)."""
    setting = profile.get("model.start_from", None)
    if setting is None:
        return None
    return str(external_folder(setting["env"], GLAMM_DESCRIPTION))


def train_through_pipes(
    context: dg.AssetExecutionContext,
    *,
    launcher: PipesLauncher,
    mlflow: MlflowResource,
    dvc: DvcResource,
    config: Mapping[str, Any],
    inputs: Mapping[str, tuple[dg.AssetKey, str | None]],
    stage: str,
    concern: str,
    clips: int,
    datasets: Sequence[RunDataset],
) -> dg.MaterializeResult:
    """Train in a Pipes subprocess inside one MLflow run of `concern`'s experiment, which the training process
    logs its curves to; `clips`: the pre-training clips behind the model. The DVC hash of the output is the data version."""
    out = Path(config["out_dir"])
    input_hashes = input_versions(context, inputs)
    with mlflow.start_run(context, concern=concern, params=config, tags=input_hashes) as run:
        run.log_axis(PRETRAIN_CLIPS, clips)
        run.log_inputs(datasets)
        extras = {"train_config": dict(config), "mlflow": mlflow.pipes_extras(run)}
        invocation = launcher.run(context, module="orchestration.pipes_train", extras=extras)
        reported = invocation.get_materialize_result()
        for name in TRAINING_FILES:
            if (out / name).exists():
                run.log_artifact(out / name, "training")
        version = dvc.record(stage, [out])
        checkpoint = reported.metadata["checkpoint"].value
        run.set_tags({"dvc.output": version, "checkpoint": checkpoint})
        finals = {name: reported.metadata[name].value for name in ("final_train_loss", "best_val_loss") if name in reported.metadata}
        run.log_metrics(finals, step=int(reported.metadata["steps"].value))
        logged_model = log_trained_model(mlflow, run, checkpoint, step=int(reported.metadata["steps"].value), config=dict(config))
    metadata = {
        **reported.metadata,
        "mlflow_run": dg.MetadataValue.url(run.url),
        **logged_model,
        "path": dg.MetadataValue.path(str(out)),
        **{key: dg.MetadataValue.text(value) for key, value in input_hashes.items()},
    }
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(version))


def build(profile: Profile) -> list:
    pool_split = profile.get("scaling.pool_split", None)

    @dg.asset(
        key=PRETRAINED,
        deps=[SUBSET],
        partitions_def=size_partitions(profile),
        group_name=GROUP,
        kinds={"pytorch", "mlflow"},
        owners=OWNERS[GROUP],
        pool="gpu",
        code_version=code_version(profile, "1", "seed", "model.config", "model.pretrain", "model.nproc_per_node", stage="pretrain"),
        automation_condition=on_changed_inputs(),
        description="GROVE pre-trained on one pre-training subset (the HowToGround1M stand-in), in a "
        "torchrun subprocess through Dagster Pipes; safetensors checkpoints, the best by validation loss. "
        "Starts from the profile's `model.start_from` (the paper: GLaMM) or from random weights.",
    )
    def pretrained_model(
        context: dg.AssetExecutionContext, paths: PipelinePaths, launcher: PipesLauncher, mlflow: MlflowResource, dvc: DvcResource
    ) -> dg.MaterializeResult:
        size = context.partition_key
        subset = paths.path("subsets", size)
        config = train_config(
            profile, "pretrain", train_data=str(subset), out_dir=str(paths.path("pretrained", size)),
            train_split=pool_split or "all", init=start_from(profile),
        )
        training_data = input_dataset(context, SUBSET, size, subset, "training", split=pool_split)
        return train_through_pipes(
            context, launcher=launcher, mlflow=mlflow, dvc=dvc, config=config, inputs={"subset": (SUBSET, size)},
            stage=dvc_stage("pretrain", size), concern="pretraining", clips=pretrain_clips(paths, size), datasets=[training_data],
        )

    @dg.asset(
        key=FINETUNED,
        deps=[dg.AssetDep(PRETRAINED, partition_mapping=pretrained_of_variant(profile)), IGROUND],
        partitions_def=variant_partitions(profile),
        group_name=GROUP,
        kinds={"pytorch", "mlflow"},
        owners=OWNERS[GROUP],
        pool="gpu",
        code_version=code_version(profile, "1", "seed", "model.config", "model.finetune", "model.nproc_per_node", stage="finetune"),
        automation_condition=on_changed_inputs(),
        description="GROVE fine-tuned on iGround's train split (validated on val), starting from the "
        f"pre-trained model of the partition's size; partition '{FT_ONLY}' starts from the profile's "
        "`model.start_from` (the paper: GLaMM) or from scratch.",
    )
    def finetuned_model(
        context: dg.AssetExecutionContext, paths: PipelinePaths, launcher: PipesLauncher, mlflow: MlflowResource, dvc: DvcResource
    ) -> dg.MaterializeResult:
        variant = context.partition_key
        benchmark = paths.path("iground")
        inputs = {"iground": (IGROUND, None)}
        init = start_from(profile)
        if variant != FT_ONLY:
            init = paths.path("pretrained", variant)
            inputs["pretrained"] = (PRETRAINED, variant)
        config = train_config(
            profile,
            "finetune",
            train_data=str(benchmark),
            out_dir=str(paths.path("finetuned", variant)),
            train_split="train",
            val_split="val",
            init=str(init) if init else None,
        )
        datasets = [input_dataset(context, IGROUND, None, benchmark, usage, split) for usage, split in (("training", "train"), ("validation", "val"))]
        return train_through_pipes(
            context, launcher=launcher, mlflow=mlflow, dvc=dvc, config=config, inputs=inputs, stage=dvc_stage("finetune", variant),
            concern="finetuning", clips=pretrain_clips(paths, variant), datasets=datasets,
        )

    return [pretrained_model, finetuned_model]
