"""Fixtures of the orchestration tests: a quick temporary Dagster instance, and the tiny profile's params."""

import copy

import dagster as dg
import pytest

from orchestration.demo import instance_settings
from orchestration.profile import PARAMS_FILE, read_params

TINY = "tiny"


@pytest.fixture
def dagster_instance(tmp_path):
    # The same storage settings `grove demo` writes into its dagster.yaml: one consolidated event
    # log instead of a SQLite file per run (which costs about a second of schema creation a run).
    with dg.instance_for_test(overrides=instance_settings(tmp_path / "dagster_home", gpu_slots=1)) as instance:
        yield instance


def tiny_params() -> dict:
    """The demo profile shrunk to seconds of work: 13 clips of 1.6 s (8 annotated frames), two shards, one size, one step;
    2-clip VidSTG and ActivityNet-Entities stand-ins."""
    params = copy.deepcopy(read_params(PARAMS_FILE)["demo"])
    params["synthetic"].update(pool_clips=8, train_clips=2, val_clips=1, test_clips=2, seconds=1.6)
    params["annotation"]["shard_size"] = 8
    for benchmark in ("vidstg", "anet_entities"):  # the stand-ins of VidSTG and ActivityNet-Entities: 2 clips each
        params["benchmarks"][benchmark]["clips"] = 2
    params["scaling"] = {"pool_split": "pool", "sizes": ["s"], "size_clips": {"s": 4}}
    for phase in ("pretrain", "finetune"):
        params["model"][phase] = {"max_steps": 1, "batch_size": 1, "warmup_steps": 1, "log_every": 1, "num_workers": 0}
    # a training of seconds: system metrics sampled often enough that each training run has some
    params["mlflow"] = {"system_metrics_interval_s": 0.2}
    return params


# `tiny_profile` and `tiny_demo` (the lineage of these params) are in tests/conftest.py: one run a session,
# shared by every test folder (tests/browser opens its UIs).
