"""`grove dvc track`: a profile that dvc.yaml does not describe (the paper profile; here the tiny one in a
temporary runs root) versions its annotation, subsets and checkpoints in its runs root's own git + DVC
repository and pushes them to a remote (a local folder here); the data comes back byte for byte from it."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestration.cli import app
from orchestration.data_versions import recorded_md5
from orchestration.defs.common import FT_ONLY
from orchestration.resources import DvcResource, PipelinePaths, dvc_md5


def write_outputs(paths: PipelinePaths, sizes: list[str]) -> list[Path]:
    """Small stand-ins of the outputs, in the lineage's layout, with a left-over temporary folder inside a
    checkpoint (what a killed writer leaves; .dvcignore keeps it out of hashes)."""
    def write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    pool = paths.path("annotation")
    write(pool / "clips.parquet", os.urandom(3000))
    write(pool / "shards" / "stage1" / "shard-00000" / "frames.parquet", os.urandom(2000))
    outputs = [pool]
    for size in sizes:
        write(paths.path("subsets", size) / "dataset.json", b'{"splits": {"pool": 4}}\n')
        write(paths.path("pretrained", size) / "checkpoints" / "step_00000001" / "model.safetensors", os.urandom(5000))
        outputs += [paths.path("subsets", size), paths.path("pretrained", size)]
    for variant in [*sizes, FT_ONLY]:
        folder = paths.path("finetuned", variant)
        write(folder / "best" / "model.safetensors", os.urandom(4000))
        write(folder / "train_curve.json", b'[{"step": 1, "train_loss": 2.5}]\n')
        write(folder / "checkpoints" / ".tmp-step_00000002" / "model.safetensors", b"half a file")
        outputs.append(folder)
    return outputs


def contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def track(profile, root: Path, *options: str):
    result = CliRunner().invoke(app, ["dvc", "track", "--profile", profile.name, "--params", str(profile.params_file), *options],
                                env={"GROVE_RUNS": str(root)})
    return result


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def identity(monkeypatch):
    for name in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(name, "grove-test")
    for name in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(name, "grove@test")


def test_track_push_then_pull_into_an_empty_cache_gives_the_same_bytes(tiny_profile, tmp_path, identity):
    root, remote = tmp_path / "runs", tmp_path / "remote"
    paths = PipelinePaths(root=str(root))
    outputs = write_outputs(paths, tiny_profile.sizes)
    before = {output: contents(output) for output in outputs}

    result = track(tiny_profile, root, "--remote", str(remote), "--push")
    assert result.exit_code == 0, result.output
    for output in outputs:
        relative = output.relative_to(root).as_posix()
        # the hash DVC recorded is the asset's data version (dvc_md5: what DvcResource gives with DVC off)
        assert recorded_md5(root / f"{relative}.dvc") == dvc_md5(output)
        assert f"{dvc_md5(output)}  {relative}" in result.output
    committed = git(root, "ls-files").split()
    assert {f"{o.relative_to(root).as_posix()}.dvc" for o in outputs} <= set(committed) and ".dvcignore" in committed
    assert not any(name.endswith((".parquet", ".safetensors")) for name in committed)  # the data is DVC's, not git's
    assert any(remote.rglob("*")), "nothing was pushed"

    shutil.rmtree(root / ".dvc" / "cache")
    for output in outputs:
        shutil.rmtree(output)
    DvcResource(repo=str(root), executable=DvcResource().dvc_executable()).run("pull", "--quiet")
    for output in outputs:
        kept = {name: data for name, data in before[output].items() if ".tmp-" not in name}
        assert contents(output) == kept, output


def test_a_new_checkpoint_is_a_new_version_and_the_old_one_checks_out_again(tiny_profile, tmp_path, identity):
    root = tmp_path / "runs"
    paths = PipelinePaths(root=str(root))
    write_outputs(paths, tiny_profile.sizes)
    assert track(tiny_profile, root).exit_code == 0
    weights = paths.path("finetuned", FT_ONLY) / "best" / "model.safetensors"
    first = weights.read_bytes()
    weights.write_bytes(os.urandom(4000))  # fine-tuned again
    result = track(tiny_profile, root)
    assert result.exit_code == 0, result.output
    assert len(git(root, "log", "--format=%H").split()) == 2
    changed = git(root, "diff", "--name-only", "HEAD~1", "HEAD").split()
    assert changed == [f"{paths.path('finetuned', FT_ONLY).relative_to(root).as_posix()}.dvc"]
    git(root, "checkout", "HEAD~1", "--", *changed)
    DvcResource(repo=str(root), executable=DvcResource().dvc_executable()).run("checkout", "--quiet", *changed)
    assert weights.read_bytes() == first


def test_track_says_when_nothing_is_there_to_version(tiny_profile, tmp_path):
    result = track(tiny_profile, tmp_path / "empty")
    assert result.exit_code == 1 and "none of the profile 'tiny' outputs to version exists yet" in result.output
