"""Resources: DVC hashing and serialisation, MLflow runs, the Pipes launchers (torchrun, Slurm, Kubernetes)."""


import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pytest
import yaml

from orchestration.profile import REPO_ROOT
from orchestration.resources import (
    LOGGED_MODEL_TAG,
    DvcResource,
    K8sLauncher,
    LauncherError,
    MlflowResource,
    PipelinePaths,
    TorchrunLauncher,
    combine_versions,
    dvc_ignore_patterns,
    dvc_md5,
)

DVC = str(REPO_ROOT / ".venv-dvc" / "bin" / "dvc")


def _dvc_repo(tmp_path: Path, stages: dict[str, list[str]]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([DVC, "init", "--no-scm", "-q"], cwd=repo, check=True)
    subprocess.run([DVC, "config", "core.analytics", "false"], cwd=repo, check=True)
    dvc_yaml = {"stages": {name: {"cmd": "true", "outs": outs} for name, outs in stages.items()}}
    (repo / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    return repo


def _write_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.parquet").write_bytes(b"\x00\x01binary" * 100)
    (root / "sub" / "b.txt").write_text("line one\r\nline two\n")
    (root / "sub" / "deeper" / "c.json").write_text('{"x": 1}')


def test_dvc_md5_equals_the_hash_dvc_records(tmp_path):
    repo = _dvc_repo(tmp_path, {"folder": ["data/folder"], "single": ["data/file.bin"]})
    _write_tree(repo / "data" / "folder")
    (repo / "data" / "file.bin").write_bytes(os.urandom(3000))
    dvc = DvcResource(repo=str(repo), executable=DVC)

    folder_version = dvc.record("folder", [repo / "data" / "folder"])
    file_version = dvc.record("single", [repo / "data" / "file.bin"])

    assert folder_version == dvc_md5(repo / "data" / "folder")
    assert folder_version.endswith(".dir")
    assert file_version == dvc_md5(repo / "data" / "file.bin")
    assert dvc.locked_hashes()["data/file.bin"] == file_version
    # Without DVC the same versions come from dvc_md5, so data versions never depend on DVC being there.
    assert DvcResource(repo=str(repo), enabled=False).record("folder", [repo / "data" / "folder"]) == folder_version


def test_dvc_md5_leaves_out_what_dvcignore_names_as_dvc_does(tmp_path):
    """Caches inside outputs (file stamps: mtimes) are in the project's .dvcignore; DVC's hash and
    dvc_md5 both leave them out, so they never change a data version."""
    repo = _dvc_repo(tmp_path, {"folder": ["data/folder"]})
    shutil.copyfile(REPO_ROOT / ".dvcignore", repo / ".dvcignore")
    folder = repo / "data" / "folder"
    _write_tree(folder)
    without = dvc_md5(folder)
    (folder / "catalog_stamps.parquet").write_bytes(b"mtimes")
    (folder / "sub" / "catalog_seen.json").write_text("{}")
    dvc = DvcResource(repo=str(repo), executable=DVC)
    assert dvc.record("folder", [folder]) == dvc_md5(folder, ignore=dvc_ignore_patterns(repo)) == dvc_md5(folder) == without
    (folder / "sub" / "catalog_seen.json").write_text('{"changed": 1}')
    assert dvc.record("folder", [folder]) == without
    assert set(dvc_ignore_patterns()) >= {"catalog_stamps.parquet", "catalog_seen.json"}
    (repo / ".dvcignore").write_text("# a comment\n\nsub/deeper\n")
    with pytest.raises(ValueError, match="only name patterns"):
        dvc_ignore_patterns(repo)


def test_dvc_commands_are_serialised_across_threads(tmp_path):
    stages = {f"s{i}": [f"out{i}"] for i in range(4)}
    repo = _dvc_repo(tmp_path, stages)
    for i in range(4):
        (repo / f"out{i}").write_text(f"content {i}")
    dvc = DvcResource(repo=str(repo), executable=DVC)
    # DVC's own repository lock fails (instead of waiting) under parallel commands; ours waits.
    with ThreadPoolExecutor(4) as pool:
        versions = list(pool.map(lambda i: dvc.record(f"s{i}", [repo / f"out{i}"]), range(4)))
    assert versions == [dvc_md5(repo / f"out{i}") for i in range(4)]
    assert len(dvc.locked_hashes()) == 4


def test_dvc_errors_name_the_command_and_the_missing_output(tmp_path):
    repo = _dvc_repo(tmp_path, {"made": ["made.txt"]})
    dvc = DvcResource(repo=str(repo), executable=DVC)
    with pytest.raises(Exception, match="dvc commit --force made"):
        dvc.record("made", [repo / "made.txt"])  # the output does not exist yet
    (repo / "made.txt").write_text("x")
    with pytest.raises(Exception, match="recorded no output 'other.txt'"):
        dvc.record("made", [repo / "other.txt"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        dvc_md5(repo / "absent")


def test_combined_versions_are_order_sensitive_and_stable():
    assert combine_versions(["a"]) == "a"
    assert combine_versions(["a", "b"]) == combine_versions(["a", "b"]) != combine_versions(["b", "a"])


def test_paths_name_every_lineage_node(tmp_path):
    paths = PipelinePaths(root=str(tmp_path))
    assert paths.path("subsets", "small") == tmp_path / "subsets" / "small"
    with pytest.raises(KeyError, match="unknown lineage node 'nope'"):
        paths.path("nope")


def test_mlflow_run_per_materialisation_is_tagged_with_its_lineage(tmp_path):
    mlflow_resource = MlflowResource.local(tmp_path, experiment="grove-test")
    sizes = dg.StaticPartitionsDefinition(["small", "large"])

    @dg.asset(partitions_def=sizes, code_version="v7")
    def tracked(context: dg.AssetExecutionContext, mlflow: MlflowResource) -> dg.MaterializeResult:
        with mlflow.start_run(context, params={"model": {"config": "tiny"}}, tags={"dvc.input": "abc.dir"}) as run:
            run.log_history([(1, {"loss": 2.0}), (2, {"loss": 1.5})])
            report = tmp_path / "report.json"
            report.write_text("{}")
            run.log_artifact(report, "reports")
            model = run.client.create_logged_model(run.experiment_id, name="model", source_run_id=run.run_id)
            with pytest.raises(ValueError, match=f"logged model {model.model_id} .* is PENDING, not READY: not registered"):
                mlflow.register(model.model_id, alias="champion")
            run.client.finalize_logged_model(model.model_id, "READY")
            version = mlflow.register(model.model_id, alias="champion")
        return dg.MaterializeResult(metadata={"mlflow_run": dg.MetadataValue.url(run.url), "version": version})

    result = dg.materialize([tracked], resources={"mlflow": mlflow_resource}, partition_key="large")
    assert result.success

    client = mlflow_resource.client()
    experiment = client.get_experiment_by_name("grove-test/default")  # the concern of an asset without one: its group
    assert experiment.artifact_location == (tmp_path / "mlartifacts").as_uri() + "/default"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["dagster.run_id"] == result.run_id
    assert run.data.tags["dagster.asset_key"] == "tracked"
    assert run.data.tags["dagster.partition"] == "large"
    assert run.data.tags["dagster.code_version"] == "v7"
    assert run.data.tags["dvc.input"] == "abc.dir"
    assert run.data.params["model.config"] == "tiny"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [2.0, 1.5]
    champion = client.get_model_version_by_alias("grove", "champion")
    (model,) = client.search_logged_models([experiment.experiment_id])
    assert champion.run_id == run.info.run_id and champion.tags[LOGGED_MODEL_TAG] == model.model_id
    assert champion.source == model.artifact_location


def test_mlflow_run_is_marked_failed_when_the_asset_fails(tmp_path):
    mlflow_resource = MlflowResource.local(tmp_path, experiment="grove-test")

    @dg.asset
    def broken(context: dg.AssetExecutionContext, mlflow: MlflowResource) -> None:
        with mlflow.start_run(context):
            raise RuntimeError("training diverged")

    result = dg.materialize([broken], resources={"mlflow": mlflow_resource}, raise_on_error=False)
    assert not result.success
    client = mlflow_resource.client()
    (run,) = client.search_runs([mlflow_resource.experiment_id("default", client)])
    assert run.info.status == "FAILED"


PIPES_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from orchestration.pipes_side import pipes_on_rank_zero, rank, read_extras

    extras = read_extras()
    out = os.path.join(extras["out"], f"rank{rank()}.json")
    with open(out, "w") as handle:
        json.dump({"world": os.environ.get("WORLD_SIZE"), "extras": extras}, handle)
    with pipes_on_rank_zero() as pipes:
        if pipes is not None:
            pipes.report_custom_message({"step": 1, "metrics": {"loss": 0.5}})
            pipes.report_asset_materialization(metadata={"ranks_seen": int(os.environ.get("WORLD_SIZE", "1"))})
    """
)


def _launch(tmp_path: Path, launcher: TorchrunLauncher) -> tuple[dg.ExecuteInProcessResult, list]:
    (tmp_path / "pipes_probe.py").write_text(PIPES_SCRIPT)
    messages: list = []

    @dg.asset
    def launched(context: dg.AssetExecutionContext, launcher: TorchrunLauncher) -> dg.MaterializeResult:
        invocation = launcher.run(context, module="pipes_probe", extras={"out": str(tmp_path)})
        messages.extend(invocation.get_custom_messages())
        return invocation.get_materialize_result()

    return dg.materialize([launched], resources={"launcher": launcher}), messages


def _probe_env(tmp_path: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)])}


def test_torchrun_launcher_runs_every_rank_and_only_rank_zero_reports(tmp_path):
    launcher = TorchrunLauncher(nproc_per_node=2, env=_probe_env(tmp_path))
    result, messages = _launch(tmp_path, launcher)

    assert result.success
    for r in (0, 1):
        written = yaml.safe_load((tmp_path / f"rank{r}.json").read_text())
        assert written["world"] == "2" and written["extras"] == {"out": str(tmp_path)}
    (materialization,) = result.asset_materializations_for_node("launched")
    assert materialization.metadata["ranks_seen"].value == 2
    assert messages == [{"step": 1, "metrics": {"loss": 0.5}}]


def test_one_local_rank_runs_the_module_directly_and_still_reports(tmp_path):
    launcher = TorchrunLauncher(env=_probe_env(tmp_path))
    assert launcher.command("pipes_probe", ["--x"]) == [sys.executable, "-m", "pipes_probe", "--x"]
    assert launcher.command("pipes_probe", nproc=2)[2] == "torch.distributed.run"
    result, messages = _launch(tmp_path, launcher)
    assert result.success
    assert yaml.safe_load((tmp_path / "rank0.json").read_text())["world"] is None  # no torchrun environment
    assert result.asset_materializations_for_node("launched")[0].metadata["ranks_seen"].value == 1
    assert messages == [{"step": 1, "metrics": {"loss": 0.5}}]


def test_slurm_style_launch_passes_context_by_env_and_messages_through_a_shared_folder(tmp_path):
    shared = tmp_path / "shared"
    # `env` stands in for `srun`: a prefix that runs the command elsewhere with the same environment.
    launcher = TorchrunLauncher(prefix=["env"], shared_dir=str(shared), env=_probe_env(tmp_path))
    assert launcher.command("pipes_probe")[:4] == ["env", sys.executable, "-m", "torch.distributed.run"]
    result, messages = _launch(tmp_path, launcher)
    assert result.success
    assert messages == [{"step": 1, "metrics": {"loss": 0.5}}]


def test_a_failed_pipes_process_names_what_it_raised(tmp_path):
    (tmp_path / "pipes_failing.py").write_text(textwrap.dedent(
        """
        from orchestration.pipes_side import pipes_on_rank_zero

        with pipes_on_rank_zero():
            raise FileNotFoundError("no subset at /data/subsets/medium")
        """
    ))

    @dg.asset
    def launched(context: dg.AssetExecutionContext, launcher: TorchrunLauncher) -> None:
        launcher.run(context, module="pipes_failing")

    result = dg.materialize([launched], resources={"launcher": TorchrunLauncher(env=_probe_env(tmp_path))}, raise_on_error=False)
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    error, messages = failure.step_failure_data.error, []
    while error is not None:  # Dagster wraps the step's exception: its cause is what the asset raised
        messages.append(error.message)
        error = error.cause
    message = "\n".join(messages)
    assert "pipes_failing raised FileNotFoundError: no subset at /data/subsets/medium" in message


def test_launcher_config_is_validated():
    with pytest.raises(Exception, match="nproc_per_node"):
        TorchrunLauncher(nproc_per_node=0)
    with pytest.raises(Exception, match="image"):
        K8sLauncher()  # an image is required


def test_k8s_launcher_pod_spec_requests_gpus_and_mounts_the_runs_root():
    launcher = K8sLauncher(image="grove:latest", nproc_per_node=4, gpus_per_pod=4, volume_claim="runs", mount_path="/runs")
    command = launcher.torchrun_command("orchestration.pipes_train", python="python")
    spec = launcher.pod_spec(command)
    (container,) = spec["containers"]
    assert container["command"][:5] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["volume_mounts"] == [{"name": "runs", "mount_path": "/runs"}]
    assert spec["volumes"][0]["persistent_volume_claim"]["claim_name"] == "runs"
    assert spec["restart_policy"] == "Never"
    with pytest.raises(LauncherError, match="mount_path"):
        K8sLauncher(image="grove:latest", volume_claim="runs").pod_spec(command)


def test_k8s_launcher_says_what_to_install_when_dagster_k8s_is_absent(monkeypatch):
    monkeypatch.setitem(sys.modules, "dagster_k8s", None)  # makes `import dagster_k8s` fail

    @dg.asset
    def on_cluster(context: dg.AssetExecutionContext, launcher: K8sLauncher) -> None:
        launcher.run(context, module="orchestration.pipes_train")

    with pytest.raises(LauncherError, match="pip install dagster-k8s"):
        dg.materialize([on_cluster], resources={"launcher": K8sLauncher(image="grove:latest")})


def test_pipes_log_records_are_cut_before_they_reach_the_message_file():
    """A degenerate model's warning repeats its caption for kilobytes; Dagster's file reader, tailing the
    message file, could read such a line half written and lose every later message (seen in a demo run)."""
    import logging

    from orchestration.pipes_side import MAX_LOG_CHARS, _PipesLogHandler

    class Log:
        def __init__(self):
            self.sent = []

        def warning(self, message):
            self.sent.append(message)

        info = error = warning

    pipes = type("Pipes", (), {"log": Log()})()
    handler = _PipesLogHandler(pipes)
    record = logging.LogRecord("grove.model.grove", logging.WARNING, __file__, 1, "answer 0: %r", ("in a hand " * 2000,), None)
    handler.emit(record)
    handler.emit(logging.LogRecord("grove.train", logging.INFO, __file__, 1, "step 100/1500", None, None))
    long, short = pipes.log.sent
    assert len(long) < MAX_LOG_CHARS + 60 and long.endswith("characters, cut)") and short == "step 100/1500"


def _open_store(root: str) -> str:
    resource = MlflowResource.local(root, experiment="grove-race")
    return resource.experiment_id("race", resource.client())


def test_processes_opening_a_new_mlflow_store_at_once_all_get_it(tmp_path):
    # The lineage starts runs two at a time, and any of them may be the first to open the store
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=3, mp_context=context) as pool:
        ids = list(pool.map(_open_store, [str(tmp_path)] * 3))
    assert len(set(ids)) == 1


def test_the_tracking_uri_comes_from_the_environment_when_set(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = MlflowResource.from_env(tmp_path / "runs", experiment="grove-env")
    assert local.is_local and local.tracking_uri.startswith(f"sqlite:///{(tmp_path / 'runs').resolve()}")
    server = f"sqlite:///{tmp_path / 'server.db'}"  # stands in for http://tracking-server:5000
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    chosen = MlflowResource.from_env(tmp_path / "runs", experiment="grove-env")
    assert chosen.tracking_uri == server and chosen.artifact_location == ""
    client = chosen.client()
    experiment = client.get_experiment(chosen.experiment_id("evaluation", client))
    assert experiment.name == "grove-env/evaluation" and (tmp_path / "server.db").exists()
    assert not (tmp_path / "runs" / "mlflow.db").exists()


def test_a_dvc_lock_file_left_empty_by_a_killed_dvc_command_does_not_block_the_next(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"write": {"cmd": "echo 1 > out.txt", "outs": ["out.txt"]}}}))
    (tmp_path / "out.txt").write_text("1\n")
    rwlock = tmp_path / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    rwlock.write_text("")  # what a kill -9 inside `dvc commit` can leave
    assert "Unable to read RWLock-file" in subprocess.run([DVC, "status"], cwd=tmp_path, capture_output=True, text=True).stderr
    DvcResource(repo=str(tmp_path), executable=DVC).run("commit", "--force", "write")
    rwlock.write_text('{"read": {}, "write": {}}')  # a readable one is DVC's own business, and stays
    DvcResource(repo=str(tmp_path), executable=DVC).run("status")
    assert rwlock.exists()
