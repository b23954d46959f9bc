"""Ranks across nodes, and sharding the model over them.

Multi-node runs: every node runs `python -m grove.distributed --nproc-per-node N -m MODULE ARGS...`
(under `srun`, or as one pod of a Kubernetes indexed Job). It reads where it stands from the
launcher's environment (`rendezvous_from_env`) and replaces itself with `torchrun`, whose rendezvous
endpoint is the master node: rank 0 lives there, node ranks are the launcher's.

- Slurm: inside `srun`, the step's nodes (`SLURM_STEP_NODELIST`, `SLURM_STEP_NUM_NODES`, this node's
  place in it by `SLURMD_NODENAME`), else the job's (`SLURM_JOB_NODELIST`, `SLURM_JOB_NUM_NODES`,
  `SLURM_NODEID`); the master is the first host; the job and step ids name the run, and the step id
  offsets the port (two trainings in one allocation).
- Kubernetes indexed Job: `JOB_COMPLETION_INDEX` is the node rank; `GROVE_NNODES` the Job's
  completions (the pod cannot see them); the master is pod 0, `<job>-0.<GROVE_K8S_SUBDOMAIN>`
  (the headless Service that gives indexed pods their host names), read from `HOSTNAME`.
- Anywhere: `GROVE_NNODES`, `GROVE_NODE_RANK`, `GROVE_MASTER_ADDR`; `GROVE_MASTER_PORT` and
  `GROVE_MASTER_ADDR` also override what Slurm or Kubernetes give.

Sharding (`strategy: fsdp`): FSDP2's `fully_shard` on every transformer block (the layers that
transformers lets checkpoint: LLM, CLIP and SAM blocks), then on the whole model. Parameters keep
their `requires_grad`: frozen ones are sharded (memory) but get no gradient and no optimiser state.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:  # torch is imported where it is used: a node's entry point only starts torchrun
    import torch
    from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_PORT = 29500


class RendezvousError(ValueError):
    """The launcher's environment does not say where this node stands."""


@dataclass(frozen=True)
class Rendezvous:
    """Where this node stands in a multi-node run: torchrun's static rendezvous at `master_addr:master_port`."""

    nnodes: int
    node_rank: int
    master_addr: str
    master_port: int = DEFAULT_PORT
    run_id: str = "grove"
    source: str = "explicit"

    def __post_init__(self) -> None:
        if self.nnodes < 1 or not 0 <= self.node_rank < self.nnodes:
            raise RendezvousError(f"{self.source}: node rank {self.node_rank} outside 0..{self.nnodes - 1}")

    def torchrun_args(self) -> list[str]:
        return [
            f"--nnodes={self.nnodes}",
            f"--node-rank={self.node_rank}",
            "--rdzv-backend=static",
            f"--rdzv-endpoint={self.master_addr}:{self.master_port}",
            f"--rdzv-id={self.run_id}",
        ]


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list (`gpu[01-03,07],login1`) as host names, in order."""
    hosts: list[str] = []
    for match in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?(?:,|$)", nodelist):
        prefix, ranges = match.group(1), match.group(2)
        if ranges is None:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            first, _, last = part.partition("-")
            if not last:
                hosts.append(prefix + first)
                continue
            hosts += [prefix + str(i).zfill(len(first)) for i in range(int(first), int(last) + 1)]
    return hosts


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except KeyError as exc:
        raise RendezvousError(f"environment variable {name} is not set") from exc
    except ValueError as exc:
        raise RendezvousError(f"environment variable {name}={env[name]!r} is not an integer") from exc


def _slurm(env: Mapping[str, str]) -> Rendezvous:
    """Inside `srun` the step's nodes (a step may use part of the allocation), else the job's."""
    in_step = "SLURM_STEP_NODELIST" in env
    nodelist = env.get("SLURM_STEP_NODELIST") if in_step else env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    hosts = expand_nodelist(nodelist or "")
    if not hosts:
        raise RendezvousError("SLURM_STEP_NODELIST / SLURM_JOB_NODELIST is empty: cannot tell the master node")
    if in_step:
        nnodes = int(env.get("SLURM_STEP_NUM_NODES", len(hosts)))
        name = env.get("SLURMD_NODENAME")
        node_rank = hosts.index(name) if name in hosts else _int(env, "SLURM_NODEID")
    else:
        nnodes = _int(env, "SLURM_JOB_NUM_NODES" if "SLURM_JOB_NUM_NODES" in env else "SLURM_NNODES")
        node_rank = _int(env, "SLURM_NODEID")
    # two steps of one allocation (two trainings at once) must not share a port on the master node
    step = env.get("SLURM_STEP_ID", "0")
    port = DEFAULT_PORT + (int(step) % 1000 if step.isdigit() else 0)
    run_id = f"{env.get('SLURM_JOB_ID', 'grove')}.{step}"
    return Rendezvous(nnodes, node_rank, hosts[0], port, run_id, source="slurm")


def _kubernetes(env: Mapping[str, str]) -> Rendezvous:
    index = _int(env, "JOB_COMPLETION_INDEX")
    nnodes = _int(env, "GROVE_NNODES")
    master = env.get("GROVE_MASTER_ADDR")
    if master is None:
        hostname = env.get("HOSTNAME", "")
        match = re.fullmatch(r"(.+)-(\d+)", hostname)
        if match is None:
            raise RendezvousError(f"HOSTNAME={hostname!r} is not an indexed Job pod name (<job>-<index>); set GROVE_MASTER_ADDR")
        subdomain = env.get("GROVE_K8S_SUBDOMAIN")
        master = f"{match.group(1)}-0" + (f".{subdomain}" if subdomain else "")
    return Rendezvous(nnodes, index, master, run_id=env.get("GROVE_RUN_ID", "grove"), source="kubernetes")


def rendezvous_from_env(env: Mapping[str, str] | None = None) -> Rendezvous | None:
    """This node's place from the launcher's environment, or None for a one-node run."""
    env = os.environ if env is None else env
    if "GROVE_NNODES" in env and "GROVE_NODE_RANK" in env:
        found = Rendezvous(_int(env, "GROVE_NNODES"), _int(env, "GROVE_NODE_RANK"),
                           env.get("GROVE_MASTER_ADDR", "127.0.0.1"), run_id=env.get("GROVE_RUN_ID", "grove"))
    elif "SLURM_NODEID" in env or "SLURM_STEP_NODELIST" in env:
        found = _slurm(env)
    elif "JOB_COMPLETION_INDEX" in env:
        found = _kubernetes(env)
    else:
        return None
    changes = {}
    if "GROVE_MASTER_ADDR" in env:
        changes["master_addr"] = env["GROVE_MASTER_ADDR"]
    if "GROVE_MASTER_PORT" in env:
        changes["master_port"] = _int(env, "GROVE_MASTER_PORT")
    found = Rendezvous(**{**found.__dict__, **changes}) if changes else found
    return found if found.nnodes > 1 else None


def torchrun_command(
    python: str, module: str, args: Sequence[str], nproc_per_node: int, rendezvous: Rendezvous | None = None, max_restarts: int = 0
) -> list[str]:
    """`python -m torch.distributed.run ... -m module args`: one node (`--standalone`) or this node of many."""
    placement = rendezvous.torchrun_args() if rendezvous is not None else ["--standalone"]
    restarts = [f"--max-restarts={max_restarts}"] if max_restarts else []
    return [python, "-m", "torch.distributed.run", *placement, f"--nproc-per-node={nproc_per_node}", *restarts, "-m", module, *args]


# ------------------------------------------------------------------------------------------- FSDP


def block_modules(model: "nn.Module") -> list["nn.Module"]:
    """The transformer blocks (transformers' checkpointable layers), outermost first: FSDP's units."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [module for module in model.modules() if isinstance(module, GradientCheckpointingLayer)]


def shard_model(model: "nn.Module", device: "torch.device") -> "nn.Module":
    """FSDP2 over every rank of the default process group: each block a unit, the rest the root unit.

    Parameters a rank's forward skips (the box decoder on a clip without phrases) still join the
    reduce-scatter as zeros, so ranks never disagree on what they reduce (DDP's find_unused_parameters).
    """
    import torch
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for block in reversed(block_modules(model)):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.set_reduce_scatter_unused_params(True)
    return model


def gradient_sync(model: "nn.Module", sync: bool) -> AbstractContextManager:
    """Skip the gradient reduction of a micro-batch that is not the step's last (DDP `no_sync`, FSDP2's switch)."""
    import torch

    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return nullcontext() if sync else model.no_sync()
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(sync)
    return nullcontext()


def full_value(tensor: "torch.Tensor") -> "torch.Tensor":
    """A DTensor's whole value (a collective), or the tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


# ------------------------------------------------------------------------------------- launch CLI


def _parse(argv: Sequence[str]) -> tuple[argparse.Namespace, str, list[str]]:
    """The entry point's own options, then `-m MODULE` and the module's arguments (passed on untouched,
    whatever they look like: split at the first `-m`, not parsed)."""
    if "-m" not in argv or argv.index("-m") == len(argv) - 1:
        raise SystemExit("usage: python -m grove.distributed [--nproc-per-node N] [--max-restarts K] [--print] -m MODULE [ARGS...]")
    split = list(argv).index("-m")
    parser = argparse.ArgumentParser(
        prog="python -m grove.distributed",
        description="Run torchrun on this node of a multi-node job (Slurm, Kubernetes indexed Job or GROVE_* variables).",
    )
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("--max-restarts", type=int, default=0, help="torchrun restarts of failed workers (they resume from the last checkpoint)")
    parser.add_argument("--print", action="store_true", help="print the torchrun command instead of running it")
    return parser.parse_args(argv[:split]), argv[split + 1], list(argv[split + 2 :])


def main(argv: Sequence[str] | None = None) -> int:
    options, module, args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        rendezvous = rendezvous_from_env()
    except RendezvousError as exc:
        logger.error("grove.distributed: %s", exc)
        return 2
    command = torchrun_command(sys.executable, module, args, options.nproc_per_node, rendezvous, options.max_restarts)
    if options.print:
        sys.stdout.write(" ".join(command) + "\n")
        return 0
    where = "standalone" if rendezvous is None else f"node {rendezvous.node_rank} of {rendezvous.nnodes} ({rendezvous.source})"
    logger.info("%s: %s", where, " ".join(command))
    # exec: a signal to this process (srun cancelling the step, a pod deleted) reaches torchrun itself
    os.execv(sys.executable, command)
    return 0  # not reached


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    sys.exit(main())
