"""The GROVE MLflow model: logged from a checkpoint, registered, loaded back as `models:/grove@champion`,
it predicts what grove's own inference gives; later versions leave earlier ones as they were."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from grove.infer import infer_video
from grove.train import MODEL_FILE, load_model, resolve_checkpoint
from orchestration.mlflow_model import CHECKPOINT_ARTIFACT, SIGNATURE, log_grove_model
from orchestration.resources import LOGGED_MODEL_TAG, MlflowResource

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A local SQLite store, the process's default tracking URI for `mlflow.pyfunc.load_model` (as a user sets it)."""
    resource = MlflowResource.local(tmp_path / "runs", experiment="grove-test")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", resource.tracking_uri)
    assert mlflow.get_tracking_uri() == resource.tracking_uri
    client = resource.client()
    experiment = client.create_experiment("grove-test", artifact_location=(tmp_path / "runs" / "mlartifacts").as_uri())
    return resource, client, experiment


def log_and_register(store, checkpoint, example_video, alias="champion"):
    resource, client, experiment = store
    run = client.create_run(experiment)
    logged = log_grove_model(client, experiment_id=experiment, run_id=run.info.run_id, checkpoint=checkpoint, step=7,
                             example_video=example_video)
    client.set_terminated(run.info.run_id)
    return logged, resource.register(logged.model_id, alias=alias)


def test_the_champion_loads_by_alias_and_predicts_what_grove_infers(store, checkpoint, other_video):
    resource, client, _ = store
    logged, version = log_and_register(store, checkpoint, other_video)
    registered = client.get_model_version(resource.registered_model, version)
    assert registered.source == logged.artifact_location and registered.tags[LOGGED_MODEL_TAG] == logged.model_id
    assert registered.run_id == logged.source_run_id
    assert client.get_logged_model(logged.model_id).status.name == "READY"

    model = mlflow.pyfunc.load_model(f"models:/{resource.registered_model}@champion")
    rows = pd.DataFrame({"video": [str(other_video), str(other_video)], "start_s": [None, 1.0], "end_s": [None, 2.0]})
    predicted = model.predict(rows, params={"threshold": 0.3})
    grove_model = load_model(checkpoint)
    expected = [infer_video(grove_model, other_video, 0.3).to_json(), infer_video(grove_model, other_video, 0.3, 1.0, 2.0).to_json()]
    assert predicted.to_dict("records") == expected
    assert expected[0]["phrases"] and any(frame["boxes"] for frame in expected[0]["frames"])  # the overfitted square
    json.dumps(predicted.to_dict("records"))  # JSON-serialisable as served
    default = model.predict(pd.DataFrame({"video": [str(other_video)]}))  # no params: grove infer's threshold 0.5
    assert default.to_dict("records") == [infer_video(grove_model, other_video, 0.5).to_json()]

    assert model.metadata.signature == SIGNATURE
    assert model.input_example["video"].tolist() == [str(other_video)]
    assert model.metadata.metadata["grove"] == {"checkpoint": str(resolve_checkpoint(checkpoint)), "step": 7}


def test_the_logged_model_is_code_and_safetensors_and_names_a_missing_video(store, checkpoint, other_video, tmp_path):
    resource, _, _ = store
    log_and_register(store, checkpoint, other_video)
    local = mlflow.artifacts.download_artifacts(f"models:/{resource.registered_model}@champion", dst_path=str(tmp_path / "got"))
    files = {path.relative_to(local).as_posix() for path in tmp_path.joinpath("got").rglob("*") if path.is_file()}
    assert f"artifacts/{CHECKPOINT_ARTIFACT}/{MODEL_FILE}" in files and f"artifacts/{CHECKPOINT_ARTIFACT}/config.json" in files
    assert not [name for name in files if name.endswith((".pkl", ".pickle", ".pt"))]  # models from code: nothing to unpickle
    flavor = mlflow.models.Model.load(str(tmp_path / "got")).flavors["python_function"]
    assert flavor["model_code_path"].endswith("mlflow_model_code.py")

    model = mlflow.pyfunc.load_model(local)
    with pytest.raises(FileNotFoundError, match="nowhere.mp4: no such video file"):
        model.predict(pd.DataFrame({"video": [str(tmp_path / "nowhere.mp4")]}))


def test_a_newer_version_leaves_what_an_older_one_loads(store, checkpoint, other_video, tmp_path):
    """Retraining overwrites the checkpoint folder and registers a new version: the old one still loads its weights."""
    resource, _, _ = store
    folder = tmp_path / "retrained"
    folder.mkdir()
    source = resolve_checkpoint(checkpoint)
    for path in source.iterdir():
        if path.is_file():
            (folder / path.name).write_bytes(path.read_bytes())
    _, first = log_and_register(store, folder, other_video)
    original = load_file(str(folder / MODEL_FILE))
    save_file({name: tensor + 0.5 for name, tensor in original.items()}, str(folder / MODEL_FILE), metadata={"format": "pt"})
    _, second = log_and_register(store, folder, other_video)
    assert (first, second) == ("1", "2")

    name = resource.registered_model
    old_model = mlflow.pyfunc.load_model(f"models:/{name}/{first}", model_config={"device": "cpu"}).unwrap_python_model().model
    assert old_model.device.type == "cpu"  # the device a loader asks for (default: a GPU when there is one)
    old = old_model.trainable_state_dict()
    new = mlflow.pyfunc.load_model(f"models:/{name}@champion").unwrap_python_model().model.trainable_state_dict()
    assert all(torch.equal(old[key], original[key]) for key in original)
    assert all(torch.equal(new[key], original[key] + 0.5) for key in original)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # ~25 s, most of it the MLflow server starting
def test_mlflow_models_serve_answers_with_what_grove_infers(store, checkpoint, other_video, tmp_path):
    resource, _, _ = store
    log_and_register(store, checkpoint, other_video)
    port = free_port()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # uvicorn
    command = ["mlflow", "models", "serve", "-m", f"models:/{resource.registered_model}@champion", "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
                time.sleep(0.5)
        body = json.dumps({"dataframe_records": [{"video": str(other_video)}], "params": {"threshold": 0.3}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            served = json.loads(response.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    assert served == [infer_video(load_model(checkpoint), other_video, 0.3).to_json()]


def test_work_folders_of_killed_loggers_are_removed_and_live_ones_kept(tmp_path):
    from orchestration.mlflow_model import remove_abandoned_work, work_prefix

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    abandoned = tmp_path / work_prefix().replace(str(os.getpid()), dead.stdout.strip(), 1)
    live = tmp_path / f"{work_prefix()}abc"
    elsewhere = tmp_path / f".tmp-grove-model-{dead.stdout.strip()}@another-host-xyz"
    for folder in (abandoned, live, elsewhere):
        (folder / "model").mkdir(parents=True)
    assert remove_abandoned_work(tmp_path) == [abandoned]
    assert live.exists() and elsewhere.exists()
