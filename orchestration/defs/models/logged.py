"""Checkpoints as MLflow models: what a training run logs and what the champion registers.

Each training run logs its resulting checkpoint (the best, else the last) as a GROVE MLflow model
(orchestration/mlflow_model.py) when the profile's `mlflow.log_models` is on. Off (the paper profile: a
self-contained 7B model is ~15 GB), the run is tagged so, its materialisation says so, and the champion
asset logs the one checkpoint it registers itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import dagster as dg

from orchestration.resources import LOGGED_MODEL_TAG, MlflowResource, TrackedRun

LOG_MODELS_KEY = "mlflow.log_models"
MODEL_LOGGED_TAG = "grove.model_logged"  # "true" / "false" on every training run
NOT_LOGGED = f"not logged: {LOG_MODELS_KEY} is off in this profile (the champion logs the model it registers)"


def example_video(dataset_dir: str | os.PathLike[str], video_root: str | os.PathLike[str] | None = None) -> Path | None:
    """The video of a dataset folder's first clip, for a logged model's input example (None if it is not on
    disk). Reads one column of the clip table: a pre-training subset can hold a million clips."""
    import pyarrow.parquet as pq

    from grove.data.dataset import DatasetPaths

    paths = DatasetPaths(Path(dataset_dir))
    table = pq.read_table(paths.clips, columns=["video_path"])
    if table.num_rows == 0:
        return None
    video = Path(table["video_path"][0].as_py())
    video = video if video.is_absolute() else Path(video_root or paths.root) / video
    return video if video.is_file() else None


def log_model(run: TrackedRun, checkpoint: str | os.PathLike[str], *, step: int,
              example: Path | None, work_dir: str | os.PathLike[str] | None = None) -> Any:
    """Log `checkpoint` as the GROVE model of `run`, tagged on the run; returns the READY LoggedModel."""
    from orchestration.mlflow_model import log_grove_model

    logged = log_grove_model(run.client, experiment_id=run.experiment_id, run_id=run.run_id, checkpoint=checkpoint, step=step,
                             example_video=example, work_dir=work_dir)
    run.set_tags({MODEL_LOGGED_TAG: "true", LOGGED_MODEL_TAG: logged.model_id})
    return logged


def log_trained_model(mlflow: MlflowResource, run: TrackedRun, checkpoint: str | os.PathLike[str], *, step: int,
                      config: dict[str, Any]) -> dict[str, dg.MetadataValue]:
    """A training run's resulting checkpoint as its MLflow model when `mlflow.log_models` is on; the asset
    metadata (and the run's tags) say what was logged or why nothing was. `config`: the run's TrainConfig
    fields (the input example is a video of its training data; the model is assembled in its `out_dir`
    under a name that DVC ignores)."""
    if not mlflow.log_models:
        run.set_tags({MODEL_LOGGED_TAG: "false", "grove.model_not_logged": NOT_LOGGED})
        return {"mlflow_model": dg.MetadataValue.text(NOT_LOGGED)}
    example = example_video(config["train_data"], config.get("video_root"))
    logged = log_model(run, checkpoint, step=step, example=example, work_dir=config["out_dir"])
    return {"mlflow_model": dg.MetadataValue.text(logged.model_uri), "mlflow_model_id": dg.MetadataValue.text(logged.model_id)}


def trained_model_id(mlflow: MlflowResource, run_id: str) -> str | None:
    """The READY GROVE model a training run logged, or None (logging was off, or failed)."""
    from mlflow.entities import LoggedModelStatus

    client = mlflow.client()
    outputs = client.get_run(run_id).outputs
    for output in outputs.model_outputs if outputs is not None else []:
        if client.get_logged_model(output.model_id).status == LoggedModelStatus.READY:
            return output.model_id
    return None


def model_to_register(mlflow: MlflowResource, run: TrackedRun, trained_run_id: str, checkpoint: str | os.PathLike[str], *,
                      example: Path | None, work_dir: str | os.PathLike[str] | None = None) -> tuple[str, str]:
    """The logged model the champion registers, and which run logged it: the training run's model, else
    (trained with `mlflow.log_models` off) `checkpoint` logged now as the model of the champion's `run`."""
    model_id = trained_model_id(mlflow, trained_run_id)
    if model_id is not None:
        return model_id, "training run"
    return log_model(run, checkpoint, step=0, example=example, work_dir=work_dir).model_id, "champion run"
