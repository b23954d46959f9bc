"""Long runs that survive: a SIGKILL at a random step then a re-run ends bit for bit where an
uninterrupted run ends; a finished run is not trained again; a changed configuration starts fresh,
says which fields changed and keeps the previous run; checkpoints come by steps or by time."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from grove.resume import SavePolicy, changed_fields
from grove.train import TrainConfig, train
from tests.train.fixtures import make_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parents[2]
STEPS = 6


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("resume_data"), {"train": 6, "val": 2}, seed=2)


def config(dataset_dir, out, **changes) -> TrainConfig:
    base = dict(train_data=str(dataset_dir), out_dir=str(out), max_steps=STEPS, batch_size=2, lr=1e-3, warmup_steps=2,
                log_every=1, eval_every=3, save_every=1, num_workers=0, seed=9)
    return TrainConfig(**{**base, **changes})


def cli_args(c: TrainConfig) -> list[str]:
    return ["train", "--train", c.train_data, "--out", c.out_dir, "--max-steps", str(c.max_steps), "--batch-size", str(c.batch_size),
            "--lr", str(c.lr), "--warmup-steps", str(c.warmup_steps), "--log-every", str(c.log_every), "--eval-every",
            str(c.eval_every), "--save-every", str(c.save_every), "--workers", str(c.num_workers), "--seed", str(c.seed)]


def folder_bytes(root: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name not in skip}


@pytest.fixture(scope="module")
def uninterrupted(dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, train(config(dataset_dir, out))


def test_sigkill_at_a_random_step_then_a_rerun_ends_bit_for_bit_as_the_uninterrupted_run(uninterrupted, dataset_dir, tmp_path_factory):
    reference, _ = uninterrupted
    kill_after = random.SystemRandom().randint(1, STEPS - 1)  # a checkpoint after every step: any of them
    out = tmp_path_factory.mktemp("killed")  # beside the reference: the same relative paths to the data
    run = config(dataset_dir, out)
    process = subprocess.Popen([sys.executable, "-m", "grove.cli", *cli_args(run)], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    pointer = out / "checkpoints" / "last.json"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= kill_after:
            break
        time.sleep(0.02)
    assert process.poll() is None, f"kill after step {kill_after}: the run ended first: {process.stderr.read().decode()[-2000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = json.loads(pointer.read_text())["step"]
    assert killed_at < STEPS, f"kill after step {kill_after}"

    result = train(run)
    assert result.resumed_from_step == killed_at, f"killed after step {killed_at}"
    for name in ("checkpoints/step_00000006/model.safetensors", "best/model.safetensors"):
        resumed, expected = load_file(str(out / name)), load_file(str(reference / name))
        assert resumed.keys() == expected.keys()
        assert all(torch.equal(resumed[k], expected[k]) for k in expected), f"{name} (killed after step {killed_at})"
    # the whole folder: checkpoints, optimiser and RNG states, metrics, result and fingerprint
    assert folder_bytes(out) == folder_bytes(reference), f"killed after step {killed_at}"


def test_a_finished_run_is_not_trained_again(uninterrupted, dataset_dir, caplog):
    reference, first = uninterrupted
    before = folder_bytes(reference)
    with caplog.at_level(logging.INFO, logger="grove.train"):
        again = train(config(dataset_dir, reference, num_workers=1, log_every=2, keep_last=3))  # not fingerprinted
    assert "already finished" in caplog.text
    assert again.steps == STEPS and again.resumed_from_step == STEPS and again.clips_seen == 0
    assert (again.last_checkpoint, again.best_checkpoint, again.final_train_loss) == (first.last_checkpoint, first.best_checkpoint, first.final_train_loss)
    assert folder_bytes(reference) == before


def test_a_changed_configuration_starts_fresh_says_why_and_keeps_the_previous_run(uninterrupted, dataset_dir, tmp_path, caplog):
    reference, _ = uninterrupted
    out = tmp_path / "changed"
    subprocess.run(["cp", "-a", str(reference), str(out)], check=True)
    previous = folder_bytes(out)
    # and with epochs instead of steps, checkpoints by time (here: after every step)
    changed = config(dataset_dir, out, lr=2e-3, max_steps=None, epochs=1.0, save_every=0, save_minutes=1e-9, keep_last=10)
    with caplog.at_level(logging.WARNING, logger="grove.train"):
        result = train(changed)
    assert result.resumed_from_step == 0 and result.steps == 3  # 6 clips, batch 2
    message = caplog.text
    assert "configuration changed" in message and "params.lr: 0.001 -> 0.002" in message
    assert "params.max_steps: 6 -> null" in message and "params.epochs: 20.0 -> 1.0" in message
    kept = [p for p in out.parent.joinpath("changed.superseded").iterdir()]
    assert len(kept) == 1 and str(kept[0]) in message
    assert folder_bytes(kept[0]) == previous  # every file of the previous run, as it was
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000001", "step_00000002", "step_00000003"]
    assert json.loads((out / "checkpoints" / "fingerprint.json").read_text())["params"]["lr"] == 2e-3


def test_checkpoints_come_every_n_steps_or_m_minutes_whichever_first():
    now = [0.0]
    policy = SavePolicy(every_steps=10, every_seconds=60.0, total_steps=100, clock=lambda: now[0])
    due = []
    for step in range(1, 101):
        now[0] += 7.0 if step < 50 else 1.0  # slow steps first (a save by time comes before each 10th step), then fast ones
        if policy.due(step):
            due.append(step)
            policy.saved()
    assert due[:6] == [9, 10, 19, 20, 29, 30] and due[-5:] == [60, 70, 80, 90, 100]
    by_time_only = SavePolicy(every_steps=0, every_seconds=60.0, total_steps=5, clock=lambda: 0.0)
    assert [s for s in range(1, 6) if by_time_only.due(s)] == [5]  # never by time when no time passes; always at the end


def test_changed_fields_name_each_difference():
    old = {"params": {"lr": 0.001, "seed": 1}, "data": {"train": "abc"}, "ranks": 1}
    new = {"params": {"lr": 0.002, "seed": 1}, "data": {"train": "def"}, "ranks": 4}
    assert changed_fields(old, new) == ['data.train: "abc" -> "def"', "params.lr: 0.001 -> 0.002", "ranks: 1 -> 4"]
