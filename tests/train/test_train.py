"""The trainer on the tiny model: checkpoints, resume after a kill, DDP = one process, fine-tuning."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from grove.data.schema import clip_table, read_clips, write_clips
from grove.train import TrainConfig, latest_checkpoint, load_model, lr_factor, resolve_checkpoint, train
from tests.train.fixtures import make_dataset

REPO = Path(__file__).resolve().parents[2]
STEPS = 6


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("train_data"), {"train": 6, "val": 2}, seed=1)


def run_config(dataset_dir, out, **changes):
    base = dict(
        train_data=str(dataset_dir), out_dir=str(out), max_steps=STEPS, batch_size=2, lr=1e-3, warmup_steps=2,
        log_every=1, eval_every=3, save_every=2, num_workers=0, seed=7,
    )
    base.update(changes)
    return TrainConfig(**base)


def cli_args(config: TrainConfig) -> list[str]:
    return [
        "train", "--train", config.train_data, "--out", config.out_dir, "--max-steps", str(config.max_steps),
        "--batch-size", str(config.batch_size), "--lr", str(config.lr), "--warmup-steps", str(config.warmup_steps),
        "--log-every", str(config.log_every), "--eval-every", str(config.eval_every),
        "--save-every", str(config.save_every), "--workers", str(config.num_workers), "--seed", str(config.seed),
    ]


def train_losses(out: Path) -> dict[int, float]:
    """Step -> training loss from metrics.jsonl (a re-logged step keeps its last value)."""
    losses = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "train/loss" in record:
            losses[record["step"]] = record["train/loss"]
    return losses


@pytest.fixture(scope="module")
def reference(dataset_dir, tmp_path_factory):
    """One uninterrupted run, with the metrics the callback received."""
    out = tmp_path_factory.mktemp("reference")
    seen = []
    result = train(run_config(dataset_dir, out, num_workers=2), callback=lambda step, m: seen.append((step, m)))
    return out, result, seen


def test_schedule_warms_up_then_decays_to_zero():
    factors = [lr_factor(s, 4, 10) for s in range(10)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4:] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert lr_factor(10, 4, 10) == 0.0


def test_run_writes_checkpoints_best_and_metrics(reference):
    out, result, seen = reference
    assert result.steps == STEPS and result.resumed_from_step == 0
    assert Path(result.last_checkpoint) == latest_checkpoint(out) == out / "checkpoints" / "step_00000006"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000004", "step_00000006"]
    best_state = json.loads((out / "best" / "state.json").read_text())
    assert best_state["step"] in (3, 6) and best_state["val/grounding"] == pytest.approx(result.best_val_loss)
    assert resolve_checkpoint(out) == out / "best"
    # the callback got every step's training losses and both validations, with rates
    train_steps = [step for step, m in seen if "train/loss" in m]
    assert train_steps == list(range(1, STEPS + 1))
    assert {"train/ce", "train/giou", "train/l1", "train/tobj", "train/lr", "perf/steps_per_s"} <= set(seen[0][1])
    val_steps = [step for step, m in seen if "val/loss" in m]
    assert val_steps == [3, 6]
    assert all(np.isfinite(v) for _, m in seen for v in m.values())
    # the learning rate followed warm-up then decay
    lrs = [m["train/lr"] for _, m in seen if "train/lr" in m]
    assert lrs == pytest.approx([1e-3 * lr_factor(s, 2, STEPS) for s in range(1, STEPS + 1)])
    # the trainer state is plain tensors and containers
    state = torch.load(out / "checkpoints" / "step_00000006" / "trainer_state.pt", weights_only=True)
    assert state["step"] == STEPS and state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.0


def test_checkpoint_holds_the_trainable_weights_and_reloads(reference):
    out, _, _ = reference
    model = load_model(out / "checkpoints" / "step_00000006")
    weights = load_file(str(out / "checkpoints" / "step_00000006" / "model.safetensors"))
    assert set(weights) == set(model.trainable_parameter_names())
    for name, tensor in model.trainable_state_dict().items():
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0)


def test_killed_run_resumes_on_the_same_loss_curve(reference, dataset_dir, tmp_path):
    ref_out, _, _ = reference
    out = tmp_path / "killed"
    config = run_config(dataset_dir, out)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "grove.cli", *cli_args(config)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = out / "checkpoints" / "last.json"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(pointer.read_text())["step"]
    assert killed_at < STEPS
    result = train(config)
    assert result.resumed_from_step == killed_at and result.steps == STEPS
    expected = train_losses(ref_out)
    assert train_losses(out) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    resumed = load_file(str(out / "checkpoints" / "step_00000006" / "model.safetensors"))
    uninterrupted = load_file(str(ref_out / "checkpoints" / "step_00000006" / "model.safetensors"))
    for name in uninterrupted:
        torch.testing.assert_close(resumed[name], uninterrupted[name], rtol=1e-4, atol=1e-6)


def test_two_ddp_ranks_match_one_process(reference, dataset_dir, tmp_path):
    ref_out, _, _ = reference
    out = tmp_path / "ddp"
    config = run_config(dataset_dir, out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "grove.cli", *cli_args(config), "--nproc", "2"]
    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert train_losses(out) == pytest.approx(train_losses(ref_out), rel=1e-4, abs=1e-5)
    ddp = load_file(str(out / "checkpoints" / "step_00000006" / "model.safetensors"))
    single = load_file(str(ref_out / "checkpoints" / "step_00000006" / "model.safetensors"))
    for name in single:
        torch.testing.assert_close(ddp[name], single[name], rtol=1e-3, atol=1e-5)


def test_fine_tuning_starts_from_the_init_checkpoint(reference, dataset_dir, tmp_path):
    ref_out, _, _ = reference
    result = train(run_config(dataset_dir, tmp_path / "ft", init=str(ref_out), max_steps=0))
    exported = load_file(str(Path(result.last_checkpoint) / "model.safetensors"))
    initial = load_file(str(ref_out / "best" / "model.safetensors"))
    assert exported.keys() == initial.keys()
    for name in initial:
        assert torch.equal(exported[name], initial[name])


def test_bad_data_is_named_before_any_training(dataset_dir, tmp_path):
    with pytest.raises(ValueError, match="no split 'pool'"):
        train(run_config(dataset_dir, tmp_path / "a", train_split="pool"))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("boxes_processed.parquet", "boxes_raw.parquet", "videos"):
        (broken / name).symlink_to(dataset_dir / name)
    clips = read_clips(dataset_dir / "clips.parquet").to_pylist()
    clips[1]["phrases"] = ["a purple whale"] + clips[1]["phrases"][1:]
    write_clips(clip_table(clips), broken / "clips.parquet")
    with pytest.raises(ValueError, match="purple whale") as error:
        train(run_config(broken, tmp_path / "b"))
    assert clips[1]["key"] in str(error.value)
    assert not (tmp_path / "b").exists()


def test_trainable_weights_are_fp32_master_copies_of_a_bf16_model():
    from grove.model import GroveConfig
    from grove.train import build_model

    model = build_model(GroveConfig.tiny(dtype="bfloat16", freezing="paper"), torch.device("cpu"), False)
    dtypes = {(p.requires_grad, p.dtype) for p in model.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}


def test_a_model_trained_on_rendered_videos_says_so(tmp_path):
    """Clips of `grove data synth` videos count as synthetic whatever their dataset is called (the demo's
    iGround stand-in and auto-annotated pool reuse those videos), and `grove infer` says so."""
    from grove.data.synthetic import SynthConfig, generate_dataset
    from grove.train import provenance_note, read_provenance

    data = tmp_path / "synth"
    generate_dataset(data, SynthConfig(seed=3, pool_clips=0, train_clips=2, val_clips=0, test_clips=0), workers=1)
    result = train(TrainConfig(train_data=str(data), out_dir=str(tmp_path / "out"), max_steps=1, batch_size=1,
                               val_split=None, num_workers=0))
    assert read_provenance(result.last_checkpoint)["train_datasets"] == {"synthetic videos": 2}
    assert "trained only on synthetic data: synthetic videos (2 clips)" in provenance_note(result.last_checkpoint)


def test_the_same_run_in_another_folder_writes_a_byte_identical_output_folder(reference, dataset_dir, tmp_path):
    """What DVC versions of a training run holds no absolute path, speed or duration: the same config
    on a copy of the data elsewhere (same layout relative to each other) gives the same bytes."""
    from grove.train import read_result, read_train_config

    ref_out, ref_result, _ = reference
    clone = tmp_path / "another" / "checkout"
    data = clone / dataset_dir.name
    data.parent.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(dataset_dir), str(data)], check=True)
    out = clone / ref_out.name
    train(run_config(data, out, num_workers=2))
    files = sorted(p.relative_to(ref_out) for p in ref_out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for name in files:
        assert (ref_out / name).read_bytes() == (out / name).read_bytes(), name
        if name.suffix in (".json", ".jsonl"):
            assert str(tmp_path.parent) not in (out / name).read_text(), name
    # paths are recorded relative to the output folder, and read back resolved against it
    recorded = json.loads((out / "train_config.json").read_text())
    assert (recorded["out_dir"], recorded["train_data"]) == (".", f"../{dataset_dir.name}")
    assert read_train_config(out) == run_config(str(out / recorded["train_data"]), str(out / "."), num_workers=2)
    assert Path(read_train_config(out).train_data).resolve() == data.resolve()
    result = read_result(out)
    assert Path(result.last_checkpoint).resolve() == Path(ref_result.last_checkpoint.replace(str(ref_out), str(out))).resolve()
    assert "seconds" not in json.loads((out / "result.json").read_text())
    assert not any(k.startswith("perf/") for line in (out / "metrics.jsonl").read_text().splitlines() for k in json.loads(line))
    provenance = json.loads((out / "best" / "provenance.json").read_text())
    assert provenance["train_data"] == f"../{dataset_dir.name}" and provenance["started_from"] is None
