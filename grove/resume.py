"""Long runs that survive: which run an output folder holds, and when to checkpoint.

A training run's fingerprint is what determines its weights: the parameters that change the
training (not how often it logs or saves, nor where it lies), the content of its data (every clip
and box it trains and validates on; the weights it starts from), the trainer's code version and
torch's, and the number of ranks. It is stored with the checkpoints (`checkpoints/fingerprint.json`).
A start on a folder whose fingerprint is the same continues from the last checkpoint, whoever
starts it (the asset, DVC, a person, a scheduler re-running a killed job); a different one starts
fresh, logs which fields changed, and moves the previous run's files aside to
`<out>.superseded/<its digest>/` instead of deleting them.

The code version is declared (`TRAINER_CODE_VERSION`, bumped by hand when a change alters what a
checkpoint holds or how training continues from one), like Dagster's code versions: a source hash
would throw days of pre-training away for an edited comment, and would change the bytes of every
training output (DVC's hash) with every refactoring.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

from grove.io import read_optional_json

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "fingerprint.json"
TRAINER_CODE_VERSION = "1"
# TrainConfig fields that leave the trained weights as they are: where the run lies and its data
# lie (their content is fingerprinted instead), how often it logs and saves, how many checkpoints
# it keeps, loader processes, caches, CPU threads, the resume switch, the device name ("auto"
# resolves per machine), and gradient checkpointing (recomputation, the same numbers)
NOT_FINGERPRINTED = frozenset({
    "out_dir", "train_data", "val_data", "init", "train_boxes", "val_boxes", "video_root",
    "log_every", "save_every", "save_minutes", "keep_last", "num_workers", "cache_mb", "cpu_threads",
    "resume", "device", "gradient_checkpointing",
})
LARGE_FILE = 1 << 30  # weights files past this size are versioned by name and size, not read


def records_version(records: Iterable[Any], root: Path) -> str:
    """sha256 over the clips a run reads (grove.data.loader.ClipRecord): key, video path relative to
    `root`, frame grid, caption, phrases, boxes. The videos' bytes are the catalog's to version."""
    digest = hashlib.sha256()
    for record in records:
        head = [record.key, os.path.relpath(record.video_file, root), record.fps, record.width, record.height,
                list(record.frame_ids), record.caption, record.tagged_caption, list(record.phrases),
                list(record.boxes.shape), str(record.boxes.dtype)]
        digest.update(json.dumps(head).encode())
        digest.update(np.ascontiguousarray(record.boxes).tobytes())
        digest.update(np.ascontiguousarray(record.present).tobytes())
    return digest.hexdigest()


def weights_version(folder: Path | None) -> str | None:
    """sha256 of a checkpoint's weights files (`*.safetensors`, a full checkpoint's index); files past
    LARGE_FILE (an imported multi-gigabyte base model) by name and size only."""
    if folder is None:
        return None
    digest = hashlib.sha256()
    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and (p.suffix == ".safetensors" or p.name.endswith(".index.json")))
    if not files:
        raise FileNotFoundError(f"{folder}: no weights (*.safetensors) to version")
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}\n".encode())
        if size <= LARGE_FILE:
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()


def run_fingerprint(
    config: Mapping[str, Any], model_config: Mapping[str, Any], data: Mapping[str, str | None], ranks: int
) -> dict[str, Any]:
    """The fingerprint of a run: see the module's docstring. Plain JSON values (tuples become lists),
    so that it equals the fingerprint read back from its file."""
    fingerprint = {
        "code": {"trainer": TRAINER_CODE_VERSION, "torch": torch.__version__},
        "params": {k: v for k, v in config.items() if k not in NOT_FINGERPRINTED},
        "model": dict(model_config),
        "data": dict(data),
        "ranks": ranks,
    }
    return json.loads(json.dumps(fingerprint, sort_keys=True))


def digest(fingerprint: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def _flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """`name: old -> new` for every field that differs (nested names joined by dots)."""
    before, after = _flatten(old), _flatten(new)
    missing = object()
    lines = []
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name, missing), after.get(name, missing)
        if a != b:
            lines.append(f"{name}: {'(none)' if a is missing else json.dumps(a)} -> {'(none)' if b is missing else json.dumps(b)}")
    return lines


def read_fingerprint(path: Path) -> dict[str, Any] | None:
    return read_optional_json(path, "run fingerprint")


def supersede(out_dir: Path, names: Iterable[str], label: str) -> Path | None:
    """Move a previous run's files (`names` in `out_dir`) to `<out_dir>.superseded/<label>[-n]/`."""
    out_dir = out_dir.resolve()  # `--out .` has no name to derive the sibling's from
    present = [name for name in names if (out_dir / name).exists()]
    if not present:
        return None
    base = out_dir.with_name(f"{out_dir.name}.superseded")
    target = base / label
    counter = 1
    while target.exists():
        counter += 1
        target = base / f"{label}-{counter}"
    target.mkdir(parents=True)
    for name in present:
        shutil.move(str(out_dir / name), str(target / name))
    return target


@dataclass
class SavePolicy:
    """Checkpoint every `every_steps` steps or every `every_seconds` of wall clock, whichever comes
    first (0 turns either off), and at the last step. Only rank 0's clock counts (`due` is its verdict;
    the trainer shares it with the other ranks)."""

    every_steps: int
    every_seconds: float
    total_steps: int
    clock: Callable[[], float] = time.monotonic
    last_save: float = field(default=float("nan"))

    def __post_init__(self) -> None:
        self.last_save = self.clock()

    def due(self, step: int) -> bool:
        if step == self.total_steps or (self.every_steps and step % self.every_steps == 0):
            return True
        return bool(self.every_seconds) and self.clock() - self.last_save >= self.every_seconds

    def saved(self) -> None:
        self.last_save = self.clock()
