"""Dagster resources: where things live, MLflow tracking, DVC versioning, and the GPU launchers.

Heavy clients (mlflow, kubernetes) are imported inside methods so that loading the definitions
stays fast and needs neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import dagster as dg
import yaml
from pydantic import Field

from grove.io import exclusive_lock
from orchestration.profile import REPO_ROOT

log = logging.getLogger(__name__)

# Where each node of the lineage lives under a profile's runs root. dvc.yaml names the same
# paths for the demo profile (tests/orchestration checks that the two agree).
LAYOUT: dict[str, str] = {
    "synthetic": "raw/synthetic",
    "catalog": "catalog/pool",
    "annotation": "annotation/pool",
    "iground": "benchmarks/iground",
    "benchmarks": "benchmarks",
    "subsets": "subsets",
    "pretrained": "checkpoints/pretrain",
    "finetuned": "checkpoints/finetune",
    "predictions": "predictions/iground",
    "metrics": "metrics",
    "reports": "reports",
    "mlflow_db": "mlflow.db",
    "mlartifacts": "mlartifacts",
    "dagster_home": "dagster_home",
}


class PipelinePaths(dg.ConfigurableResource):
    """The on-disk home of every asset: one runs root per profile (runs/<profile> by default)."""

    root: str

    def path(self, node: str, *parts: str) -> Path:
        if node not in LAYOUT:
            raise KeyError(f"unknown lineage node '{node}' (known: {', '.join(sorted(LAYOUT))})")
        return Path(self.root).joinpath(LAYOUT[node], *parts)


# --------------------------------------------------------------------------------------------
# MLflow

# One MLflow experiment per concern, `<experiment>/<concern>`: the runs of one experiment log the same
# names (training curves; iGround metrics), so the MLflow UI's runs table, compare and chart views line
# them up, where one experiment for everything would leave most columns of most runs empty. An asset
# names its concern when it starts a run; one that does not gets its Dagster group's.
CONCERNS = ("annotation", "pretraining", "finetuning", "inference", "evaluation", "reports", "registry")
CONCERN_OF_GROUP = {"annotation": "annotation", "evaluation": "evaluation", "reports": "reports", "models": "registry"}
# The size of the pre-training subset behind a run (0: none, FT-only), logged by pre-training, fine-tuning,
# inference and evaluation runs as a param (the runs table filters on it) and a metric (the charts' axis).
PRETRAIN_CLIPS = "pretrain_clips"
DATASET_CONTEXT_TAG = "mlflow.data.context"  # the input tag the MLflow UI shows as a dataset's use
DIGEST_CHARS = 36  # MLflow's limit on a dataset digest: a DVC hash (32 hex + ".dir") fits
# Tags of a run that a later attempt found RUNNING after its own attempt had died, and ended as KILLED
REPLACED_BY_RUN_TAG = "grove.replaced_by.mlflow_run"
REPLACED_BY_DAGSTER_TAG = "grove.replaced_by.dagster_run"


@dataclass(frozen=True)
class RunDataset:
    """A dataset a run read, for `MlflowClient.log_inputs`: where it lives (the source), its DVC hash
    (the digest; '' when none is recorded yet) and what the run used it for (training, validation, evaluation)."""

    name: str
    path: str
    digest: str
    context: str


@dataclass
class TrackedRun:
    """One MLflow run, written through an explicit client (no global mlflow state)."""

    client: Any
    run_id: str
    experiment_id: str
    url: str

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(key, str(value)[:6000]) for key, value in _flatten(params).items()]
        for start in range(0, len(flat), 100):
            self.client.log_batch(self.run_id, params=flat[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        self.log_history([(step, metrics)])

    def log_history(self, records: Iterable[tuple[int, Mapping[str, float]]]) -> None:
        """Metric curves: (step, {name: value}) records, written in batches."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(name, float(value), now, int(step))
            for step, metrics in records
            for name, value in metrics.items()
            if isinstance(value, (int, float))
        ]
        for start in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[start : start + 1000])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, obj, artifact_file)

    def log_axis(self, name: str, value: float) -> None:
        """A number that runs are compared along (`PRETRAIN_CLIPS`): a param and a metric of the same name."""
        self.log_params({name: value})
        self.log_metrics({name: float(value)})

    def log_inputs(self, datasets: Sequence[RunDataset]) -> None:
        """The datasets as the run's inputs (the UI's Datasets column); a local path is the source MLflow's
        own local dataset source writes (`local`, `{"uri": path}`), built here because resolving a path
        through MLflow's source registry warns that two sources match it."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = []
        for dataset in datasets:
            if len(dataset.digest) > DIGEST_CHARS:
                raise ValueError(f"dataset {dataset.name} ({dataset.path}): digest {dataset.digest!r} is longer than "
                                 f"the {DIGEST_CHARS} characters MLflow stores")
            entity = Dataset(dataset.name, dataset.digest, "local", json.dumps({"uri": dataset.path}))
            inputs.append(DatasetInput(entity, [InputTag(DATASET_CONTEXT_TAG, dataset.context)]))
        if inputs:
            self.client.log_inputs(self.run_id, datasets=inputs)


LOGGED_MODEL_TAG = "grove.model_id"  # the id of the MLflow LoggedModel a run logged, or a registered version holds


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking: one run per materialisation of a model or evaluation asset partition, in the
    experiment `<experiment>/<concern>` of its concern (`CONCERNS`).

    The default backend is a SQLite file with a local artifact folder. SQLite takes one writer at a
    time: the busy timeout makes concurrent steps wait instead of failing with "database is
    locked", and each experiment is created once, before its first run. Many concurrent writers (a
    cluster) should point `tracking_uri` at an `mlflow server` in front of the database instead.
    """

    tracking_uri: str
    artifact_location: str
    experiment: str = Field(description="prefix of the experiments' names: `<experiment>/<concern>`")
    ui_url: str = "http://127.0.0.1:5000"
    registered_model: str = "grove"
    log_models: bool = Field(
        default=True, description="log each trained checkpoint as an MLflow model (params.yaml `mlflow.log_models`); "
        "off, the champion logs only the model it registers")
    system_metrics_interval_s: float = Field(
        default=10.0, ge=0, description="seconds between the system metrics samples of a training process (0: none)")
    metrics_flush_s: float = Field(
        default=2.0, ge=0, description="a training process sends its buffered metrics at most this long after they come")

    @classmethod
    def from_env(cls, root: str | os.PathLike[str], experiment: str, **settings: Any) -> "MlflowResource":
        """The tracking server `MLFLOW_TRACKING_URI` names (its own artifact store), else `local(root)`;
        `settings`: the other fields."""
        uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        if uri:
            return cls(tracking_uri=uri, artifact_location="", experiment=experiment, **settings)
        return cls.local(root, experiment, **settings)

    @classmethod
    def local(cls, root: str | os.PathLike[str], experiment: str, **settings: Any) -> "MlflowResource":
        root = Path(root).resolve()
        return cls(
            tracking_uri=f"sqlite:///{root / LAYOUT['mlflow_db']}?timeout=60",
            artifact_location=(root / LAYOUT["mlartifacts"]).as_uri(),
            experiment=experiment,
            **settings,
        )

    @property
    def is_local(self) -> bool:
        """A SQLite file of this machine (not a tracking server)."""
        return self.tracking_uri.startswith("sqlite:///")

    @property
    def store_uri(self) -> str:
        """The backend URI without the driver options, for `mlflow ui --backend-store-uri`."""
        return self.tracking_uri.split("?", 1)[0]

    def client(self) -> Any:
        from mlflow import MlflowClient

        if not self.is_local:
            return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        database = Path(self.store_uri[len("sqlite:///") :])
        database.parent.mkdir(parents=True, exist_ok=True)
        # MLflow creates (or migrates) a store's tables when a client first opens it; two processes
        # doing that at once collide ("table ... already exists"), so opening the stores is serialised
        with exclusive_lock(database.with_name(database.name + ".init.lock")):
            client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
        return client

    def experiment_name(self, concern: str) -> str:
        return f"{self.experiment}/{concern}"

    def experiment_id(self, concern: str, client: Any | None = None) -> str:
        """Get or create a concern's experiment; a concurrent creator winning the race is not an error."""
        client = client or self.client()
        name = self.experiment_name(concern)
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = f"{self.artifact_location.rstrip('/')}/{concern}" if self.artifact_location else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def experiment_ids(self, client: Any | None = None) -> list[str]:
        """The ids of every concern's experiment that exists (readers search runs across them)."""
        client = client or self.client()
        prefix = f"{self.experiment}/"
        # LIKE's '_' matches any character: the exact prefix is checked again on the names found
        found = client.search_experiments(filter_string=f"name LIKE '{prefix}%'", max_results=1000)
        return [e.experiment_id for e in found if e.name.startswith(prefix)]

    def concern_of(self, context: dg.AssetExecutionContext) -> str:
        group = context.assets_def.group_names_by_key.get(context.asset_key, "default")
        return CONCERN_OF_GROUP.get(group, group)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"

    @contextlib.contextmanager
    def start_run(
        self,
        context: dg.AssetExecutionContext,
        *,
        concern: str | None = None,
        params: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
    ) -> Iterator[TrackedRun]:
        """A run for this asset partition in its concern's experiment (default: its group's), tagged with
        its Dagster lineage; FAILED if the body raises. Runs of earlier attempts at the same partition
        left RUNNING by a killed process end as KILLED, tagged with this attempt (`end_replaced_runs`)."""
        client = self.client()
        experiment_id = self.experiment_id(concern or self.concern_of(context), client)
        asset_key = context.asset_key.to_user_string()
        partition = context.partition_key if context.has_partition_key else ""
        run_tags = {
            "dagster.run_id": context.run.run_id,
            "dagster.asset_key": asset_key,
            "dagster.partition": partition,
            "dagster.code_version": context.assets_def.code_versions_by_key.get(context.asset_key) or "",
            "mlflow.runName": f"{asset_key}[{partition}]" if partition else asset_key,
            **{key: str(value) for key, value in (tags or {}).items()},
        }
        run = client.create_run(experiment_id, tags=run_tags)
        tracked = TrackedRun(client, run.info.run_id, experiment_id, self.run_url(experiment_id, run.info.run_id))
        try:
            end_replaced_runs(client, context.instance, experiment_id, asset_key, partition, run.info.run_id, context.run.run_id)
            if params:
                tracked.log_params(params)
            yield tracked
        except BaseException:
            client.set_terminated(tracked.run_id, status="FAILED")
            raise
        client.set_terminated(tracked.run_id, status="FINISHED")

    def register(self, model_id: str, alias: str, tags: Mapping[str, str] | None = None) -> str:
        """Register the logged model `model_id` (an MLflow 3 LoggedModel, orchestration.mlflow_model) as a new
        version of the registered model, made by the run that logged it, and point `alias` at it (aliases,
        not the deprecated stages). A version's artifacts are the logged model's own copy: retraining logs
        another model and never changes what an older version loads.

        The version's source is the logged model's artifact location, the location MLflow resolves
        `models:/<model_id>` to: MLflow's SQLite registry resolves a `models:/` source through the process's
        default tracking URI instead of this client's (a TODO in its sqlalchemy store), so it would look in
        another store; MLflow's own client registers the artifact location the same way for registries that
        take no `models:/` source. A tracking server links the version to `model_id`; MLflow's SQLite registry
        keeps no such link, so the version's tag `LOGGED_MODEL_TAG` names the logged model too."""
        from mlflow.entities import LoggedModelStatus

        client = self.client()
        logged = client.get_logged_model(model_id)
        if logged.status != LoggedModelStatus.READY:
            raise ValueError(f"logged model {model_id} ({logged.artifact_location}) is {logged.status}, not READY: not registered")
        _ensure_registered_model(client, self.registered_model)
        version = client.create_model_version(self.registered_model, source=logged.artifact_location, run_id=logged.source_run_id,
                                              model_id=model_id, tags={**dict(tags or {}), LOGGED_MODEL_TAG: model_id})
        client.set_registered_model_alias(self.registered_model, alias, version.version)
        return str(version.version)

    def pipes_extras(self, run: TrackedRun) -> dict[str, Any]:
        """What a Pipes process needs to log to `run` itself (orchestration.pipes_mlflow.RemoteRun)."""
        return {"tracking_uri": self.tracking_uri, "run_id": run.run_id,
                "system_metrics_interval_s": self.system_metrics_interval_s, "flush_s": self.metrics_flush_s}

    def latest_run(self, asset_key: str, partition: str) -> Any | None:
        """The newest finished run of an asset partition, or None."""
        client = self.client()
        experiments = self.experiment_ids(client)
        if not experiments:
            return None
        runs = client.search_runs(
            experiments,
            filter_string=f"tags.`dagster.asset_key` = '{asset_key}' and tags.`dagster.partition` = '{partition}' "
            "and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None


# Dagster run states after which none of the run's steps is still executing
_ENDED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def end_replaced_runs(client: Any, instance: dg.DagsterInstance, experiment_id: str, asset_key: str, partition: str,
                      replacement: str, dagster_run_id: str) -> list[str]:
    """End as KILLED the runs of this asset partition left RUNNING by attempts that died (a kill -9 leaves
    no one to end them), tagged with the attempt that replaced them; return their ids.

    An attempt is dead when its Dagster run has ended (a killed `grove demo`'s run is marked failed by
    `recover_interrupted_runs` before the next one starts; Dagster's run monitoring does the same for a
    `dagster dev` run) or when it is an earlier try of this very Dagster run (a step retry). A RUNNING run
    of a Dagster run that is still going, or that this instance does not know, is left alone: it may be
    a concurrent materialisation of the same partition.
    """
    stale = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`dagster.asset_key` = '{asset_key}' and tags.`dagster.partition` = '{partition}' "
        "and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    ended = []
    for run in stale:
        owner = run.data.tags.get("dagster.run_id", "")
        if run.info.run_id == replacement or not owner:
            continue
        owner_run = instance.get_run_by_id(owner)
        if owner_run is None or (owner != dagster_run_id and owner_run.status not in _ENDED):
            continue
        client.set_tag(run.info.run_id, REPLACED_BY_RUN_TAG, replacement)
        client.set_tag(run.info.run_id, REPLACED_BY_DAGSTER_TAG, dagster_run_id)
        client.set_terminated(run.info.run_id, status="KILLED")
        log.info("MLflow run %s of %s[%s] (Dagster run %s, %s) ended as KILLED: replaced by %s", run.info.run_id,
                 asset_key, partition, owner, owner_run.status.value, replacement)
        ended.append(run.info.run_id)
    return ended


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


# --------------------------------------------------------------------------------------------
# DVC


class DvcError(RuntimeError):
    """A DVC command failed; the message names the command, the repository and DVC's own error."""


DVCIGNORE = ".dvcignore"


def dvc_ignore_patterns(repo: str | os.PathLike[str] = REPO_ROOT) -> tuple[str, ...]:
    """The repository's .dvcignore patterns (names inside outputs that DVC leaves out of their hashes).

    Only the subset of the gitignore syntax that a name-level match reproduces exactly is accepted:
    a file or folder name, globs allowed, no '/', no '!'. Anything else is refused rather than
    matched differently from DVC, which would give Dagster data versions that dvc.lock never has.
    """
    path = Path(repo) / DVCIGNORE
    if not path.is_file():
        return ()
    patterns = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        if pattern.startswith("!") or "/" in pattern.rstrip("/") or "**" in pattern:
            raise ValueError(f"{path}:{number}: {pattern!r}: dvc_md5 supports only name patterns (no '/', '!' or '**')")
        patterns.append(pattern.rstrip("/"))
    return tuple(patterns)


def _ignored(relpath: str, patterns: Sequence[str]) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(part, pattern) for part in relpath.split("/") for pattern in patterns)


def dvc_md5(path: str | os.PathLike[str], ignore: Sequence[str] | None = None) -> str:
    """The hash DVC 3 records for an output, computed without DVC.

    A file: the md5 of its bytes. A directory: the md5 of the JSON list of its files'
    `{"md5", "relpath"}` sorted by relpath, with the `.dir` suffix (dvc_data's Tree.digest), leaving
    out what `.dvcignore` names (`ignore`: those patterns; default: the repository's), as DVC does.
    Shard partitions use it directly: DVC versions the whole shard folder, not each shard.
    """
    path = Path(path)
    if path.is_file():
        return _file_md5(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory to hash")
    patterns = dvc_ignore_patterns() if ignore is None else tuple(ignore)
    entries = [
        {"md5": _file_md5(file), "relpath": relpath}
        for file in path.rglob("*")
        if file.is_file() and not _ignored(relpath := file.relative_to(path).as_posix(), patterns)
    ]
    entries.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def combine_versions(hashes: Sequence[str]) -> str:
    """One data version for an asset with several outputs."""
    if len(hashes) == 1:
        return hashes[0]
    return hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:32]


def clear_unreadable_rwlock(rwlock: Path) -> None:
    """DVC rewrites its lock file in place, so a DVC process killed mid-write leaves it empty or cut, and
    every later DVC command fails ("Unable to read RWLock-file"). Called under the serial lock, when no
    DVC command of this pipeline runs: a file that is not JSON is a dead writer's, and goes."""
    try:
        text = rwlock.read_text()
    except FileNotFoundError:
        return
    try:
        json.loads(text)
    except ValueError:
        log.warning("%s: unreadable (%d bytes, left by a killed DVC command); removed", rwlock, len(text))
        rwlock.unlink(missing_ok=True)


class DvcResource(dg.ConfigurableResource):
    """Runs DVC one command at a time, and turns DVC output hashes into Dagster data versions.

    With `enabled`, `record(stage, outputs)` commits the stage (dvc.lock gets the hashes, the cache
    the data) and reads the outputs' hashes back from dvc.lock. Without it (a runs root that
    dvc.yaml does not describe, or no DVC installed) the same hashes are computed by `dvc_md5`.
    """

    repo: str = str(REPO_ROOT)
    executable: str = ""
    enabled: bool = True
    timeout_s: float = 1800.0

    def dvc_executable(self) -> str:
        if self.executable:
            return self.executable
        local = Path(self.repo) / ".venv-dvc" / "bin" / "dvc"
        return str(local) if local.exists() else (shutil.which("dvc") or "dvc")

    def run(self, *args: str) -> str:
        command = [self.dvc_executable(), *args]
        # DVC's own repository lock fails instead of waiting (dvc #10752)
        with exclusive_lock(Path(self.repo) / ".dvc" / "tmp" / "grove-serial.lock"):
            clear_unreadable_rwlock(Path(self.repo) / ".dvc" / "tmp" / "rwlock")
            try:
                proc = subprocess.run(
                    command, cwd=self.repo, capture_output=True, text=True, timeout=self.timeout_s, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise DvcError(f"`{' '.join(command)}` in {self.repo}: {exc}") from exc
        if proc.returncode != 0:
            raise DvcError(f"`{' '.join(command)}` in {self.repo} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    def locked_hashes(self) -> dict[str, str]:
        """Output path (relative to the repository) → hash, from dvc.lock."""
        lock_file = Path(self.repo) / "dvc.lock"
        if not lock_file.exists():
            return {}
        try:
            lock = yaml.safe_load(lock_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise DvcError(f"{lock_file}: not valid YAML: {exc}") from exc
        return {
            out["path"]: out.get("md5") or out.get("hash", "")
            for stage in lock.get("stages", {}).values()
            for out in stage.get("outs", [])
        }

    def record(self, stage: str | None, outputs: Sequence[str | os.PathLike[str]]) -> str:
        """Commit `stage` when DVC runs here and return the outputs' DVC hashes as one data version."""
        if not (self.enabled and stage):
            return combine_versions([dvc_md5(out) for out in outputs])
        self.run("commit", "--force", stage)
        locked = self.locked_hashes()
        hashes = []
        for out in outputs:
            relative = os.path.relpath(Path(out).resolve(), Path(self.repo).resolve())
            if relative not in locked:
                raise DvcError(f"{Path(self.repo) / 'dvc.lock'}: stage '{stage}' recorded no output '{relative}'")
            hashes.append(locked[relative])
        return combine_versions(hashes)


# --------------------------------------------------------------------------------------------
# GPU launchers (Dagster Pipes)


class LauncherError(RuntimeError):
    """A launcher is misconfigured or its cluster client is not installed."""


class PipesProcessError(RuntimeError):
    """A Pipes process failed; the message carries what it raised."""


PIPES_CLOSED = "[pipes] external process pipes closed with exception"


def pipes_errors(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """What the Pipes processes of a run raised, as the run's event log records it (the UI shows these)."""
    found = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        if (entry.user_message or "").startswith(PIPES_CLOSED):
            error = entry.dagster_event.event_specific_data.error
            if error is not None:  # its message may already start with the exception's class name
                message = error.message.strip()
                found.append(message if message.startswith(f"{error.cls_name}:") else f"{error.cls_name}: {message}")
    return found


@contextlib.contextmanager
def naming_pipes_errors(context: dg.AssetExecutionContext, module: str) -> Iterator[None]:
    """Re-raise a failed Pipes launch with what the process raised: Dagster's own error says only that
    "the external execution process failed", the cause sits in an engine event of the run."""
    try:
        yield
    except Exception as exc:
        reported = pipes_errors(context.instance, context.run.run_id)
        if not reported:
            raise
        raise PipesProcessError(f"{module} raised {' | '.join(reported)}") from exc


class PipesLauncher(dg.ConfigurableResource, ABC):
    """Runs a Pipes-side entry module (orchestration.pipes_train / pipes_infer) somewhere.

    Assets ask for a `PipesLauncher`; the definitions pick the implementation, so moving training
    from this machine to Slurm or Kubernetes changes one resource, never an asset.
    """

    nproc_per_node: int = Field(default=1, ge=1, description="torchrun processes (GPUs) per node")
    nnodes: int = Field(
        default=1, ge=1,
        description="nodes of one run; above 1 every node runs grove.distributed, which reads its node rank and the "
        "master's address from Slurm, a Kubernetes indexed Job or GROVE_* variables there and starts torchrun",
    )
    max_restarts: int = Field(default=0, ge=0, description="torchrun restarts of failed workers (training resumes from its last checkpoint)")

    def torchrun_command(
        self, module: str, args: Sequence[str] = (), python: str = sys.executable, nproc: int | None = None
    ) -> list[str]:
        from grove.distributed import torchrun_command  # imports torch: only when launching, not with the definitions

        per_node = nproc or self.nproc_per_node
        if self.nnodes > 1:
            # a node's rank is known only on that node (SLURM_NODEID, JOB_COMPLETION_INDEX): resolved there
            restarts = [f"--max-restarts={self.max_restarts}"] if self.max_restarts else []
            return [python, "-m", "grove.distributed", f"--nproc-per-node={per_node}", *restarts, "-m", module, *args]
        return torchrun_command(python, module, args, per_node, None, self.max_restarts)

    @abstractmethod
    def run(
        self,
        context: dg.AssetExecutionContext,
        *,
        module: str,
        args: Sequence[str] = (),
        extras: Mapping[str, Any] | None = None,
        nproc: int | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        """Run `module` with `nproc` ranks (default: nproc_per_node) and wait for it to finish."""


class TorchrunLauncher(PipesLauncher):
    """`torchrun` in a subprocess on this machine, or behind a `prefix` such as `srun` on Slurm.

    On Slurm the job runs on another node, so the Pipes context travels in environment variables
    (which srun exports) and messages through a file in `shared_dir`, a folder both nodes see.
    """

    prefix: list[str] = Field(
        default_factory=list,
        description="e.g. ['srun', '--nodes=1', '--gpus-per-node=8']; with nnodes=2: ['srun', '--nodes=2', '--ntasks-per-node=1', '--gpus-per-node=8']",
    )
    shared_dir: str = Field(default="", description="folder visible to the launching and the compute node")
    python: str = ""
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str = str(REPO_ROOT)

    def command(self, module: str, args: Sequence[str] = (), nproc: int | None = None) -> list[str]:
        python = self.python or sys.executable
        if (nproc or self.nproc_per_node) == 1 and not self.prefix:
            # one rank on this machine needs no rendezvous: torchrun would add a process and its start-up
            return [python, "-m", module, *args]
        return [*self.prefix, *self.torchrun_command(module, args, python, nproc)]

    def client(self) -> dg.PipesSubprocessClient:
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [self.cwd, os.environ.get("PYTHONPATH", "")])), **self.env}
        if not self.shared_dir:
            return dg.PipesSubprocessClient(env=env, cwd=self.cwd)
        shared = Path(self.shared_dir)
        shared.mkdir(parents=True, exist_ok=True)
        messages = shared / f"pipes-messages-{os.getpid()}-{time.time_ns()}.jsonl"
        return dg.PipesSubprocessClient(
            env=env,
            cwd=self.cwd,
            context_injector=dg.PipesEnvContextInjector(),
            message_reader=dg.PipesFileMessageReader(str(messages)),
        )

    def run(
        self,
        context: dg.AssetExecutionContext,
        *,
        module: str,
        args: Sequence[str] = (),
        extras: Mapping[str, Any] | None = None,
        nproc: int | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        command = self.command(module, args, nproc)
        context.log.info(f"launching: {' '.join(command)}")
        with naming_pipes_errors(context, module):
            return self.client().run(context=context, command=command, extras=dict(extras or {}))


class K8sLauncher(PipesLauncher):
    """One pod per training or inference step through dagster-k8s' PipesK8sClient.

    The runs root must be a shared volume mounted in the pod at the same absolute path, since the
    extras carry paths. Needs `pip install dagster-k8s` and a kubeconfig (or in-cluster config).
    """

    image: str
    namespace: str = "default"
    gpus_per_pod: int = Field(default=1, ge=0)
    volume_claim: str = Field(default="", description="PersistentVolumeClaim holding the runs root")
    mount_path: str = Field(default="", description="where the claim is mounted: the runs root's path")
    env: dict[str, str] = Field(default_factory=dict)

    def pod_spec(self, command: Sequence[str]) -> dict[str, Any]:
        container: dict[str, Any] = {
            "name": "grove",
            "image": self.image,
            "command": list(command),
            "env": [{"name": key, "value": value} for key, value in sorted(self.env.items())],
        }
        if self.gpus_per_pod:
            container["resources"] = {"limits": {"nvidia.com/gpu": str(self.gpus_per_pod)}}
        spec: dict[str, Any] = {"containers": [container], "restart_policy": "Never"}
        if self.volume_claim:
            if not self.mount_path:
                raise LauncherError("K8sLauncher: volume_claim needs mount_path (the runs root's absolute path)")
            container["volume_mounts"] = [{"name": "runs", "mount_path": self.mount_path}]
            spec["volumes"] = [{"name": "runs", "persistent_volume_claim": {"claim_name": self.volume_claim}}]
        return spec

    def run(
        self,
        context: dg.AssetExecutionContext,
        *,
        module: str,
        args: Sequence[str] = (),
        extras: Mapping[str, Any] | None = None,
        nproc: int | None = None,
    ) -> dg.PipesClientCompletedInvocation:
        if self.nnodes > 1:
            raise LauncherError("K8sLauncher runs one pod per step: a multi-node run needs an indexed Job whose pods run grove.distributed")
        try:
            from dagster_k8s import PipesK8sClient
        except ImportError as exc:
            raise LauncherError("K8sLauncher needs dagster-k8s: pip install dagster-k8s") from exc
        command = self.torchrun_command(module, args, python="python", nproc=nproc)
        with naming_pipes_errors(context, module):
            return PipesK8sClient().run(
                context=context,
                extras=dict(extras or {}),
                namespace=self.namespace,
                base_pod_spec=self.pod_spec(command),
            )
