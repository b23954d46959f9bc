"""Resume within a shard: a run killed with SIGKILL in the middle of a shard restarts at the shard's
first unfinished batch, hands the engines only the remaining clips, and ends with output files
byte-identical to those of an uninterrupted run."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from annotation import merge
from annotation.shards import AnnotatorConfig, annotate, batch_dir, load_plan, read_done, shard_dir
from tests.annotation.slow_backend import NAME as SLOW

REPO = Path(__file__).resolve().parents[2]
OPTIONS = {"noise": "moderate", "seed": 1}
SHARD, BATCH = 12, 2  # the fixture's 12 clips in one shard of six batches
BATCHES = 6


def all_files(out: Path) -> dict[str, bytes]:
    """Every file under an output folder by relative path, but the plan's lock file (empty, lock-only)
    and the merge's state and lock (a cache of modification times, left out of DVC's hash too)."""
    skipped = {".lock", merge.STATE, merge.LOCK}
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name not in skipped}


def finished_batches(out: Path, stage: int) -> list[int]:
    shard = load_plan(out).shards[0]
    return [i for i in range(BATCHES) if (batch_dir(out, stage, shard, i) / "done.json").exists()]


@pytest.fixture(scope="module")
def uninterrupted(synthetic, tmp_path_factory):
    """One uninterrupted run per stage-1 backend: {backend: output folder}."""
    runs = {}
    for backend in ("simulated", SLOW):
        out = tmp_path_factory.mktemp("uninterrupted")
        annotate(synthetic.catalog, out, AnnotatorConfig(stage1=backend, stage1_options=OPTIONS), shard_size=SHARD,
                 batch_size=BATCH)
        runs[backend] = out
    return runs


def grove_annotate(catalog: Path, out: Path, log: Path, delay: float, calls: Path) -> subprocess.Popen:
    args = ["annotate", "--catalog", str(catalog), "--out", str(out), "--shard-size", str(SHARD), "--batch-size",
            str(BATCH), "--stage1", SLOW, *(f for k, v in OPTIONS.items() for f in ("--stage1-option", f"{k}={v}"))]
    env = {**os.environ, "PYTHONPATH": str(REPO), "GROVE_TEST_STAGE1_DELAY": str(delay),
           "GROVE_TEST_STAGE1_CALLS": str(calls)}
    with open(log, "w") as handle:
        return subprocess.Popen([sys.executable, "-c", "from orchestration.cli import app; app()", *args], env=env,
                                cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)


def test_sigkill_in_the_middle_of_a_shard_resumes_at_the_first_unfinished_batch(synthetic, uninterrupted, tmp_path):
    out = tmp_path / "out"
    killed = grove_annotate(synthetic.catalog, out, tmp_path / "killed.log", delay=0.5, calls=tmp_path / "calls1.jsonl")
    deadline = time.monotonic() + 120
    while killed.poll() is None and time.monotonic() < deadline:
        if (out / "shards" / "plan" / "gen-00000.parquet").exists() and len(finished_batches(out, 1)) >= 2:
            os.kill(killed.pid, signal.SIGKILL)  # somewhere in batch 3 or 4 of stage 1 (0.5 s a batch)
            break
        time.sleep(0.05)
    assert killed.wait(30) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    shard = load_plan(out).shards[0]
    done = finished_batches(out, 1)
    assert 2 <= len(done) < BATCHES and done == list(range(len(done)))
    assert read_done(out, 1, shard) is None and not (out / "clips.parquet").exists()

    rerun = grove_annotate(synthetic.catalog, out, tmp_path / "rerun.log", delay=0, calls=tmp_path / "calls2.jsonl")
    assert rerun.wait(120) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    log = (tmp_path / "rerun.log").read_text()
    k = len(done)
    assert f"stage 1 shard-00000: {k}/{BATCHES} batches already done, resuming at batch {k + 1}" in log
    for i in range(1, BATCHES + 1):  # the finished batches are not redone, the others are
        assert (f"stage 1 shard-00000: batch {i}/{BATCHES} done" in log) == (i > k)
    assert f"stage 1: 1 shards run" in log and f"{k} batches resumed" in log
    # the stage-1 engine got only the clips of the unfinished batches
    called = [key for line in (tmp_path / "calls2.jsonl").read_text().splitlines() for key in json.loads(line)]
    assert called == list(shard.keys[k * BATCH :])
    assert not (shard_dir(out, 1, shard) / "batches").exists()  # folded into the shard's tables
    assert all_files(out) == all_files(uninterrupted[SLOW])


KILL_AT_BATCH = """
import logging, os, signal, sys
from annotation.shards import AnnotatorConfig, annotate

class KillAt(logging.Handler):
    # SIGKILL the moment the runner reports the batch named on the command line as written
    def emit(self, record):
        if record.getMessage().startswith(sys.argv[3]):
            os.kill(os.getpid(), signal.SIGKILL)

logging.basicConfig(level=logging.INFO)
logging.getLogger("annotation.shards").addHandler(KillAt())
config = AnnotatorConfig(stage1_options={"noise": "moderate", "seed": 1})
annotate(sys.argv[1], sys.argv[2], config, shard_size=12, batch_size=2)
"""


@pytest.mark.parametrize("stage, batches_done", [(2, 3), (3, 5)])
def test_a_kill_in_stage_2_or_3_resumes_there_and_keeps_the_earlier_stages(synthetic, uninterrupted, tmp_path, caplog,
                                                                          stage, batches_done):
    out = tmp_path / "out"
    marker = f"stage {stage} shard-00000: batch {batches_done}/{BATCHES} done"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run([sys.executable, "-c", KILL_AT_BATCH, str(synthetic.catalog), str(out), marker], env=env,
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert finished_batches(out, stage) == list(range(batches_done))

    with caplog.at_level(logging.INFO, logger="annotation.shards"):
        run = annotate(synthetic.catalog, out, AnnotatorConfig(stage1_options=OPTIONS), shard_size=SHARD, batch_size=BATCH)
    messages = [r.getMessage() for r in caplog.records]
    assert f"stage {stage} shard-00000: {batches_done}/{BATCHES} batches already done, resuming at batch {batches_done + 1}" in messages
    assert not any(m.startswith(f"stage {stage} shard-00000: batch {i}/") for m in messages for i in range(1, batches_done + 1))
    result = {r.stage: r for r in run.results}
    assert all(result[s].skipped for s in range(1, stage))  # the earlier stages were done
    assert (result[stage].batches, result[stage].resumed_batches) == (BATCHES, batches_done)
    assert all_files(out) == all_files(uninterrupted["simulated"])


def test_a_batch_written_from_other_inputs_is_redone(synthetic, uninterrupted, tmp_path, caplog):
    """Stage-2 batches record the sha256 of the stage-1 tables they read: if stage 1 is redone (same
    version) with different bytes, e.g. by a nondeterministic engine, the stage-2 batches start over."""
    import pyarrow.parquet as pq

    from annotation.shards import _write_shard, stage_version

    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    marker = f"stage 2 shard-00000: batch 3/{BATCHES} done"
    subprocess.run([sys.executable, "-c", KILL_AT_BATCH, str(synthetic.catalog), str(out), marker], env=env, check=False)
    config = AnnotatorConfig(stage1_options=OPTIONS)
    shard = load_plan(out).shards[0]
    frames = pq.read_table(shard_dir(out, 1, shard) / "frames.parquet")
    stamp = read_done(out, 1, shard)
    tables = {"frames.parquet": frames.slice(0, frames.num_rows - 1), "failures.parquet":
              pq.read_table(shard_dir(out, 1, shard) / "failures.parquet")}
    _write_shard(out, 1, shard, stage_version(config, 1), tables, stamp["stats"])  # stage 1 "redone", other bytes
    with caplog.at_level(logging.INFO, logger="annotation.shards"):
        run = annotate(synthetic.catalog, out, config, shard_size=SHARD, batch_size=BATCH)
    assert not any("batches already done" in r.getMessage() for r in caplog.records)
    assert next(r for r in run.results if r.stage == 2).resumed_batches == 0
