"""The data-scaling ablation as DVC experiments, metrics with git history, and plots from real runs.

A temporary git + DVC project holds the project's dvc.yaml, .gitignore and .dvcignore, the code its stages
depend on, and a params.yaml whose demo profile is the tiny one (seconds of work). The lineage's own stages
run there through `dvc exp run --set-param demo.scaling.sizes=[<size>]`: one experiment per pre-training
size, the second reusing everything upstream, a repeat restored from DVC's run cache.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from orchestration.profile import REPO_ROOT
from tests.orchestration.conftest import tiny_params

# about 3 CPU-minutes of `grove` commands on 2 cores (7 minutes wall with the machine four times over-committed)
pytestmark = [pytest.mark.slow, pytest.mark.java, pytest.mark.timeout(1500)]

DVC = str(REPO_ROOT / ".venv-dvc" / "bin" / "dvc")
SIZE_CLIPS = {"small": 4, "medium": 6, "full": None}
TARGETS = ("curve", "quality")  # the iGround lineage and the annotation quality (not VidSTG / ActivityNet-Entities)


def code_dependencies() -> list[str]:
    """The repository paths dvc.yaml's stages depend on that are code, not lineage outputs."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    return sorted({dep for stage in stages.values() for dep in stage.get("do", stage).get("deps", []) if not dep.startswith("runs/")})


def make_project(root: Path) -> dict[str, str]:
    """The temporary project, committed; returns the environment its DVC commands run in."""
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, root / name)
    # whole packages: a stage's child process started with `python -c` imports them from the working directory
    for package in sorted({dep.split("/")[0] for dep in code_dependencies()}):
        shutil.copytree(REPO_ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    params = tiny_params()
    params["scaling"].update(sizes=["small"], size_clips=SIZE_CLIPS)
    params["evaluation"]["bootstrap"]["resamples"] = 20  # intervals of 2 test clips: a few resamples show them
    for phase in ("pretrain", "finetune"):  # every value dvc.yaml's `grove train` commands pass
        params["model"][phase].update(max_steps=2, lr=1e-3, **({"eval_every": 2} if phase == "finetune" else {}))
    (root / "params.yaml").write_text(yaml.safe_dump({"profile": "demo", "demo": params}, sort_keys=False))
    # no GROVE_RUNS / GROVE_PARAMS: dvc.yaml's commands name the checkout's own runs/demo and params.yaml
    env = {name: value for name, value in os.environ.items() if name not in ("GROVE_RUNS", "GROVE_PARAMS", "GROVE_PROFILE")}
    env |= {"DVC_NO_ANALYTICS": "1", "PATH": f"{REPO_ROOT / '.venv' / 'bin'}:{Path(DVC).parent}:{os.environ['PATH']}"}
    for command in (["git", "init", "-q"], ["git", "config", "user.name", "grove-test"], ["git", "config", "user.email", "grove@test"],
                    [DVC, "init", "-q"], [DVC, "config", "core.analytics", "false"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "code, params, dvc.yaml"]):
        run(command, root, env)
    return env


def run(command: list[str], cwd: Path, env: dict[str, str], stderr: bool = False) -> str:
    """The command's output (with its log on stderr when asked); a failure shows both."""
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(command)}: {done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr if stderr else done.stdout


def experiment(root: Path, env: dict[str, str], name: str, size: str) -> str:
    return run([DVC, "exp", "run", "--name", name, "--set-param", f"demo.scaling.sizes=[{size}]", *TARGETS], root, env, stderr=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """exp-small (then committed to git) and exp-medium in the project; then exp-medium again in a clone of
    its last commit that shares its DVC cache: (root, env, {experiment: its log})."""
    root = tmp_path_factory.mktemp("dvc_project")
    env = make_project(root)
    logs = {"exp-small": experiment(root, env, "exp-small", "small")}
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "the small pre-training's metrics"], root, env)
    logs["exp-medium"] = experiment(root, env, "exp-medium", "medium")
    clone = tmp_path_factory.mktemp("dvc_clone") / "project"
    run(["git", "clone", "-q", str(root), str(clone)], root, env)
    run([DVC, "cache", "dir", "--local", str(root / ".dvc" / "cache")], clone, env)
    logs["exp-medium-restored"] = experiment(clone, env, "exp-medium-restored", "medium")
    assert (clone / "runs" / "demo" / "reports" / "data_scaling.json").is_file()  # the clone's curve, in the clone
    return root, env, logs


def experiments_shown(root: Path, env: dict[str, str]) -> dict[str, dict]:
    """`dvc exp show --json --all-commits`: experiment name -> its `data` (params, metrics)."""
    shown = json.loads(run([DVC, "exp", "show", "--json", "--all-commits"], root, env))
    found = {}
    for commit in shown:
        for group in commit.get("experiments") or []:
            for rev in group["revs"]:
                found[rev["name"]] = rev["data"]
    return found


def test_exp_show_compares_the_sizes_by_their_params_and_metrics(project):
    root, env, _ = project
    found = experiments_shown(root, env)
    assert {"exp-small", "exp-medium"} <= set(found)
    for name, size in (("exp-small", "small"), ("exp-medium", "medium")):
        params = found[name]["params"]["params.yaml"]["data"]["demo"]["scaling"]
        assert params["sizes"] == [size] and params["size_clips"][size] == SIZE_CLIPS[size]
        metrics = found[name]["metrics"]
        ours, ft_only = (metrics[f"runs/demo/metrics/iground/{variant}.json"]["data"] for variant in (size, "ft_only"))
        assert {"CIDEr", "METEOR", "AP50", "Recall"} <= set(ours["metrics"]) and "CIDEr" in ft_only["metrics"]
        other = "medium" if size == "small" else "small"
        assert f"runs/demo/metrics/iground/{other}.json" not in metrics  # each experiment holds its own size
        assert "runs/demo/reports/annotation_quality.json" in metrics


def test_a_second_size_reuses_the_lineage_and_the_run_cache_restores_it_elsewhere(project):
    _, _, logs = project
    assert "Running stage 'pretrain@medium'" in logs["exp-medium"]
    for upstream in ("annotate", "iground", "finetune_ft_only", "pretrain@small"):
        assert f"Running stage '{upstream}'" not in logs["exp-medium"], upstream
    # a checkout without the outputs: the run cache that the runs above filled restores the medium size's
    # stages; only stages without cached outputs run again (seconds: the videos from their seed, the curve
    # from the sizes whose subsets this checkout holds)
    restored = logs["exp-medium-restored"]
    for stage in ("subset@medium", "pretrain@medium", "finetune@medium", "predict@medium", "evaluate@medium"):
        assert f"Stage '{stage}' is cached - skipping run" in restored, stage
    ran = {line.split("'")[1] for line in restored.splitlines() if line.startswith("Running stage '")}
    assert ran <= {"synthesize", "curve"}, restored[-3000:]


def test_metric_files_are_committed_to_git_and_diff_across_commits(project):
    root, env, _ = project
    committed = set(run(["git", "ls-tree", "-r", "--name-only", "HEAD"], root, env).split())
    demo = "runs/demo/"
    assert {demo + "metrics/iground/small.json", demo + "metrics/iground/ft_only.json",
            demo + "reports/annotation_quality.json", demo + "reports/data_scaling.json"} <= committed
    assert not any(path.startswith((demo + "checkpoints", demo + "subsets", demo + "annotation")) for path in committed)
    for path in committed & {demo + "metrics/iground/small.json", demo + "reports/annotation_quality.json"}:
        text = (root / path).read_text()
        assert len(text) < 64_000 and "seconds" not in text and "time" not in json.loads(text)
    diff = json.loads(run([DVC, "metrics", "diff", "HEAD", "exp-medium", "--json"], root, env))
    assert diff[demo + "metrics/iground/small.json"]["metrics.CIDEr"]["new"] is None
    assert diff[demo + "metrics/iground/medium.json"]["metrics.CIDEr"]["old"] is None
    assert diff[demo + "metrics/iground/medium.json"]["metrics.CIDEr"]["new"] is not None


def test_plots_show_draws_the_runs_training_curves_and_the_scaling_curve(project):
    root, env, _ = project
    shown = json.loads(run([DVC, "plots", "show", "--json"], root, env))
    files = {name: {point.get("filename") for point in plot[0]["content"]["data"]["values"]} for name, plot in shown["data"].items()
             if plot and plot[0].get("type") == "vega"}
    assert any("small" in name for name in files["pre-training loss"])
    assert any("ft_only" in name for name in files["fine-tuning loss"])
    assert files["runs/demo/reports/data_scaling.json"]
