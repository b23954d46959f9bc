"""Fixtures of the orchestration tests: a temporary Dagster instance that is quick to write to."""

import dagster as dg
import pytest

from orchestration.demo import instance_settings


@pytest.fixture
def dagster_instance(tmp_path):
    # The same storage settings `grove demo` writes into its dagster.yaml: one consolidated event
    # log instead of a SQLite file per run (which costs about a second of schema creation a run).
    with dg.instance_for_test(overrides=instance_settings(tmp_path / "dagster_home", gpu_slots=1)) as instance:
        yield instance


import copy

import yaml

from orchestration.profile import PARAMS_FILE, load_profile, read_params

TINY = "tiny"


def tiny_params() -> dict:
    """The demo profile shrunk to seconds of work: a few short clips, shards of 4, two sizes, 2 steps."""
    params = copy.deepcopy(read_params(PARAMS_FILE)["demo"])
    params["synthetic"].update(pool_clips=10, train_clips=4, val_clips=2, test_clips=3, seconds=2.0)
    params["annotation"]["shard_size"] = 4
    params["scaling"] = {"pool_split": "pool", "sizes": ["s", "m"], "size_clips": {"s": 4, "m": None}}
    for phase in ("pretrain", "finetune"):
        params["model"][phase] = {"max_steps": 2, "batch_size": 1, "warmup_steps": 1, "log_every": 1, "num_workers": 0}
    return params


@pytest.fixture(scope="session")
def tiny_profile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("params")
    (folder / "params.yaml").write_text(yaml.safe_dump({"profile": TINY, TINY: tiny_params()}))
    return load_profile(TINY, folder / "params.yaml")
