"""Shared fixtures for the evaluation tests. One METEOR JVM serves the whole session (each costs seconds)."""

import pytest

from evaluation.captions import MeteorScorer


@pytest.fixture(scope="session")
def meteor():
    with MeteorScorer() as scorer:
        yield scorer
