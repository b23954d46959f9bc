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
