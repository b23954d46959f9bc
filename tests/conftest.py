"""Shared fixtures. Test data is generated, never downloaded; nothing touches the network."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models on a shared 2-core machine: one thread avoids OpenMP oversubscription (40x slower here).
    Modules that want it: `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The tiny profile's lineage, here rather than in tests/orchestration so that one run a session serves every
# folder that needs it (tests/orchestration checks it, tests/browser opens it in the UIs); a fixture of a
# folder's conftest would run again for each folder that imports it.
@pytest.fixture(scope="session")
def tiny_profile(tmp_path_factory):
    """A params.yaml holding only the tiny profile (tests/orchestration/conftest.py's `tiny_params`), loaded."""
    import yaml

    from orchestration.profile import load_profile
    from tests.orchestration.conftest import TINY, tiny_params

    folder = tmp_path_factory.mktemp("params")
    (folder / "params.yaml").write_text(yaml.safe_dump({"profile": TINY, TINY: tiny_params()}))
    return load_profile(TINY, folder / "params.yaml")


@pytest.fixture(scope="session")
def tiny_demo(tiny_profile, tmp_path_factory):
    """`grove demo`'s whole lineage on the tiny profile, once for the session: (result, runs root)."""
    from orchestration.demo import run_demo

    root = tmp_path_factory.mktemp("runs")
    return run_demo(tiny_profile, root=root), root
