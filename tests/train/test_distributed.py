"""Where a node stands in a multi-node run (Slurm, a Kubernetes indexed Job, GROVE_* variables), the
torchrun command it runs, and the launcher resource that starts it."""

from __future__ import annotations

import sys

import pytest

from grove.distributed import Rendezvous, RendezvousError, expand_nodelist, main, rendezvous_from_env, torchrun_command
from grove.train import even_shard


def test_slurm_host_lists_expand_in_order():
    assert expand_nodelist("gpu[01-03,07],login1") == ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]
    assert expand_nodelist("node-a") == ["node-a"]
    assert expand_nodelist("n[8-10]") == ["n8", "n9", "n10"]


def test_slurm_step_gives_nodes_rank_and_master():
    env = {"SLURM_JOB_ID": "4711", "SLURM_STEP_ID": "3", "SLURM_STEP_NODELIST": "gpu[05-08]", "SLURM_STEP_NUM_NODES": "4",
           "SLURMD_NODENAME": "gpu07", "SLURM_NODEID": "9", "SLURM_JOB_NODELIST": "gpu[01-08]", "SLURM_JOB_NUM_NODES": "8"}
    assert rendezvous_from_env(env) == Rendezvous(4, 2, "gpu05", 29503, "4711.3", "slurm")
    # a batch script outside srun: the job's nodes
    job = {"SLURM_JOB_ID": "4711", "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_JOB_NUM_NODES": "2"}
    assert rendezvous_from_env(job) == Rendezvous(2, 1, "gpu01", 29500, "4711.0", "slurm")
    # one node: no rendezvous, torchrun --standalone
    assert rendezvous_from_env({**job, "SLURM_NODEID": "0", "SLURM_JOB_NODELIST": "gpu01", "SLURM_JOB_NUM_NODES": "1"}) is None


def test_kubernetes_indexed_job_pod_finds_pod_zero():
    env = {"JOB_COMPLETION_INDEX": "3", "GROVE_NNODES": "4", "HOSTNAME": "grove-train-3", "GROVE_K8S_SUBDOMAIN": "grove-train"}
    assert rendezvous_from_env(env) == Rendezvous(4, 3, "grove-train-0.grove-train", 29500, "grove", "kubernetes")
    assert rendezvous_from_env({**env, "GROVE_MASTER_PORT": "30000"}).master_port == 30000
    with pytest.raises(RendezvousError, match="GROVE_NNODES"):
        rendezvous_from_env({k: v for k, v in env.items() if k != "GROVE_NNODES"})
    with pytest.raises(RendezvousError, match="HOSTNAME"):
        rendezvous_from_env({**env, "HOSTNAME": "laptop"})


def test_explicit_variables_and_their_errors():
    env = {"GROVE_NNODES": "2", "GROVE_NODE_RANK": "1", "GROVE_MASTER_ADDR": "10.0.0.5", "GROVE_MASTER_PORT": "29600"}
    assert rendezvous_from_env(env) == Rendezvous(2, 1, "10.0.0.5", 29600, "grove", "explicit")
    assert rendezvous_from_env({}) is None
    with pytest.raises(RendezvousError, match="node rank 2 outside 0..1"):
        rendezvous_from_env({**env, "GROVE_NODE_RANK": "2"})
    with pytest.raises(RendezvousError, match="GROVE_NNODES='two' is not an integer"):
        rendezvous_from_env({**env, "GROVE_NNODES": "two"})


def test_torchrun_commands_for_one_node_and_for_one_of_many():
    assert torchrun_command("py", "m", ["--x"], 8) == ["py", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=8", "-m", "m", "--x"]
    node = Rendezvous(2, 1, "gpu01", 29501, "42.0", "slurm")
    assert torchrun_command("py", "m", [], 4, node, max_restarts=3) == [
        "py", "-m", "torch.distributed.run", "--nnodes=2", "--node-rank=1", "--rdzv-backend=static",
        "--rdzv-endpoint=gpu01:29501", "--rdzv-id=42.0", "--nproc-per-node=4", "--max-restarts=3", "-m", "m"]


def test_the_node_entry_point_builds_torchrun_from_its_environment(monkeypatch, capsys):
    for name in ("GROVE_NNODES", "GROVE_NODE_RANK", "GROVE_MASTER_ADDR", "GROVE_MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GROVE_NNODES", "2")
    monkeypatch.setenv("GROVE_NODE_RANK", "0")
    assert main(["--nproc-per-node", "2", "--print", "-m", "grove.cli", "train", "--train", "d", "-m", "x"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--node-rank=0" in printed and "--rdzv-endpoint=127.0.0.1:29500" in printed
    assert printed[printed.index("grove.cli") - 1 :] == ["-m", "grove.cli", "train", "--train", "d", "-m", "x"]
    monkeypatch.setenv("GROVE_NODE_RANK", "5")
    assert main(["--print", "-m", "grove.cli"]) == 2


def test_launcher_starts_the_node_entry_point_on_every_node():
    from orchestration.resources import K8sLauncher, LauncherError, TorchrunLauncher

    srun = ["srun", "--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8"]
    launcher = TorchrunLauncher(prefix=srun, nnodes=2, nproc_per_node=8, max_restarts=2)
    assert launcher.command("orchestration.pipes_train") == [
        *srun, sys.executable, "-m", "grove.distributed", "--nproc-per-node=8", "--max-restarts=2", "-m", "orchestration.pipes_train"]
    one_node = TorchrunLauncher(prefix=["srun"], nproc_per_node=8).command("orchestration.pipes_train")
    assert one_node[1:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=8"]
    with pytest.raises(LauncherError, match="indexed Job"):
        K8sLauncher(image="grove", nnodes=2).run(None, module="orchestration.pipes_train")


def test_a_sharded_model_validates_the_same_number_of_clips_on_every_rank():
    clips = list("abcde")
    shares = [even_shard(clips, rank, 4) for rank in range(4)]
    assert shares == [(["a", "e"], 2), (["b", "a"], 1), (["c", "b"], 1), (["d", "c"], 1)]
    assert sorted(c for share, real in shares for c in share[:real]) == clips  # each clip counted once
    assert even_shard(["a"], 1, 2) == (["a"], 0) and even_shard([], 0, 2) == ([], 0)


def test_grove_train_multinode_relaunches_itself_as_this_node_of_the_job(monkeypatch):
    import grove.cli

    launched = []
    monkeypatch.setattr(grove.cli.subprocess, "call", lambda command: launched.append(command) or 0)
    monkeypatch.setattr(sys, "argv", ["grove", "train", "--train", "d", "--nproc", "4", "--multinode", "--override", "freezing=paper"])
    for name in ("GROVE_MASTER_ADDR", "GROVE_MASTER_PORT", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GROVE_NNODES", "3")
    monkeypatch.setenv("GROVE_NODE_RANK", "2")
    assert grove.cli._relaunch_with_torchrun(4, multinode=True) == 0
    (command,) = launched
    assert "--nnodes=3" in command and "--node-rank=2" in command and "--nproc-per-node=4" in command
    assert command[command.index("grove.cli") + 1 :] == ["train", "--train", "d", "--override", "freezing=paper"]
    assert grove.cli._overrides(["freezing=paper", "unfreeze=false", "video_pool=[8, 8, 9]"]) == {
        "freezing": "paper", "unfreeze": False, "video_pool": [8, 8, 9]}
    monkeypatch.delenv("GROVE_NNODES")
    with pytest.raises(Exception, match="no multi-node job"):
        grove.cli._relaunch_with_torchrun(4, multinode=True)
