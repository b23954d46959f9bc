"""What the fault tests share: the tiny profile they run, the steps of its lineage, the runner process
they start and kill, and the checks that an output equals the uninterrupted run's and that the
stores (MLflow, Dagster, DVC) are still readable.

Kill points are seeded: `GROVE_FAULT_SEED` (default DEFAULT_SEED) picks, per kind of asset, which
file-system write of its materialisation the SIGKILL lands on and how long after it; every test
names the seed and the point in its messages, so a failure is replayed with the same seed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

REPO = Path(__file__).resolve().parents[2]
HOOK = Path(__file__).resolve().parent / "hook"
PROFILE = "faults"
SEED_ENV = "GROVE_FAULT_SEED"
DEFAULT_SEED = 20261207
RUNNER_TIMEOUT_S = 300
STEP_MARKS = "_fault_steps"  # the base run's step boundaries in its write log (see run_steps)
TEMPORARY = (".*.tmp", ".tmp-*", ".old-*", ".shard-*")  # names the atomic writers give their temporary files


def fault_seed() -> int:
    return int(os.environ.get(SEED_ENV, DEFAULT_SEED))


def fault_params() -> dict[str, Any]:
    """The orchestration tests' tiny profile (13 clips, one shard, one size 's', one training step),
    without the VidSTG and ActivityNet-Entities stand-ins and with 10 bootstrap resamples."""
    from tests.orchestration.conftest import tiny_params

    params = copy.deepcopy(tiny_params())
    for name in ("vidstg", "anet_entities"):
        params["benchmarks"].pop(name, None)
    params["evaluation"]["bootstrap"] = {"resamples": 10, "seed": 0, "confidence": 0.95}
    params["orchestration"].update(max_concurrent=1, gpu_slots=1)
    return params


def write_params(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"profile": PROFILE, PROFILE: fault_params()}))
    return path


# ------------------------------------------------------------------------------ the lineage's steps

SHARDS = "*shards*"
SIZE = "s"
STAGES = ["stage1_frame_captions", "stage2_video_captions", "stage3_grounded_clips"]


@dataclass(frozen=True)
class Kind:
    """A kind of asset: the step that materialises it and the outputs it writes (relative to the root)."""

    name: str
    step: dict[str, Any]
    outputs: tuple[str, ...]
    dvc_stage: str | None  # the stage its DvcResource commits (None: it commits none)

    @property
    def scopes(self) -> tuple[str, ...]:
        """Where its output writes happen: a folder output, or the folder of a file output (whose
        atomic write creates its temporary file there)."""
        return tuple(out.rsplit("/", 1)[0] if "." in out.rsplit("/", 1)[-1] else out for out in self.outputs)

    @property
    def stores(self) -> tuple[str, ...]:
        """Where the records of its materialisation are written: the MLflow artifacts, the DVC store."""
        return ("mlartifacts", ".dvc/cache", "dvc.lock") if self.dvc_stage else ("mlartifacts",)

    @property
    def watched(self) -> tuple[str, ...]:
        """Where its writes are counted: its outputs and the stores."""
        return (*self.scopes, *self.stores)

    def watched_among(self, among: str) -> tuple[str, ...]:
        return self.scopes if among == "outputs" else self.stores


KINDS = {
    "annotation_shard": Kind("annotation_shard", {"assets": STAGES, "partition": SHARDS},
                             tuple(f"annotation/pool/shards/stage{n}" for n in (1, 2, 3)), None),
    "subset": Kind("subset", {"assets": ["pretraining_subset"], "partition": SIZE}, (f"subsets/{SIZE}",), f"subset@{SIZE}"),
    "training": Kind("training", {"assets": ["pretrained_model"], "partition": SIZE}, (f"checkpoints/pretrain/{SIZE}",),
                     f"pretrain@{SIZE}"),
    "inference": Kind("inference", {"assets": ["iground_predictions"], "partition": SIZE},
                      (f"predictions/iground/{SIZE}.json",), f"predict@{SIZE}"),
    "evaluation": Kind("evaluation", {"assets": ["iground_metrics"], "partition": SIZE}, (f"metrics/iground/{SIZE}.json",),
                       f"evaluate@{SIZE}"),
}

BASE_STEPS: list[dict[str, Any]] = [
    {"assets": ["synthetic_dataset", "pool_catalog"], "partition": None},
    KINDS["annotation_shard"].step,
    {"assets": ["annotated_pool", "iground_benchmark"], "partition": None},
    KINDS["subset"].step,
    KINDS["training"].step,
    {"assets": ["finetuned_model"], "partition": SIZE},
    KINDS["inference"].step,
    KINDS["evaluation"].step,
]

# dvc.yaml of a runs root: the stages the assets above commit, with their outputs (commands are never run)
DVC_YAML = {
    "stages": {
        **{name: {"cmd": "true", "outs": [out]} for name, out in (
            ("synthesize", "raw/synthetic"), ("ingest", "catalog/pool"), ("annotate", "annotation/pool"),
            ("iground", "benchmarks/iground"))},
        **{name: {"foreach": [SIZE], "do": {"cmd": "true", "outs": [out]}} for name, out in (
            ("subset", "subsets/${item}"), ("pretrain", "checkpoints/pretrain/${item}"), ("finetune", "checkpoints/finetune/${item}"),
            ("predict", "predictions/iground/${item}.json"), ("evaluate", "metrics/iground/${item}.json"))},
    }
}


def dvc_executable() -> str:
    from orchestration.resources import DvcResource

    return DvcResource(repo=str(REPO)).dvc_executable()


def init_dvc(root: Path) -> None:
    """Make a runs root a DVC repository (no git) whose dvc.yaml describes the assets' stages."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([dvc_executable(), "init", "--no-scm", "--quiet"], cwd=root, check=True, capture_output=True, text=True)
    subprocess.run([dvc_executable(), "config", "core.analytics", "false"], cwd=root, check=True, capture_output=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    shutil.copy(REPO / ".dvcignore", root / ".dvcignore")  # the same names left out of hashes as in the repository


# ------------------------------------------------------------------------------ the runner process


@dataclass
class Finished:
    returncode: int
    output: str

    @property
    def killed(self) -> bool:
        return self.returncode == -signal.SIGKILL

    def error_line(self) -> str:
        lines = [line for line in self.output.splitlines() if line.startswith("FAILED: ")]
        return lines[-1] if lines else self.output[-3000:]


def runner_env(root: Path, log: Path | None, watched: Sequence[str] = (), kill_at: int = 0, delay: float = 0.0) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HOOK), str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "GROVE_DVC": "1", "DAGSTER_HOME": str(root / "dagster_home")}
    for name in ("GROVE_FAULT_ROOT", "GROVE_FAULT_LOG", "GROVE_FAULT_PREFIXES", "GROVE_FAULT_KILL_AT", "GROVE_FAULT_DELAY"):
        env.pop(name, None)
    if log is not None:
        env.update(GROVE_FAULT_ROOT=str(root.resolve()), GROVE_FAULT_LOG=str(log), GROVE_FAULT_PREFIXES=os.pathsep.join(watched),
                   GROVE_FAULT_KILL_AT=str(kill_at), GROVE_FAULT_DELAY=str(delay))
    return env


def start_steps(params: Path, root: Path, steps: Sequence[dict[str, Any]], output: Path, *, dvc: bool = True,
                log: Path | None = None, watched: Sequence[str] = (), kill_at: int = 0, delay: float = 0.0,
                mark_steps: bool = False, recover: bool = True) -> subprocess.Popen:
    """Start the runner on `steps` in a session of its own (a kill takes its whole process group).
    `recover`: first mark runs left STARTED by a killed runner as failed, as `grove demo` does (never
    while another runner works on the root: its live run would be marked failed too)."""
    spec = {"steps": list(steps), "dvc_repo": str(root) if dvc else None, "dvc_executable": dvc_executable(),
            "mark_steps": mark_steps, "recover": recover}
    handle = open(output, "w")
    try:
        return subprocess.Popen([sys.executable, "-m", "tests.faults.runner", str(params), str(root), json.dumps(spec)],
                                cwd=REPO, env=runner_env(root, log, watched, kill_at, delay), stdout=handle,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        handle.close()


def wait(process: subprocess.Popen, output: Path, timeout: float = RUNNER_TIMEOUT_S) -> Finished:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise AssertionError(f"runner did not finish in {timeout} s:\n{output.read_text()[-3000:]}") from None
    return Finished(process.returncode, output.read_text())


def run_steps(params: Path, root: Path, steps: Sequence[dict[str, Any]], output: Path, **options: Any) -> Finished:
    return wait(start_steps(params, root, steps, output, **options), output)


# ------------------------------------------------------------------------------ kill points


@dataclass(frozen=True)
class Event:
    number: int
    pid: int
    event: str
    path: str


def read_events(log: Path) -> list[Event]:
    if not log.exists():
        return []
    events = []
    for line in log.read_text().splitlines():
        number, pid, event, path = line.split("\t", 3)
        events.append(Event(int(number), int(pid), event, path))
    return events


def step_writes(events: Sequence[Event], step: int) -> list[Event]:
    """The writes of one step of a run with step marks (the runner writes a mark before each of its
    materialisations, `<step index>-<partition>`), numbered from 1 in their order."""
    writes: list[Event] = []
    current = None
    for event in events:
        if event.path.startswith(STEP_MARKS + "/"):
            if event.event == "open":
                current = int(event.path.split("/", 1)[1].split("-", 1)[0])
        elif current == step:
            writes.append(event)
    return writes


def under(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


@dataclass(frozen=True)
class KillPoint:
    seed: int
    kind: str
    number: int  # the write (counted among the kind's watched writes) the kill lands on
    of: int  # how many watched writes the uninterrupted materialisation made
    delay: float  # seconds after that write
    event: Event

    def __str__(self) -> str:
        when = "before it" if self.delay == 0 else f"{self.delay * 1000:.0f} ms after it"
        return (f"{self.kind}: SIGKILL at write {self.number}/{self.of} ({self.event.event} {self.event.path}), {when}; "
                f"{SEED_ENV}={self.seed}")


def kill_point(seed: int, kind: Kind, writes: Sequence[Event], among: str = "outputs") -> KillPoint:
    """A seeded kill point among the writes the uninterrupted materialisation made to `kind`'s outputs
    (`among="outputs"`) or to the MLflow and DVC stores (`"stores"`; drawn separately: the DVC cache alone
    has more writes than most outputs): before one of them, or a few milliseconds after one that more
    writes follow (so the process is still at work). Its number counts only the writes `among` watches,
    as the hook does in the killed run (a re-run over finished outputs writes fewer of those)."""
    rng = random.Random(f"{seed}:{kind.name}:{among}")
    chosen = [event for event in writes if under(event.path, kind.watched_among(among))]
    if not chosen:
        raise ValueError(f"{kind.name}: the uninterrupted run made no writes to its {among} to kill at")
    number = rng.randint(1, len(chosen))
    delay = round(rng.uniform(0.005, 0.05), 3) if number < len(chosen) - 1 and rng.random() < 0.5 else 0.0
    return KillPoint(seed, kind.name, number, len(chosen), delay, chosen[number - 1])


# ------------------------------------------------------------------------------ checks


def _ignored(relpath: str) -> bool:
    from orchestration.resources import dvc_ignore_patterns

    import fnmatch

    return any(fnmatch.fnmatchcase(part, pattern) for part in relpath.split("/") for pattern in dvc_ignore_patterns(REPO))


def output_files(root: Path, outputs: Sequence[str]) -> dict[str, str]:
    """relative path → md5 of every file of the outputs that DVC hashes (what .dvcignore names left out)."""
    files: dict[str, str] = {}
    for output in outputs:
        path = root / output
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        for file in candidates:
            relpath = file.relative_to(root).as_posix()
            if file.name != ".lock" and not _ignored(file.relative_to(path).as_posix() if path.is_dir() else file.name):
                files[relpath] = hashlib.md5(file.read_bytes()).hexdigest()
    return files


def temporary_files(root: Path, outputs: Sequence[str]) -> list[str]:
    """Files inside the outputs that an atomic writer left behind (a temporary name on their path)."""
    import fnmatch

    found = []
    for output in outputs:
        path = root / output
        scope = path if path.is_dir() else path.parent
        for file in sorted(scope.rglob("*")) if scope.exists() else []:
            relpath = file.relative_to(root).as_posix()
            inside = path.is_dir() or file.name.startswith(f".{path.name}.")
            if inside and file.is_file() and any(fnmatch.fnmatchcase(part, pattern) for part in relpath.split("/") for pattern in TEMPORARY):
                found.append(relpath)
    return found


def unreadable_files(root: Path, outputs: Sequence[str]) -> list[str]:
    """Output files (temporary ones aside) that do not parse as what their name says: half files."""
    import pyarrow.parquet as pq

    bad = []
    for relpath in output_files(root, outputs):
        path = root / relpath
        try:
            if path.suffix == ".parquet":
                pq.read_table(path)
            elif path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".jsonl":
                [json.loads(line) for line in path.read_text().splitlines()]
            elif path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as handle:
                    [handle.get_tensor(name) for name in handle.keys()]
            elif path.suffix == ".pt":
                import torch

                torch.load(path, weights_only=True)
        except Exception as exc:
            bad.append(f"{relpath}: {type(exc).__name__}: {exc}")
    return bad


def mlflow_problems(root: Path) -> list[str]:
    """What in the runs root's MLflow store cannot be read back: the database, a run, an artifact listing."""
    from mlflow import MlflowClient

    db = root / "mlflow.db"
    if not db.exists():
        return []
    problems = []
    with sqlite3.connect(db) as connection:
        check = connection.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            problems.append(f"{db}: integrity_check {check}")
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            try:
                client.get_run(run.info.run_id)
                for artifact in client.list_artifacts(run.info.run_id):
                    if artifact.is_dir:
                        client.list_artifacts(run.info.run_id, artifact.path)
            except Exception as exc:
                problems.append(f"run {run.info.run_id}: {type(exc).__name__}: {exc}")
    return problems


def dagster_problems(root: Path) -> list[str]:
    import dagster as dg

    from orchestration.demo import prepare_home

    try:
        with dg.DagsterInstance.from_config(str(prepare_home(root / "dagster_home", gpu_slots=1))) as instance:
            for run in instance.get_runs(limit=200):
                instance.all_logs(run.run_id)
    except Exception as exc:
        return [f"{root / 'dagster_home'}: {type(exc).__name__}: {exc}"]
    return []


def dvc_problems(root: Path, outputs: Sequence[str] = ()) -> list[str]:
    """DVC can read the repository (`dvc status` runs), and dvc.lock records each output at the hash
    its files have now, with the cache holding that version."""
    from orchestration.resources import DvcResource, clear_unreadable_rwlock, dvc_md5

    if not (root / ".dvc").is_dir():
        return []
    clear_unreadable_rwlock(root / ".dvc" / "tmp" / "rwlock")  # what the pipeline does before each DVC command
    status = subprocess.run([dvc_executable(), "status", "--quiet"], cwd=root, capture_output=True, text=True)
    if status.returncode not in (0, 1):  # 1: something changed (stages without dependencies always are)
        return [f"`dvc status` in {root}: {status.stderr.strip()[-2000:]}"]
    problems = []
    locked = DvcResource(repo=str(root)).locked_hashes()
    for output in outputs:
        if output not in locked:
            problems.append(f"dvc.lock: no entry for {output}")
            continue
        if locked[output] != dvc_md5(root / output, ignore=_patterns()):
            problems.append(f"dvc.lock: {output} recorded as {locked[output]}, its files hash to {dvc_md5(root / output)}")
        digest = locked[output]
        cached = root / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
        if not cached.is_file():
            problems.append(f"{cached}: missing from the DVC cache")
        elif digest.endswith(".dir"):
            for entry in json.loads(cached.read_text()):
                if not (cached.parent.parent / entry["md5"][:2] / entry["md5"][2:]).is_file():
                    problems.append(f"{output}/{entry['relpath']}: missing from the DVC cache")
    return problems


def _patterns() -> tuple[str, ...]:
    from orchestration.resources import dvc_ignore_patterns

    return dvc_ignore_patterns(REPO)


def store_problems(root: Path, outputs: Sequence[str] = ()) -> list[str]:
    return mlflow_problems(root) + dagster_problems(root) + dvc_problems(root, outputs)
