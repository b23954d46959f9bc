"""Training curves as DVC plots: grove.train writes train_curve.json / val_curve.json beside metrics.jsonl
(the same records, in a format `dvc plots` reads), kept equal to it across a resume; dvc.yaml's `plots:`
name them for every pre-training size and fine-tuned variant of the demo profile."""

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from grove.train import CURVE_FILES, TrainConfig, curve_rows, train
from orchestration.defs.common import FT_ONLY
from orchestration.profile import REPO_ROOT, load_profile
from orchestration.resources import LAYOUT
from tests.train.fixtures import make_dataset

DVC = str(REPO_ROOT / ".venv-dvc" / "bin" / "dvc")
STEPS = 6


class Interrupted(RuntimeError):
    """What the test's callback raises to stop a training run part-way (as a kill would)."""


def config(dataset: Path, out: Path) -> TrainConfig:
    return TrainConfig(train_data=str(dataset), out_dir=str(out), max_steps=STEPS, batch_size=1, lr=1e-3, warmup_steps=1,
                       log_every=1, eval_every=3, save_every=2, num_workers=0, seed=3)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("curve_data"), {"train": 3, "val": 1}, seed=2)


def test_curve_files_hold_metrics_jsonl_and_survive_a_resume(dataset, tmp_path):
    whole = tmp_path / "whole"
    train(config(dataset, whole))
    trained, validated = (json.loads((whole / CURVE_FILES[kind]).read_text()) for kind in ("train", "val"))
    assert [row["step"] for row in trained] == list(range(1, STEPS + 1)) and [row["step"] for row in validated] == [3, 6]
    assert trained == curve_rows(records(whole), "train") and validated == curve_rows(records(whole), "val")
    assert {"train_loss", "train_lr", "train_grad_norm"} <= set(trained[0]) and "val_loss" in validated[0]
    assert all(set(row) == set(trained[0]) for row in trained)  # DVC plots a list only when its rows share fields
    assert not any(name.startswith("perf") for row in trained for name in row)  # speeds never go into OUT

    # a run stopped after logging step 5 (its last checkpoint: step 4), then run again: it resumes at step 4,
    # cuts metrics.jsonl back to it and rewrites the curves, which end as the uninterrupted run's
    cut = tmp_path / "cut"

    def stop_at_five(step: int, metrics: dict) -> None:
        if step == 5 and "train/loss" in metrics:
            raise Interrupted(step)

    with pytest.raises(Interrupted):
        train(config(dataset, cut), callback=stop_at_five)
    assert json.loads((cut / CURVE_FILES["train"]).read_text())[-1]["step"] == 5
    assert train(config(dataset, cut)).resumed_from_step == 4
    for kind in ("train", "val"):
        resumed, uninterrupted = (json.loads((out / CURVE_FILES[kind]).read_text()) for out in (cut, whole))
        assert [row["step"] for row in resumed] == [row["step"] for row in uninterrupted]
        assert resumed == curve_rows(records(cut), kind)
        for got, want in zip(resumed, uninterrupted):
            assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_curve_rows_fill_a_missing_metric_with_null():
    logged = [{"step": 1, "train/loss": 2.0, "train/l1": 0.5}, {"step": 1, "val/loss": 3.0}, {"step": 2, "train/loss": 1.0}]
    assert curve_rows(logged, "train") == [{"step": 1, "train_loss": 2.0, "train_l1": 0.5},
                                           {"step": 2, "train_loss": 1.0, "train_l1": None}]
    assert curve_rows(logged, "val") == [{"step": 1, "val_loss": 3.0}]


def training_plots() -> dict[str, dict]:
    """dvc.yaml's top-level plots that draw training curves: id -> definition."""
    plots = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["plots"]
    return {name: spec for plot in plots for name, spec in plot.items() if isinstance(spec.get("y"), dict)
            and any(Path(path).name in CURVE_FILES.values() for path in spec["y"])}


def test_dvc_yaml_plots_every_training_run_of_the_demo_profile():
    profile = load_profile("demo")
    demo = Path("runs/demo")
    expected = {demo / LAYOUT["pretrained"] / size / CURVE_FILES["train"] for size in profile.sizes}
    expected |= {demo / LAYOUT["finetuned"] / variant / name for variant in [*profile.sizes, FT_ONLY] for name in CURVE_FILES.values()}
    plotted = {Path(path) for spec in training_plots().values() for path in spec["y"]}
    assert plotted == expected
    assert all(spec["x"] == "step" for spec in training_plots().values())


def test_dvc_plots_show_draws_the_training_curves(dataset, tmp_path):
    """The project's plot definitions in a repository whose runs hold curve files (one fine-tuned variant missing:
    DVC names it among the errors and draws the others)."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{name: spec} for name, spec in training_plots().items()]}))
    paths = sorted({path for spec in training_plots().values() for path in spec["y"]})
    missing = next(path for path in paths if f"/{FT_ONLY}/" in path)
    curves = {kind: [{"step": s, f"{kind}_loss": 3.0 / s, f"{kind}_lr": 1e-3} for s in (1, 2)] for kind in ("train", "val")}
    for path in paths:
        if path != missing:
            (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / path).write_text(json.dumps(curves["train" if path.endswith(CURVE_FILES["train"]) else "val"]))
    shown = json.loads(subprocess.run([DVC, "plots", "show", "--json"], capture_output=True, text=True, cwd=tmp_path,
                                      check=True, env={"DVC_NO_ANALYTICS": "1", "PATH": "/usr/bin:/bin"}).stdout)
    drawn = {name: {point["filename"] for point in plot[0]["content"]["data"]["values"]} for name, plot in shown["data"].items()}
    assert set(drawn) == set(training_plots()) and all(drawn.values())
    assert [error["source"] for error in shown.get("errors", []) if "source" in error] == [missing] * len(
        [name for name, spec in training_plots().items() if missing in spec["y"]])
