"""Two simulated nodes x two ranks on this machine (gloo, CPU), sharded (FSDP2) with the paper's
frozen/trainable split and gradient checkpointing: the loss curve of one process with the same
global batch; killed with SIGKILL after a checkpoint at a random step, re-launched, it resumes from
its sharded checkpoint and ends on the same weights; a sharded step converts to a single file.

Each node is `python -m grove.distributed --nproc-per-node 2 -m grove.cli train ...` with the
GROVE_NNODES / GROVE_NODE_RANK / GROVE_MASTER_ADDR / GROVE_MASTER_PORT a launcher would set: it
starts `torchrun --nnodes 2 --node-rank R` with a static rendezvous on 127.0.0.1.

Tolerances (measured in brackets). One process with FSDP equals the DDP path bit for bit, and
resumes from a sharded checkpoint bit for bit (checked while writing this); four ranks reduce-scatter
their gradients, summing in another order than one process accumulating four micro-batches, so
gradients differ in their last bits (~1e-7 relative):
- losses: relative 1e-5 [1e-6];
- weights (2.4M trainable elements): every one within one AdamW step, lr = 1e-3 [5.6e-4]; all but
  1 in 10^4 within 1e-4 [8 elements]; the median within 1e-6 [3e-8]. AdamW's update m / (sqrt(v) + eps) is normalised, so a gradient that is
  itself rounding noise (near-zero entries: rarely seen token embeddings, cancelling projections)
  moves its weight by up to lr whatever the noise's size; DDP's all-reduce happens to keep the
  sequential order here, FSDP2's reduce-scatter does not.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader
from typer.testing import CliRunner

from grove.checkpoint import is_sharded
from grove.cli import app
from grove.train import TrainConfig, latest_checkpoint, load_model, train
from tests.train.fixtures import make_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[2]
STEPS = 4
NODES, RANKS_PER_NODE = 2, 2
OVERRIDES = {"freezing": "paper"}  # frozen backbones and LLM layers, trainable adapters, heads and embeddings


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("multinode_data"), {"train": 8, "val": 3}, seed=5)


def config(dataset_dir, out, **changes) -> TrainConfig:
    base = dict(train_data=str(dataset_dir), out_dir=str(out), max_steps=STEPS, batch_size=NODES * RANKS_PER_NODE, lr=1e-3,
                warmup_steps=2, log_every=1, eval_every=STEPS, save_every=1, num_workers=0, seed=3, model_overrides=OVERRIDES)
    return TrainConfig(**{**base, **changes})


def train_losses(out: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["train/loss"] for line in lines if "train/loss" in line}


@pytest.fixture(scope="module")
def one_process(dataset_dir, tmp_path_factory):
    """The reference: one process (DDP's path, no process group), the same global batch by accumulation."""
    out = tmp_path_factory.mktemp("one_process")
    train(config(dataset_dir, out))
    return out


def assert_same_weights(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], lr: float = 1e-3) -> None:
    """The tolerance of the module's docstring: every element within one AdamW step, nearly all far closer."""
    assert ours.keys() == theirs.keys()
    differences = torch.cat([(ours[k] - theirs[k]).abs().flatten() for k in sorted(theirs)])
    assert float(differences.max()) <= lr, {k: float((ours[k] - theirs[k]).abs().max()) for k in theirs}
    assert float((differences > 1e-4).float().mean()) < 1e-4
    assert float(differences.median()) < 1e-6


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_nodes(c: TrainConfig, logs: Path) -> list[subprocess.Popen]:
    """Both nodes of the run, as a Slurm or Kubernetes launcher would start them."""
    args = ["train", "--train", c.train_data, "--out", c.out_dir, "--max-steps", str(c.max_steps), "--batch-size", str(c.batch_size),
            "--lr", str(c.lr), "--warmup-steps", str(c.warmup_steps), "--log-every", str(c.log_every), "--eval-every", str(c.eval_every),
            "--save-every", str(c.save_every), "--workers", str(c.num_workers), "--seed", str(c.seed),
            "--strategy", "fsdp", "--gradient-checkpointing", *[f"--override={k}={v}" for k, v in c.model_overrides.items()]]
    port = free_port()
    nodes = []
    for node in range(NODES):
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GROVE_NNODES": str(NODES), "GROVE_NODE_RANK": str(node),
               "GROVE_MASTER_ADDR": "127.0.0.1", "GROVE_MASTER_PORT": str(port)}
        command = [sys.executable, "-m", "grove.distributed", "--nproc-per-node", str(RANKS_PER_NODE), "-m", "grove.cli", *args]
        with open(logs.with_suffix(f".node{node}.log"), "w") as log:
            nodes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    return nodes


def node_logs(logs: Path) -> str:
    return "\n".join(logs.with_suffix(f".node{n}.log").read_text()[-3000:] for n in range(NODES))


def kill_nodes(nodes: list[subprocess.Popen]) -> None:
    """SIGKILL every process of both nodes at once (torchrun puts its workers in sessions of their own)."""
    processes = [p for node in nodes for p in [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]]
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)


def wait(nodes: list[subprocess.Popen], logs: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    for node in nodes:
        node.wait(timeout=max(1.0, deadline - time.time()))
    assert all(node.returncode == 0 for node in nodes), node_logs(logs)


def test_two_nodes_sharded_match_one_process_and_resume_after_a_kill(one_process, dataset_dir, tmp_path):
    out = tmp_path / "sharded"
    run = config(dataset_dir, out)
    kill_after = random.SystemRandom().randint(1, STEPS - 2)
    logs = tmp_path / "killed"
    nodes = launch_nodes(run, logs)
    pointer = out / "checkpoints" / "last.json"
    deadline = time.time() + 240
    while time.time() < deadline and all(node.poll() is None for node in nodes):
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= kill_after:
            break
        time.sleep(0.05)
    assert all(node.poll() is None for node in nodes), f"kill after step {kill_after}: a node ended first\n{node_logs(logs)}"
    kill_nodes(nodes)
    killed_at = json.loads(pointer.read_text())["step"]
    assert killed_at < STEPS and is_sharded(latest_checkpoint(out)), f"kill after step {kill_after}"

    logs = tmp_path / "resumed"
    wait(launch_nodes(run, logs), logs)
    assert f"resumed from {out / 'checkpoints' / f'step_{killed_at:08d}'} (step {killed_at})" in node_logs(logs)
    losses, expected = train_losses(out), train_losses(one_process)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses == pytest.approx(expected, rel=1e-5), f"killed after step {killed_at}"

    # the last step is also written whole; the others are sharded, one file per rank
    final = out / "checkpoints" / f"step_{STEPS:08d}"
    previous = out / "checkpoints" / f"step_{STEPS - 1:08d}"
    assert (final / "model.safetensors").is_file() and not (previous / "model.safetensors").exists()
    assert len(list((previous / "sharded").glob("*.distcp"))) == NODES * RANKS_PER_NODE
    for step_folder, name in ((final, "model.safetensors"), (out / "best", "model.safetensors")):
        assert_same_weights(load_file(str(step_folder / name)), load_file(str(one_process / step_folder.relative_to(out) / name)))

    # `grove convert-checkpoint`: a sharded step as the single-file format, without a process group
    converted = tmp_path / "converted"
    outcome = CliRunner().invoke(app, ["convert-checkpoint", str(previous), "--out", str(converted)])
    assert outcome.exit_code == 0, outcome.output
    weights = load_file(str(converted / "model.safetensors"))
    assert_same_weights(weights, load_file(str(one_process / previous.relative_to(out) / "model.safetensors")))
    assert json.loads((converted / "state.json").read_text())["step"] == STEPS - 1
    # inference and --init read a sharded step as it is
    loaded = load_model(previous).trainable_state_dict()
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[k], weights[k]) for k in weights)

    # the paper's split survived sharding: the shards hold the trainable weights (those one process
    # saves) and optimiser state for them alone
    keys = FileSystemReader(str(previous / "sharded")).read_metadata().state_dict_metadata
    optimised = {key[len("optim.state."):].rsplit(".", 1)[0] for key in keys if key.startswith("optim.state.")}
    assert optimised == set(weights) == {key[len("model."):] for key in keys if key.startswith("model.")}
    assert not any(name.startswith(("llm.model.layers.", "global_encoder.clip.encoder.")) for name in optimised)
