"""Checkpoints as MLflow models in the lineage (the session's `tiny_demo` run): every training run logs its
checkpoint as a GROVE model; the champion registers its training run's model, which loads by alias and
predicts on a video what grove's own inference gives; with `mlflow.log_models` off (the paper profile)
the runs say so and the champion logs the one model it registers."""

from urllib.parse import urlparse

import dagster as dg
import mlflow as mlflow_client_lib
import pandas as pd
import pytest

from grove.data.dataset import load_dataset
from grove.infer import infer_video
from grove.train import load_model, resolve_checkpoint
from orchestration.definitions import experiment_name, mlflow_settings
from orchestration.defs.models.logged import (
    MODEL_LOGGED_TAG,
    NOT_LOGGED,
    log_trained_model,
    model_to_register,
    trained_model_id,
)
from orchestration.profile import Profile, ProfileError
from orchestration.resources import LAYOUT, LOGGED_MODEL_TAG, MlflowResource, PipelinePaths, TrackedRun
from tests.orchestration.test_groups import latest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TRAINED = (("pretrained_model", "s"), ("finetuned_model", "s"), ("finetuned_model", "ft_only"))


@pytest.fixture(scope="module")
def lineage(tiny_demo):
    result, root = tiny_demo
    instance = dg.DagsterInstance.from_config(str(root / LAYOUT["dagster_home"]))
    yield PipelinePaths(root=str(root)), MlflowResource.local(root, experiment_name(result.profile)), instance
    instance.dispose()


def test_every_training_run_logs_its_checkpoint_as_a_model(lineage):
    paths, mlflow, instance = lineage
    client = mlflow.client()
    for key, partition in TRAINED:
        run = mlflow.latest_run(key, partition)
        model_id = trained_model_id(mlflow, run.info.run_id)
        assert run.data.tags[MODEL_LOGGED_TAG] == "true" and run.data.tags[LOGGED_MODEL_TAG] == model_id
        assert latest(instance, key, partition).metadata["mlflow_model"].value == f"models:/{model_id}"
        logged = client.get_logged_model(model_id)
        assert logged.source_run_id == run.info.run_id and logged.name == "model"
        checkpoint = resolve_checkpoint(paths.path("pretrained" if key == "pretrained_model" else "finetuned", partition))
        stored = mlflow_client_lib.models.Model.load(urlparse(logged.artifact_location).path)  # a local file:// store
        assert stored.metadata["grove"]["checkpoint"] == str(checkpoint)


def test_the_champion_is_its_training_runs_model_and_predicts_on_a_video(lineage, monkeypatch):
    paths, mlflow, instance = lineage
    client = mlflow.client()
    chosen = latest(instance, "champion_model").metadata["chosen"].value
    trained = mlflow.latest_run("finetuned_model", chosen)
    champion = client.get_model_version_by_alias(mlflow.registered_model, "champion")
    model_id = trained_model_id(mlflow, trained.info.run_id)
    assert champion.tags[LOGGED_MODEL_TAG] == model_id and champion.run_id == trained.info.run_id
    assert champion.source == client.get_logged_model(model_id).artifact_location  # the logged copy, not the training folder
    assert latest(instance, "champion_model").metadata["logged_by"].value == "training run"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.tracking_uri)
    model = mlflow_client_lib.pyfunc.load_model(f"models:/{mlflow.registered_model}@champion")
    iground = load_dataset(paths.path("iground"), split="test")
    video = iground.video_file(iground.clips["video_path"][0].as_py())
    predicted = model.predict(pd.DataFrame({"video": [str(video)]}), params={"threshold": 0.0})
    expected = infer_video(load_model(paths.path("finetuned", chosen)), video, 0.0).to_json()
    assert predicted.to_dict("records") == [expected] and expected["caption"] is not None and expected["frames"]


def test_with_log_models_off_runs_say_so_and_the_champion_logs_what_it_registers(lineage, tmp_path):
    paths, _, _ = lineage
    checkpoint = resolve_checkpoint(paths.path("finetuned", "s"))
    mlflow = MlflowResource.local(tmp_path, "grove-off", log_models=False)
    client = mlflow.client()
    experiment = client.create_experiment("off", artifact_location=(tmp_path / "mlartifacts").as_uri())

    def new_run() -> TrackedRun:
        return TrackedRun(client, client.create_run(experiment).info.run_id, experiment, "")

    training = new_run()
    config = {"train_data": str(paths.path("iground")), "out_dir": str(paths.path("finetuned", "s"))}
    assert log_trained_model(mlflow, training, checkpoint, step=1, config=config)["mlflow_model"].value == NOT_LOGGED
    assert client.get_run(training.run_id).data.tags[MODEL_LOGGED_TAG] == "false"
    assert trained_model_id(mlflow, training.run_id) is None and not client.search_logged_models([experiment])

    champion = new_run()
    model_id, logged_by = model_to_register(mlflow, champion, training.run_id, checkpoint, example=None)
    assert logged_by == "champion run" and client.get_logged_model(model_id).source_run_id == champion.run_id
    version = client.get_model_version(mlflow.registered_model, mlflow.register(model_id, alias="champion"))
    assert version.run_id == champion.run_id and version.tags[LOGGED_MODEL_TAG] == model_id


def test_log_models_must_be_true_or_false(tmp_path):
    profile = Profile("x", {"mlflow": {"log_models": "no"}}, tmp_path / "params.yaml")
    with pytest.raises(ProfileError, match=r"params.yaml: profile 'x': mlflow.log_models must be true or false, not 'no'"):
        mlflow_settings(profile)
    assert mlflow_settings(Profile("x", {"mlflow": {"log_models": False}}, tmp_path / "params.yaml")) == {"log_models": False}
