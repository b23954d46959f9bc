"""GROVE as an MLflow model: a pyfunc that captions and grounds video files, logged from a checkpoint.

The model is defined by code ("models from code"): MLflow stores `mlflow_model_code.py` (which builds
a `GrovePyfunc`) beside the model, never a pickle, and loading it imports this project's code. Its one
artifact, `checkpoint`, is the checkpoint as a folder that needs nothing outside itself
(grove.standalone), so a logged model keeps loading what it was logged with after retraining
overwrites the training folder. The code comes from the installed project (`grove-pipeline`), as the
weights' reader; `mlflow models serve --env-manager local` serves it from the project's environment.

predict: a DataFrame with a `video` column (paths of video files readable where the model runs) and
optional `start_s` / `end_s` (seconds; missing or null: the whole video); params `threshold` (objectness
above which a box is kept, as `grove infer --threshold`) and `max_new_tokens`. One row per video:
`grove.infer.VideoInference.to_json`, the record `grove infer --video --out` writes.

Logging goes through an explicit MlflowClient (no fluent state, as orchestration/resources.py):
MLflow 3's logged model (`create_logged_model`, linked to the run with `log_outputs`), saved locally
with `mlflow.pyfunc.save_model` and uploaded with `log_model_artifacts`. That is what the fluent
`mlflow.pyfunc.log_model` does inside, minus its global tracking URI and active run; in exchange it
skips what `log_model` adds around it (serving-input validation, which would load the model and
caption a video once more at logging time, and the registry shortcut `registered_model_name`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import socket
import tempfile
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any, Mapping

import mlflow.pyfunc
import pandas as pd
from mlflow.models import Model, ModelSignature
from mlflow.types.schema import Array, ColSpec, Object, ParamSchema, ParamSpec, Property, Schema

logger = logging.getLogger(__name__)

CHECKPOINT_ARTIFACT = "checkpoint"
MODEL_CODE = Path(__file__).with_name("mlflow_model_code.py")
MODEL_TYPE = "grove-grounded-captioning"
DEFAULT_THRESHOLD = 0.5  # grove infer's default
DEFAULT_MAX_NEW_TOKENS = 64  # the official protocol's
# what the model's code imports; `grove-pipeline` (this project) is not on a public index: install it
# from its source, or serve with --env-manager local in its environment
REQUIREMENTS = ("grove-pipeline", "mlflow", "torch", "transformers", "safetensors", "av", "numpy", "pandas", "pyarrow")

BOX = Object([Property("phrase", "string"), Property("box_xyxy", Array("double")), Property("objectness", "double")])
FRAME = Object([Property("frame_id", "long"), Property("time_s", "double"), Property("boxes", Array(BOX))])
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "video"), ColSpec("double", "start_s", required=False), ColSpec("double", "end_s", required=False)]),
    outputs=Schema([
        ColSpec("string", "video"),
        ColSpec("string", "caption"),
        ColSpec("string", "tagged_caption"),
        ColSpec(Array("string"), "phrases"),
        ColSpec("double", "threshold"),
        ColSpec("double", "fps"),
        ColSpec(Array(FRAME), "frames"),
    ]),
    params=ParamSchema([
        ParamSpec("threshold", "double", DEFAULT_THRESHOLD),
        ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS),
    ]),
)


def _seconds(value: Any) -> float | None:
    """A time bound of an input row: a missing column or a null (NaN in a DataFrame) is no bound."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


class GrovePyfunc(mlflow.pyfunc.PythonModel):
    """Grounded captions of video files by a GROVE checkpoint (the `checkpoint` artifact).

    `model_config={"device": "cuda"}` at load picks the device (default: the first GPU when there is
    one, else the CPU)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import torch

        from grove.train import load_model

        device = (context.model_config or {}).get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        logger.info("loading the GROVE checkpoint on %s", device)
        self.model = load_model(context.artifacts[CHECKPOINT_ARTIFACT], device)

    def predict(self, context: mlflow.pyfunc.PythonModelContext, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        from grove.infer import infer_video

        params = params or {}
        threshold = float(params.get("threshold", DEFAULT_THRESHOLD))
        max_new_tokens = int(params.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        if "video" not in model_input.columns:
            raise ValueError(f"model input needs a 'video' column (paths of video files); got columns {list(model_input.columns)}")
        records = []
        for row in model_input.to_dict("records"):
            video = Path(str(row["video"]))
            if not video.is_file():
                raise FileNotFoundError(f"{video}: no such video file where the model runs")
            result = infer_video(self.model, video, threshold, _seconds(row.get("start_s")), _seconds(row.get("end_s")), max_new_tokens)
            records.append(result.to_json())
        return pd.DataFrame.from_records(records, columns=SIGNATURE.outputs.input_names())


def pip_requirements() -> list[str]:
    """The packages the model's code imports, pinned to the versions installed here."""
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={package_metadata.version(name)}")
        except package_metadata.PackageNotFoundError:
            pinned.append(name)
    return pinned


def save_grove_model(
    checkpoint: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    example_video: str | os.PathLike[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    mlflow_model: Model | None = None,
) -> Path:
    """Save the checkpoint (a checkpoint folder, or a training folder: its best, else last) as a GROVE
    MLflow model in the new folder `path`. `example_video` becomes the input example (a path that
    exists where the model is logged); without it the example names a placeholder `clip.mp4`."""
    from grove.standalone import write_standalone_checkpoint
    from grove.train import resolve_checkpoint

    folder = resolve_checkpoint(checkpoint)
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix=".tmp-grove-model-", dir=path.parent) as work:
        standalone = write_standalone_checkpoint(folder, Path(work) / CHECKPOINT_ARTIFACT)
        mlflow.pyfunc.save_model(
            str(path),
            python_model=str(MODEL_CODE),
            artifacts={CHECKPOINT_ARTIFACT: str(standalone)},
            signature=SIGNATURE,
            input_example=pd.DataFrame({"video": [str(example_video) if example_video is not None else "clip.mp4"]}),
            pip_requirements=pip_requirements(),
            metadata={"grove": {"checkpoint": str(folder), **dict(metadata or {})}},
            mlflow_model=mlflow_model,
        )
    return path


WORK_PREFIX = ".tmp-grove-model-"


def work_prefix() -> str:
    """The name start of this process's work folders: which process on which host made them."""
    return f"{WORK_PREFIX}{os.getpid()}@{socket.gethostname()}-"


def remove_abandoned_work(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the work folders that processes of this host left when killed (a self-contained 7B model is
    tens of GB); a live process's folder, or another host's, stays. Returns what was removed."""
    removed = []
    for path in Path(folder).glob(f"{WORK_PREFIX}*"):
        owner = path.name[len(WORK_PREFIX):].split("-", 1)[0]
        pid, _, host = owner.partition("@")
        if pid.isdigit() and host == socket.gethostname() and not _process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def log_grove_model(
    client: Any,
    *,
    experiment_id: str,
    run_id: str,
    checkpoint: str | os.PathLike[str],
    step: int = 0,
    name: str = "model",
    example_video: str | os.PathLike[str] | None = None,
    tags: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    work_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Log the checkpoint as a GROVE model of run `run_id` through `client` (an MlflowClient); returns
    the READY LoggedModel, whose URI `models:/<model_id>` a registry version can name. A failure
    marks it FAILED. `work_dir`: where the model is assembled before the upload, in a `.tmp-` folder that
    DVC ignores (default: the system's temporary folder); a self-contained 7B model needs ~2x its size
    there, a trainable-only checkpoint on the same file system its size (the weights are hard-linked)."""
    logged = client.create_logged_model(
        experiment_id, name=name, source_run_id=run_id, model_type=MODEL_TYPE,
        tags={key: str(value) for key, value in (tags or {}).items()},
        params={key: str(value) for key, value in (params or {}).items()},
    )
    try:
        from mlflow.entities import LoggedModelOutput

        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step)])
        if work_dir is not None:
            remove_abandoned_work(work_dir)
        with tempfile.TemporaryDirectory(prefix=work_prefix(), dir=work_dir) as work:
            description = Model(artifact_path=logged.artifact_location, run_id=run_id, model_uuid=logged.model_id, model_id=logged.model_id)
            local = save_grove_model(checkpoint, Path(work) / "model", example_video=example_video, mlflow_model=description,
                                     metadata={"step": step})
            client.log_model_artifacts(logged.model_id, str(local))
    except BaseException:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    return client.finalize_logged_model(logged.model_id, "READY")
