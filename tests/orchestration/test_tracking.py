"""MLflow tracking done natively: curves logged live by the training process, system metrics, dataset inputs
with DVC digests, one experiment per concern with the pre-training clips as an axis, and killed attempts' runs
ended as KILLED by the attempt that replaces them."""

import os
import signal
import subprocess
import sys
import textwrap

import dagster as dg
import pytest

from orchestration.definitions import experiment_name
from orchestration.demo import prepare_home
from orchestration.lineage import RUN_TAG, recover_interrupted_runs
from orchestration.pipes_mlflow import MAX_BATCH, MetricStream, RemoteRun
from orchestration.profile import REPO_ROOT
from orchestration.resources import (
    CONCERNS, LAYOUT, PRETRAIN_CLIPS, REPLACED_BY_DAGSTER_TAG, REPLACED_BY_RUN_TAG, MlflowResource, RunDataset, TrackedRun)
from tests.orchestration.test_groups import latest

# ------------------------------------------------------------------------------------------ the stream


class _Client:
    def __init__(self, failures: int = 0) -> None:
        self.batches: list[list] = []
        self.failures = failures

    def log_batch(self, run_id, metrics):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("tracking server away")
        self.batches.append([(m.key, m.value, m.timestamp, m.step) for m in metrics])


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_stream_sends_metrics_a_few_seconds_apart_stamped_when_they_came():
    clock, client = _Clock(), _Client()
    stream = MetricStream(client, "run", flush_s=2.0, clock=clock)
    stream.log(1, {"train/loss": 2.0, "train/lr": 0.1, "flag": True})  # a bool is no metric
    clock.now += 1.0
    stream.log(2, {"train/loss": 1.5})
    assert client.batches == []  # within flush_s of the start: buffered
    clock.now += 1.5
    stream.log(3, {"train/loss": 1.0})
    assert client.batches == [[("train/loss", 2.0, 1000000, 1), ("train/lr", 0.1, 1000000, 1), ("train/loss", 1.5, 1001000, 2),
                               ("train/loss", 1.0, 1002500, 3)]]
    stream.log(4, {f"m{i}": float(i) for i in range(MAX_BATCH)})  # a full batch goes at once, whatever the time
    assert [len(batch) for batch in client.batches] == [4, MAX_BATCH]


def test_a_failed_send_keeps_the_metrics_for_the_next_one(caplog):
    clock, client = _Clock(), _Client(failures=1)
    stream = MetricStream(client, "run", flush_s=0.0, clock=clock)
    stream.log(1, {"train/loss": 2.0})
    assert client.batches == [] and "1 metrics not sent yet (ConnectionError: tracking server away)" in caplog.text
    stream.log(2, {"train/loss": 1.0})
    assert client.batches == [[("train/loss", 2.0, 1000000, 1), ("train/loss", 1.0, 1000000, 2)]]


def test_pipes_extras_without_a_run_id_are_refused():
    assert RemoteRun.from_extras({}) is None
    with pytest.raises(ValueError, match="no run_id"):
        RemoteRun.from_extras({"mlflow": {"tracking_uri": "sqlite:///x.db"}})


KILLED_TRAINING = textwrap.dedent(
    """
    import os, signal, sys, time
    from orchestration.pipes_mlflow import RemoteRun, tracked_metrics

    remote = RemoteRun(tracking_uri=sys.argv[1], run_id=sys.argv[2], system_metrics_interval_s=0, flush_s=0.05)
    with tracked_metrics(remote) as report:
        for step in range(1, 4):
            report(step, {"train/loss": 1.0 / step})
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGKILL)  # a kill -9 in the middle of training: nothing is flushed at exit
    """
)


def test_a_killed_training_keeps_its_curve_up_to_the_kill(tmp_path):
    resource = MlflowResource.local(tmp_path, experiment="grove-test")
    client = resource.client()
    run = client.create_run(resource.experiment_id("pretraining", client))
    killed = subprocess.run([sys.executable, "-c", KILLED_TRAINING, resource.tracking_uri, run.info.run_id], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1.0 / 3)]
    stamps = [m.timestamp for m in history]
    assert stamps == sorted(stamps) and stamps[2] - stamps[0] >= 150  # stamped as they came, 0.1 s apart


# ------------------------------------------------------------------------------------------ inputs, axis


def test_datasets_are_logged_as_inputs_with_their_dvc_hash_as_digest(tmp_path):
    resource = MlflowResource.local(tmp_path, experiment="grove-test")
    client = resource.client()
    run = client.create_run(resource.experiment_id("evaluation", client))
    tracked = TrackedRun(client, run.info.run_id, run.info.experiment_id, "")
    tracked.log_inputs([RunDataset("iground_benchmark:test", "/runs/benchmarks/iground", "0" * 32 + ".dir", "evaluation")])
    tracked.log_axis(PRETRAIN_CLIPS, 60)
    logged = client.get_run(run.info.run_id)
    (entry,) = logged.inputs.dataset_inputs
    assert (entry.dataset.name, entry.dataset.digest, entry.dataset.source_type) == ("iground_benchmark:test", "0" * 32 + ".dir", "local")
    assert entry.dataset.source == '{"uri": "/runs/benchmarks/iground"}'
    assert [(tag.key, tag.value) for tag in entry.tags] == [("mlflow.data.context", "evaluation")]
    assert logged.data.params[PRETRAIN_CLIPS] == "60" and logged.data.metrics[PRETRAIN_CLIPS] == 60.0
    with pytest.raises(ValueError, match="subset \\(/x\\): digest .* longer than the 36 characters"):
        tracked.log_inputs([RunDataset("subset", "/x", "f" * 64, "training")])


# ------------------------------------------------------------------------------------------ killed attempts

KILL_ENV = "GROVE_TEST_KILL_INSIDE_RUN"


@dg.asset(partitions_def=dg.StaticPartitionsDefinition(["a"]), group_name="models")
def attempted(context: dg.AssetExecutionContext, mlflow: MlflowResource) -> None:
    with mlflow.start_run(context, concern="pretraining"):
        if os.environ.get(KILL_ENV):
            os.kill(os.getpid(), signal.SIGKILL)


def materialise_attempt(home: str, root: str) -> str:
    """One lineage run of `attempted[a]` in the Dagster home (the killed attempt runs this in a subprocess)."""
    with dg.DagsterInstance.from_config(home) as instance:
        result = dg.materialize([attempted], instance=instance, partition_key="a", tags={RUN_TAG: "true"},
                                resources={"mlflow": MlflowResource.local(root, experiment="grove-test")})
        return result.run_id


def _runs(resource: MlflowResource) -> dict[str, object]:
    client = resource.client()
    return {run.info.run_id: run for run in client.search_runs(resource.experiment_ids(client))}


def test_a_killed_attempts_run_ends_killed_naming_the_attempt_that_replaced_it(tmp_path):
    home = prepare_home(tmp_path / "dagster_home", gpu_slots=1)
    resource = MlflowResource.local(tmp_path, experiment="grove-test")
    code = f"from tests.orchestration.test_tracking import materialise_attempt; materialise_attempt({str(home)!r}, {str(tmp_path)!r})"
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env={**os.environ, KILL_ENV: "1"},
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    (dead,) = _runs(resource).values()
    assert dead.info.status == "RUNNING"

    # its Dagster run still looks alive (STARTED): a second materialisation might be running beside it, so its run stays
    beside = materialise_attempt(str(home), str(tmp_path))
    assert _runs(resource)[dead.info.run_id].info.status == "RUNNING"

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert recover_interrupted_runs(instance) == 1  # what `grove demo` does first: the killed run is marked failed
    replacing = materialise_attempt(str(home), str(tmp_path))
    runs = _runs(resource)
    (new,) = [run for run in runs.values() if run.data.tags["dagster.run_id"] == replacing]
    assert new.info.status == "FINISHED" and runs[dead.info.run_id].info.status == "KILLED"
    assert runs[dead.info.run_id].data.tags[REPLACED_BY_RUN_TAG] == new.info.run_id
    assert runs[dead.info.run_id].data.tags[REPLACED_BY_DAGSTER_TAG] == replacing != beside
    assert [run.info.status for run in runs.values() if run.data.tags["dagster.run_id"] == beside] == ["FINISHED"]


# ------------------------------------------------------------------------------------------ the tiny lineage


@pytest.fixture(scope="module")
def tracked_lineage(tiny_demo):
    result, root = tiny_demo
    resource = MlflowResource.local(root, experiment_name(result.profile))
    with dg.DagsterInstance.from_config(str(root / LAYOUT["dagster_home"])) as instance:
        yield result, root, resource, instance


def test_each_concern_has_an_experiment_of_its_own(tracked_lineage):
    result, _, resource, _ = tracked_lineage
    client = resource.client()
    names = {client.get_experiment(e).name for e in resource.experiment_ids(client)}
    assert names <= {f"grove-tiny/{concern}" for concern in CONCERNS}
    assert result.experiments == sorted(names)
    where = {"pretrained_model": "pretraining", "finetuned_model": "finetuning", "iground_predictions": "inference",
             "vidstg_predictions": "inference", "iground_metrics": "evaluation", "anet_entities_metrics": "evaluation",
             "data_scaling_curve": "reports", "annotation_quality": "annotation"}
    for asset, concern in where.items():
        runs = client.search_runs([resource.experiment_id(concern, client)], f"tags.`dagster.asset_key` = '{asset}'")
        assert runs and all(run.info.status == "FINISHED" for run in runs), asset


def test_training_runs_hold_the_curve_once_system_metrics_and_their_datasets(tracked_lineage):
    _, root, resource, instance = tracked_lineage
    client = resource.client()
    subset_version = latest(instance, "pretraining_subset", "s").tags["dagster/data_version"]
    iground_version = latest(instance, "iground_benchmark").tags["dagster/data_version"]
    expected = {
        ("pretrained_model", "s"): [("pretraining_subset[s]:pool", subset_version, root / "subsets" / "s", "training")],
        ("finetuned_model", "ft_only"): [("iground_benchmark:train", iground_version, root / "benchmarks" / "iground", "training"),
                                         ("iground_benchmark:val", iground_version, root / "benchmarks" / "iground", "validation")],
    }
    for (asset, partition), datasets in expected.items():
        run = resource.latest_run(asset, partition)
        history = client.get_metric_history(run.info.run_id, "train/loss")
        assert [m.step for m in history] == [1]  # logged by the training process, once
        assert any(name.startswith("system/cpu_utilization") for name in run.data.metrics), sorted(run.data.metrics)
        logged = [(i.dataset.name, i.dataset.digest, i.dataset.source, i.tags[0].value) for i in run.inputs.dataset_inputs]
        assert sorted(logged) == sorted((n, d, f'{{"uri": "{p}"}}', c) for n, d, p, c in datasets)
        assert all(digest for _, digest, _, _ in logged)


def test_pretraining_finetuning_and_evaluation_runs_carry_the_clip_count(tracked_lineage):
    _, _, resource, instance = tracked_lineage
    clips = latest(instance, "pretraining_subset", "s").metadata["clips"].value
    for asset in ("pretrained_model", "finetuned_model", "iground_predictions", "iground_metrics", "vidstg_metrics"):
        for partition, count in (("s", clips), ("ft_only", 0)):
            if asset == "pretrained_model" and partition == "ft_only":
                continue
            run = resource.latest_run(asset, partition)
            assert run.data.params[PRETRAIN_CLIPS] == str(count) and run.data.metrics[PRETRAIN_CLIPS] == count, (asset, partition)
    # the MLflow UI's chart of a metric against the clips is a search of the evaluation experiment
    client = resource.client()
    charted = client.search_runs([resource.experiment_id("evaluation", client)],
                                 f"tags.`dagster.asset_key` = 'iground_metrics' and metrics.{PRETRAIN_CLIPS} > 0")
    assert [(run.data.metrics[PRETRAIN_CLIPS], "CIDEr" in run.data.metrics) for run in charted] == [(clips, True)]
    metrics_run = resource.latest_run("iground_metrics", "s")
    predictions = latest(instance, "iground_predictions", "s").tags["dagster/data_version"]
    assert ("iground_predictions[s]", predictions) in [(i.dataset.name, i.dataset.digest) for i in metrics_run.inputs.dataset_inputs]
