"""Training: pre-training and fine-tuning share one entry point, `train(TrainConfig, callback)`.

The recipe is the paper's (grove_spec 2.3): AdamW (0.9, 0.95) without weight decay, linear warm-up
then linear decay to zero, gradient clipping at 1.0, one clip per forward pass, the global batch
made of ranks × accumulation. On a GPU: bf16 autocast, gradient checkpointing, flash-attention when
installed (both also run on a CPU when asked). Distributed runs come from `torchrun` (NCCL on GPUs,
gloo on CPUs), on one node or several (grove.distributed); one process with accumulation k computes
the same gradient as k ranks. `strategy: ddp` replicates the model on every rank; `strategy: fsdp`
shards weights, gradients and optimiser state over the ranks (FSDP2, grove.distributed.shard_model)
and writes sharded step checkpoints (grove.checkpoint; `grove convert-checkpoint` makes one a
single file; the last step's and the best are written whole as well).

Output folder:
```
OUT/
  train_config.json        the TrainConfig of the run (read it back with `read_train_config`)
  metrics.jsonl            one JSON object per logged step / validation: losses, lr, gradient norm
  train_curve.json         metrics.jsonl's training records as one JSON list (step, train_loss, train_lr, ...),
  val_curve.json           and its validation records (step, val_loss, ...): what dvc.yaml's `plots:` draw
  checkpoints/step_NNNNNNNN/  model.safetensors + config.json + trainer_state.pt + rng_rank{r}.pt + state.json
                              + provenance.json (fsdp: sharded/ instead of model.safetensors, which only
                              the last step has, and the optimiser state is in sharded/)
  checkpoints/last.json    which step folder is the newest complete checkpoint
  checkpoints/fingerprint.json  what the run is (grove.resume): parameters, data and code versions
  best/                    model.safetensors + config.json + state.json + provenance.json of the lowest validation loss
  result.json              the TrainResult, without what only one invocation knows: seconds, resumed_from_step,
                           clips_seen (`read_result`)
```
Every file in OUT is a function of the config, the data and the code: the paths that
train_config.json, result.json and provenance.json record are relative to OUT (grove.io.portable_path),
and speeds and durations go to the callback (MLflow, Dagster), never into OUT. So two runs of the
same config on the same machine give a byte-identical OUT, wherever OUT and the data lie (a run
longer than `save_minutes` may keep other step folders: which steps a clock saved).
A run started on an OUT that holds a checkpoint of the same fingerprint resumes from it: weights,
optimiser, scheduler, RNG states and step, so the loss curve and the weights continue bit for bit
as if never stopped (and a finished run returns its result); another fingerprint starts fresh,
says which fields changed, and moves the previous run aside (grove.resume). Checkpoints come every
`save_every` steps or `save_minutes` minutes, whichever first, the last `keep_last` kept.
`trainer_state.pt` holds only tensors and containers and is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from grove.data.loader import (
    ClipRecord,
    GroveClipDataset,
    StepBatchSampler,
    clip_records,
    make_loader,
    resolve_dataset,
)
from grove.checkpoint import SHARDED_DIR, full_trainable_weights, is_sharded, load_sharded, read_sharded_weights, save_sharded
from grove.data.synthetic import rendered_video_folders
from grove.distributed import full_value, gradient_sync, shard_model
from grove.io import atomic_write_json, atomic_write_text, folder_written_via, portable_path, read_optional_json, resolve_recorded
from grove.model import GroveConfig, GroveModel, batch_to, tag_answer
from grove.model.store import is_full_checkpoint
from grove.resume import (
    FINGERPRINT_FILE,
    SavePolicy,
    changed_fields,
    digest,
    read_fingerprint,
    records_version,
    run_fingerprint,
    supersede,
    weights_version,
)

logger = logging.getLogger(__name__)

MetricsCallback = Callable[[int, dict[str, float]], None]

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
TRAINER_FILE = "trainer_state.pt"
LAST_FILE = "last.json"
PROVENANCE_FILE = "provenance.json"
# what provenance calls clips of videos rendered by `grove data synth` (not real video)
RENDERED = "synthetic videos"
GROUNDING_TERMS = ("giou", "l1", "tobj")


@dataclass
class TrainConfig:
    """One training run. `train_data` / `val_data`: a dataset folder or a clip table (clips.parquet).

    `val_data=None` validates on `val_split` of the training data when it has that split;
    `val_split=None` turns validation off.
    `batch_size` is the global batch (ranks × accumulation × micro batch); `max_steps` overrides
    `epochs`. `init` is a checkpoint whose trainable weights start the run (fine-tuning).
    """

    train_data: str
    out_dir: str
    model: str = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_split: str = "train"
    val_data: str | None = None
    val_split: str | None = "val"  # None: no validation
    init: str | None = None
    max_steps: int | None = None
    epochs: float = 20.0
    batch_size: int = 8
    micro_batch_size: int = 1
    lr: float = 5e-5
    warmup_steps: int = 100
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 42
    num_workers: int = 2
    log_every: int = 10
    eval_every: int = 0  # steps between validations; 0: once per epoch and at the end
    save_every: int = 0  # steps between checkpoints; 0: at each validation (each epoch without one) and at the end
    keep_last: int = 2
    max_val_clips: int | None = None
    best_by: Literal["grounding", "loss"] = "grounding"
    device: str = "auto"
    bf16: bool | None = None  # None: on CUDA only
    gradient_checkpointing: bool | None = None  # None: on CUDA only
    resume: bool = True
    video_backend: str = "pyav"
    cache_mb: int = 256
    train_boxes: str | None = None
    val_boxes: str | None = None
    video_root: str | None = None
    skip_bad_clips: bool = False
    cpu_threads: int | None = None  # CPU only; None: 1 (see cpu_threads)
    strategy: Literal["ddp", "fsdp"] = "ddp"  # fsdp: sharded weights, gradients, optimiser state and checkpoints
    save_minutes: float = 30.0  # also checkpoint when this long has passed since the last one; 0: off

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_portable_dict(self) -> dict[str, Any]:
        """`to_dict` with every path relative to `out_dir` (train_config.json)."""
        return _portable(self.to_dict(), CONFIG_PATHS, self.out_dir)


# Fields of TrainConfig / TrainResult that hold paths: recorded relative to the output folder.
CONFIG_PATHS = ("train_data", "out_dir", "val_data", "init", "train_boxes", "val_boxes", "video_root")
RESULT_PATHS = ("out_dir", "last_checkpoint", "best_checkpoint")


def _portable(values: dict[str, Any], names: tuple[str, ...], out_dir: str | Path) -> dict[str, Any]:
    return {k: portable_path(v, out_dir) if k in names and v is not None else v for k, v in values.items()}


def _resolved(values: dict[str, Any], names: tuple[str, ...], out_dir: Path) -> dict[str, Any]:
    return {k: str(resolve_recorded(v, out_dir)) if k in names and v is not None else v for k, v in values.items()}


def read_train_config(out_dir: str | Path) -> TrainConfig:
    """The TrainConfig a run wrote to OUT/train_config.json, its paths resolved against OUT."""
    out_dir = Path(out_dir)
    return TrainConfig(**_resolved(json.loads((out_dir / "train_config.json").read_text()), CONFIG_PATHS, out_dir))


def read_result(out_dir: str | Path) -> TrainResult:
    """The TrainResult a run wrote to OUT/result.json (paths resolved against OUT), as a re-run of the
    finished run sees it: resumed at its last step, no clips seen; `seconds` is not kept: nan."""
    out_dir = Path(out_dir)
    values = _resolved(json.loads((out_dir / "result.json").read_text()), RESULT_PATHS, out_dir)
    return TrainResult(**{"seconds": float("nan"), "resumed_from_step": values["steps"], "clips_seen": 0, **values})


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    last_checkpoint: str
    best_checkpoint: str | None
    best_val_loss: float | None
    final_train_loss: float | None
    resumed_from_step: int
    seconds: float
    clips_seen: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_portable_dict(self) -> dict[str, Any]:
        """What result.json holds: paths relative to `out_dir`, and nothing about this one invocation
        (wall-clock `seconds`, where it resumed, how many clips it saw), so a run killed and resumed
        leaves the same file as an uninterrupted one."""
        values = {k: v for k, v in self.to_dict().items() if k not in INVOCATION_FIELDS}
        return _portable(values, RESULT_PATHS, self.out_dir)


INVOCATION_FIELDS = ("seconds", "resumed_from_step", "clips_seen")


# ---------------------------------------------------------------------------------------------- setup


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    own_group: bool = False  # a one-rank group that `train` made (FSDP needs one) and closes

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device, strategy: str = "ddp") -> DistEnv:
    """Join the process group that `torchrun` describes in the environment (if any). FSDP needs a
    group even for one process: a one-rank group on an in-memory store, which `train` closes."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        if strategy != "fsdp" or torch.distributed.is_initialized():
            return DistEnv()
        torch.distributed.init_process_group(backend=backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
        return DistEnv(own_group=True)
    env = DistEnv(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return env


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)  # before NCCL init: one GPU per rank
        return torch.device("cuda", local_rank)
    logger.info("no GPU found: training on the CPU")
    return torch.device("cpu")


def cpu_threads(requested: int | None) -> int:
    """Intra-op threads per rank for CPU training: 1 unless asked. The tiny model's ops are small,
    and a thread that waits for a busy core stalls every op (measured on a shared 2-core machine:
    0.15 CPU-s per step with 1 thread, 1.3 with 2); ranks and loader workers take the other cores."""
    return max(1, requested) if requested is not None else 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up to 1 over `warmup_steps`, then linear decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = total_steps - warmup_steps
    return max(0.0, (total_steps - step) / remaining) if remaining > 0 else 1.0


def attention_implementation(device: torch.device) -> str | None:
    """flash-attention 2 where it is installed and a GPU runs (looked up, not imported)."""
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return None


# ------------------------------------------------------------------------------------ checkpoints


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder (holds model.safetensors, a sharded checkpoint, or the index of a full-weights
    checkpoint), or a training output folder (its best, else last)."""
    path = Path(path)
    if (path / MODEL_FILE).exists() or is_full_checkpoint(path) or is_sharded(path):
        return path
    if (path / "best" / MODEL_FILE).exists():
        return path / "best"
    last = latest_checkpoint(path)
    if last is not None:
        return last
    raise FileNotFoundError(f"{path}: not a checkpoint (no {MODEL_FILE}) nor a training folder with one")


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    pointer = Path(out_dir) / "checkpoints" / LAST_FILE
    if not pointer.exists():
        return None
    try:
        folder = pointer.parent / json.loads(pointer.read_text())["path"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise ValueError(f"{pointer}: unreadable checkpoint pointer: {exc}") from exc
    if not ((folder / MODEL_FILE).exists() or is_sharded(folder)):
        raise FileNotFoundError(f"{pointer}: points to {folder}, which has no {MODEL_FILE} nor a sharded checkpoint")
    return folder


def save_model(
    folder: Path, model: GroveModel, config: GroveConfig, state: dict[str, Any], provenance: dict[str, Any] | None = None
) -> None:
    """The trainable weights (frozen ones are rebuilt from the config: `base_weights`, sources or
    `init_seed`), and where they came from (`provenance.json`, with the step)."""
    save_weights(folder, model.trainable_state_dict())
    save_model_files(folder, config, state, provenance)


def save_weights(folder: Path, weights: dict[str, torch.Tensor]) -> None:
    # safetensors refuses shared storage; cloning also detaches the tensors from training
    weights = {name: t.detach().to("cpu").contiguous().clone() for name, t in weights.items()}
    save_file(weights, str(folder / MODEL_FILE), metadata={"format": "pt"})


def save_model_files(folder: Path, config: GroveConfig, state: dict[str, Any], provenance: dict[str, Any] | None = None) -> None:
    """A checkpoint's small files: config.json, state.json and provenance.json."""
    atomic_write_text(folder / CONFIG_FILE, _portable_model_config(config, folder).to_json() + "\n")
    atomic_write_json(folder / STATE_FILE, state)
    if provenance is not None:
        atomic_write_json(folder / PROVENANCE_FILE, {**provenance, "step": state.get("step")})


def _portable_model_config(config: GroveConfig, folder: Path) -> GroveConfig:
    """The config a checkpoint folder records: the local folders that `GroveConfig.from_json_file`
    resolves against the file's folder (`base_weights`, a `tokenizer_source` folder) relative to it."""
    changes: dict[str, Any] = {}
    if config.base_weights is not None:
        changes["base_weights"] = portable_path(config.base_weights, folder)
    tokenizer = Path(config.tokenizer_source)
    if tokenizer.is_absolute() and tokenizer.is_dir():
        changes["tokenizer_source"] = portable_path(tokenizer, folder)
    return config.replace(**changes) if changes else config


def read_provenance(folder: str | Path) -> dict[str, Any] | None:
    """A checkpoint's provenance.json (imported from where, or trained on what from what), if it has one."""
    return read_optional_json(Path(folder) / PROVENANCE_FILE, "provenance")


def training_provenance(config: TrainConfig, model_config: GroveConfig, datasets: dict[str, int]) -> dict[str, Any]:
    """What a trained checkpoint records: the data and profile, and the provenance of what it started from.
    Its paths (`train_data`, `started_from.path`) are relative to the training folder (`config.out_dir`);
    the nested provenance of the start keeps its own, relative to that run's training folder."""
    start = None
    if config.init is not None:
        init = resolve_checkpoint(config.init)
        start = {"path": portable_path(init, config.out_dir), "provenance": read_provenance(init)}
    elif model_config.base_weights is not None:
        start = {"path": portable_path(model_config.base_weights, config.out_dir),
                 "provenance": read_provenance(model_config.base_weights)}
    return {
        "origin": "trained",
        "model_profile": model_config.profile,
        "train_data": portable_path(config.train_data, config.out_dir),
        "train_split": config.train_split,
        "train_datasets": datasets,
        "seed": config.seed,
        "started_from": start,
    }


def pretrained_origin(provenance: dict[str, Any] | None) -> dict[str, Any] | None:
    """The imported checkpoint at the root of a provenance chain (GROVE, GLaMM), or None for random weights."""
    while provenance is not None:
        if provenance.get("origin") == "imported":
            return provenance
        start = provenance.get("started_from")
        provenance = start.get("provenance") if start else None
    return None


IMPORT_HINT = (
    "to caption real videos, import the released GROVE weights (see the README, 'The published model'): "
    "grove weights import --from grove SRC --out DIR, then grove infer --checkpoint DIR"
)


def provenance_note(checkpoint: str | Path) -> str | None:
    """A warning for a checkpoint that never started from pretrained weights (what it was trained on, and
    how to get real weights); None for one that descends from an imported GROVE / GLaMM checkpoint."""
    folder = resolve_checkpoint(checkpoint)
    provenance = read_provenance(folder)
    if pretrained_origin(provenance) is not None:
        return None
    config = GroveConfig.from_json_file(folder / CONFIG_FILE)
    if config.base_weights is not None or config.llm_source is not None:
        return None  # built on pretrained components (a base folder or hub sources)
    datasets = trained_datasets(provenance)
    if not datasets:
        what = "has no training record (no provenance.json)" if provenance is None else "was never trained"
        return f"{folder}: this '{config.profile}' model started from random weights and {what}; {IMPORT_HINT}"
    seen = ", ".join(f"{name} ({count} clips)" for name, count in sorted(datasets.items()))
    kind = "only on synthetic data: " if set(datasets) == {RENDERED} else "on "
    return (f"{folder}: this '{config.profile}' model was trained {kind}{seen}, having started from random weights, "
            f"so its captions of real videos mean little; {IMPORT_HINT}")


def trained_datasets(provenance: dict[str, Any] | None) -> dict[str, int]:
    """Training clips per dataset over the whole chain of trained checkpoints."""
    totals: dict[str, int] = {}
    while provenance is not None and provenance.get("origin") == "trained":
        for name, count in provenance.get("train_datasets", {}).items():
            totals[name] = totals.get(name, 0) + count
        start = provenance.get("started_from")
        provenance = start.get("provenance") if start else None
    return totals


def load_weights(model: GroveModel, folder: Path, strict: bool = True) -> list[str]:
    """Load a checkpoint's trainable weights; returns the trainable names it lacked (only with strict=False).

    A full-weights checkpoint has none to add: the model was built from it (`config.base_weights`).
    """
    path = folder / MODEL_FILE
    if not path.exists() and is_full_checkpoint(folder):
        return []
    try:
        weights = read_sharded_weights(folder) if not path.exists() and is_sharded(folder) else load_file(str(path))
        return model.load_trainable_state_dict(weights, strict=strict)
    except (KeyError, ValueError, OSError, SafetensorError) as exc:  # a truncated file raises SafetensorError
        raise ValueError(f"{path}: {exc}") from exc


def convert_sharded_checkpoint(folder: str | Path, out: str | Path) -> Path:
    """A sharded step checkpoint (`strategy: fsdp`) as a single-file one in `out`: model.safetensors
    (the trainable weights, whole) and the step's config.json, state.json and provenance.json, written
    to a temporary folder renamed into place (a killed conversion leaves nothing that looks finished).
    Needs no process group: any machine that holds the trainable weights converts."""
    folder, out = Path(folder), Path(out)
    if not is_sharded(folder):
        raise FileNotFoundError(f"{folder}: not a sharded checkpoint (no {SHARDED_DIR}/.metadata)")
    config_file = folder / CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: missing; a checkpoint needs its model config")
    weights = read_sharded_weights(folder)
    state = json.loads((folder / STATE_FILE).read_text()) if (folder / STATE_FILE).is_file() else {}
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(tmp, weights)
    # the provenance as the step wrote it: its paths stay relative to the training folder
    save_model_files(tmp, GroveConfig.from_json_file(config_file), state, read_provenance(folder))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    logger.info("%s: %d trainable weights -> %s", folder, len(weights), out / MODEL_FILE)
    return out


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> GroveModel:
    """A model (with `model.processor`) from a checkpoint or a training folder, in eval mode."""
    folder = resolve_checkpoint(checkpoint)
    config = GroveConfig.from_json_file(folder / CONFIG_FILE)
    model = GroveModel.from_config(config, device=device)
    load_weights(model, folder)
    return model.eval()


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [v.tolist() if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(v) if isinstance(v, list) else v for v in state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Writes step checkpoints (atomically: a temporary folder renamed into place), the `last`
    pointer, and the best model; reads them back for resuming.

    `sharded` (FSDP): every rank writes its shards of the trainable weights and optimiser state
    (grove.checkpoint); a step saved with `whole=True` (the last) and the best model also get
    model.safetensors, gathered on rank 0. Every method is then a collective: all ranks call it.
    """

    def __init__(
        self, out_dir: Path, dist: DistEnv, keep_last: int, provenance: dict[str, Any] | None = None, sharded: bool = False
    ) -> None:
        self.root = out_dir / "checkpoints"
        self.best = out_dir / "best"
        self.dist = dist
        self.keep_last = keep_last
        self.provenance = provenance
        self.sharded = sharded

    def save(
        self, step: int, model: GroveModel, config: GroveConfig, optimizer, scheduler, state: dict, whole: bool = False
    ) -> Path:
        name = f"step_{step:08d}"
        final = self.root / name
        tmp = self.root / f".tmp-{name}"
        if self.dist.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier(self.dist)
        with folder_written_via(final, tmp):
            torch.save(rng_state(), tmp / f"rng_rank{self.dist.rank}.pt")
        weights = None
        if self.sharded:
            with folder_written_via(final, tmp):
                save_sharded(tmp, model, optimizer)
            weights = full_trainable_weights(model, gather=True) if whole else None
        _barrier(self.dist)
        if self.dist.is_main:
            with folder_written_via(final, tmp):
                if self.sharded:
                    if weights is not None:
                        save_weights(tmp, weights)
                    save_model_files(tmp, config, state, self.provenance)
                    trainer = {"step": step, "scheduler": scheduler.state_dict()}  # the optimiser is in the shards
                else:
                    save_model(tmp, model, config, state, self.provenance)
                    trainer = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
                torch.save(trainer, tmp / TRAINER_FILE)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            atomic_write_json(self.root / LAST_FILE, {"path": name, "step": step})
            self._prune()
        _barrier(self.dist)
        return final

    def _prune(self) -> None:
        folders = sorted(p for p in self.root.glob("step_*") if p.is_dir())
        for old in folders[: max(0, len(folders) - self.keep_last)]:
            shutil.rmtree(old, ignore_errors=True)

    def save_best(self, model: GroveModel, config: GroveConfig, state: dict) -> None:
        weights = full_trainable_weights(model, gather=True) if self.sharded else None
        if not self.dist.is_main:
            return
        tmp = self.best.with_name(".tmp-best")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with folder_written_via(self.best, tmp):
            if weights is None:
                save_model(tmp, model, config, state, self.provenance)
            else:
                save_weights(tmp, weights)
                save_model_files(tmp, config, state, self.provenance)
        old = self.best.with_name(".old-best")
        shutil.rmtree(old, ignore_errors=True)
        if self.best.exists():
            os.replace(self.best, old)
        os.replace(tmp, self.best)
        shutil.rmtree(old, ignore_errors=True)

    def restore(self, folder: Path, model: GroveModel, optimizer, scheduler) -> int:
        trainer = _interned_keys(torch.load(folder / TRAINER_FILE, map_location="cpu", weights_only=True))
        if self.sharded != ("optimizer" not in trainer):
            kind = "sharded (fsdp)" if "optimizer" not in trainer else "single-file (ddp)"
            raise ValueError(f"{folder}: a {kind} checkpoint cannot resume a run of the other strategy")
        if self.sharded:
            load_sharded(folder, model, optimizer)
        else:
            load_weights(model, folder)
            optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        rng_file = folder / f"rng_rank{self.dist.rank}.pt"
        if not rng_file.exists():
            raise FileNotFoundError(f"{rng_file}: missing (was the run resumed with a different number of ranks?)")
        set_rng_state(torch.load(rng_file, weights_only=True))
        return int(trainer["step"])


def _interned_keys(value: Any) -> Any:
    """`value` with every string dict key interned. The optimiser keeps the keys of the state it loads
    ('step', 'exp_avg'); a fresh one uses its code's interned literals, and pickle writes a string
    once per object, not per value: interning makes a resumed run's trainer_state.pt byte-identical
    to an uninterrupted run's."""
    if isinstance(value, dict):
        return {sys.intern(k) if isinstance(k, str) else k: _interned_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interned_keys(v) for v in value]
    return value


def _barrier(dist: DistEnv) -> None:
    if dist.enabled:
        torch.distributed.barrier()


# --------------------------------------------------------------------------------------- the loop


def build_model(model_config: GroveConfig, device: torch.device, gradient_checkpointing: bool) -> GroveModel:
    """The model to train. Trainable weights are kept in fp32 (the optimiser's master copy; a bf16
    weight would swallow updates of lr 5e-5), frozen ones in the config's dtype; autocast does the rest."""
    attn = attention_implementation(device)
    if attn is not None:
        model_config = model_config.replace(attn_implementation=attn)
    model = GroveModel.from_config(model_config, device=device)
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def _model_config(config: TrainConfig) -> GroveConfig:
    """The profile (its randomly initialised parts seeded by the run's seed), or the --init checkpoint's config."""
    if config.init is None:
        return GroveConfig.from_profile(config.model, **{"init_seed": config.seed, **config.model_overrides})
    init_config = GroveConfig.from_json_file(resolve_checkpoint(config.init) / CONFIG_FILE)
    if init_config.profile != config.model:
        logger.warning("--init checkpoint has model profile %r; using it instead of %r", init_config.profile, config.model)
    return init_config.replace(**config.model_overrides) if config.model_overrides else init_config


def _records(data: str | None, split: str, boxes: str | None, video_root: str | None) -> list[ClipRecord]:
    return _records_and_sources(data, split, boxes, video_root)[0]


def _records_and_sources(data: str | None, split: str, boxes: str | None, video_root: str | None) -> tuple[list[ClipRecord], dict[str, int]]:
    """The clips, and how many come from each dataset (the clip table's `dataset` column; clips of
    videos that `grove data synth` rendered count under RENDERED whatever their dataset's name)."""
    if data is None:
        return [], {}
    dataset = resolve_dataset(data, split, processed=True, boxes=boxes, video_root=video_root)
    records = clip_records(dataset)
    rendered = rendered_video_folders(r.video_file.parent for r in records)
    names = [RENDERED if r.video_file.parent in rendered else name
             for r, name in zip(records, dataset.clips.column("dataset").to_pylist())]
    return records, {name: names.count(name) for name in sorted(set(names))}


def check_answers(records: list[ClipRecord], source: str, skip: bool) -> list[ClipRecord]:
    """Clips whose caption, phrases and tags make a GROVE answer; the others are an error (or dropped)."""
    good, bad = [], []
    for record in records:
        try:
            tag_answer(record.caption, record.phrases, record.tagged_caption)
            good.append(record)
        except ValueError as exc:
            bad.append(f"{record.key}: {exc}")
    if bad and not skip:
        raise ValueError(f"{source}: {len(bad)} clip(s) cannot be trained on, e.g. {bad[:3]} (skip them with skip_bad_clips)")
    if bad:
        logger.warning("%s: skipped %d clip(s) whose caption and phrases do not fit, e.g. %s", source, len(bad), bad[:3])
    return good


def _val_records(config: TrainConfig) -> list[ClipRecord]:
    if config.val_split is None:
        return []
    if config.val_data is not None:
        records = _records(config.val_data, config.val_split, config.val_boxes, config.video_root)
    else:
        try:
            records = _records(config.train_data, config.val_split, config.train_boxes, config.video_root)
        except ValueError:
            logger.info("%s has no split %r and no --val was given: no validation", config.train_data, config.val_split)
            return []
    return records[: config.max_val_clips] if config.max_val_clips else records


def _losses(output: Any) -> dict[str, torch.Tensor]:
    return {"loss": output.loss, **{name: value for name, value in output.losses.items()}}


class Progress:
    """A periodic line with loss, learning rate, steps/s, clips/s and ETA (rank 0 only)."""

    def __init__(self, total_steps: int, start_step: int, clips_per_step: int) -> None:
        self.total = total_steps
        self.start_step = start_step
        self.clips_per_step = clips_per_step
        self.t0 = time.perf_counter()

    def rates(self, step: int) -> tuple[float, float]:
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        steps_per_s = (step - self.start_step) / elapsed
        return steps_per_s, steps_per_s * self.clips_per_step

    def line(self, step: int, metrics: dict[str, float]) -> str:
        steps_per_s, clips_per_s = self.rates(step)
        eta = (self.total - step) / steps_per_s if steps_per_s > 0 else float("inf")
        terms = " ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in metrics.items() if k.startswith("train/") and k != "train/loss")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        return (
            f"step {step}/{self.total} loss {metrics.get('train/loss', float('nan')):.4f} ({terms}) "
            f"lr {metrics.get('train/lr', 0):.2e} | {steps_per_s:.2f} steps/s {clips_per_s:.1f} clips/s | ETA {eta_text}"
        )


def _mean_across_ranks(values: dict[str, float], count: float, dist: DistEnv, device: torch.device | None = None) -> dict[str, float]:
    """Sum (value × count) and count over ranks, return the means."""
    names = sorted(values)
    packed = torch.tensor([values[n] * count for n in names] + [count], dtype=torch.float64)
    if dist.enabled:
        packed = packed.to(device if device is not None and device.type == "cuda" else "cpu")  # NCCL reduces GPU tensors only
        torch.distributed.all_reduce(packed)
        packed = packed.cpu()
    total = max(packed[-1].item(), 1e-12)
    return {n: packed[i].item() / total for i, n in enumerate(names)}


@torch.no_grad()
def validate(
    model: GroveModel, loader: torch.utils.data.DataLoader, device: torch.device, autocast, dist: DistEnv, real: int | None = None
) -> dict[str, float]:
    """Mean losses over the validation clips (segment-centre frames), gathered over ranks. `real`: only
    the first `real` batches count; the others pad the ranks to the same number of forward passes
    (a sharded model's forward is a collective)."""
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    clips = 0
    for index, batch in enumerate(loader):
        batch = batch_to(batch, device)
        with autocast():
            output = model(batch)
        padding = real is not None and index >= real
        size = 0 if padding else _batch_size(batch)  # a padding batch names the losses (every rank reduces the same ones)
        for name, value in _losses(output).items():
            sums[name] = sums.get(name, 0.0) + (float(value) * size if size else 0.0)
        clips += size
    model.train(was_training)
    means = _mean_across_ranks({k: v / max(clips, 1) for k, v in sums.items()}, clips, dist, device)
    means["grounding"] = sum(means.get(term, 0.0) for term in GROUNDING_TERMS)
    return {f"val/{k}": v for k, v in means.items()}


def _batch_size(batch: dict[str, Any]) -> int:
    return int(batch["input_ids"].shape[0])


def _append_metrics(path: Path, step: int, metrics: dict[str, float]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, **metrics}, sort_keys=True) + "\n")
        handle.flush()


def _truncate_metrics(path: Path, step: int) -> None:
    """After resuming at `step`, forget what the killed run logged past it (it is logged again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# metrics.jsonl's records as DVC plots read them (dvc.yaml `plots:`): one JSON list per kind of record, because
# DVC plots a list only when all its rows have the same fields, and validation comes at other steps than training.
CURVE_FILES = {"train": "train_curve.json", "val": "val_curve.json"}


def curve_rows(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The `kind/...` metrics of the records that hold `kind/loss`, one row per record: `step` and each metric
    with '/' as '_' (`train/loss` -> `train_loss`); a metric missing from a row is null, so all rows share fields."""
    chosen = [record for record in records if f"{kind}/loss" in record]
    names = sorted({name for record in chosen for name in record if name.startswith(f"{kind}/")})
    return [{"step": record["step"], **{name.replace("/", "_"): record.get(name) for name in names}} for record in chosen]


def write_curves(out_dir: Path) -> None:
    """Rewrite OUT's curve files from its metrics.jsonl (atomically, whole), so they always hold what it
    holds: after each logged step, and after a resume cut metrics.jsonl back to its checkpoint."""
    path = out_dir / METRICS_FILE
    records = [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
    for kind, name in CURVE_FILES.items():
        rows = curve_rows(records, kind)
        if rows:
            atomic_write_json(out_dir / name, rows)
        else:
            (out_dir / name).unlink(missing_ok=True)


@dataclass
class _Data:
    train: list[ClipRecord]
    val: list[ClipRecord]
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    save_every: int
    datasets: dict[str, int]  # training clips per source dataset


def _plan(config: TrainConfig, dist: DistEnv) -> _Data:
    """Read and check the clips first, so bad data fails before a model is built."""
    train_records, datasets = _records_and_sources(config.train_data, config.train_split, config.train_boxes, config.video_root)
    train_records = check_answers(train_records, config.train_data, config.skip_bad_clips)
    val_records = check_answers(_val_records(config), config.val_data or config.train_data, config.skip_bad_clips)
    world_batch = config.micro_batch_size * dist.world_size
    if config.batch_size % world_batch:
        raise ValueError(f"batch size {config.batch_size} is not a multiple of micro batch × ranks = {world_batch}")
    steps_per_epoch = max(1, len(train_records) // config.batch_size)
    total_steps = config.max_steps if config.max_steps is not None else math.ceil(config.epochs * steps_per_epoch)
    eval_every = config.eval_every or steps_per_epoch
    return _Data(train_records, val_records, steps_per_epoch, total_steps, eval_every, config.save_every or eval_every, datasets)


def even_shard(items: list, rank: int, world_size: int) -> tuple[list, int]:
    """Rank `rank`'s share of `items` (every world_size-th), padded by wrapping around to the length
    of the longest share; and how many of its entries are its own (the rest only pad)."""
    if not items:
        return [], 0
    per_rank = math.ceil(len(items) / world_size)
    indices = [rank + world_size * i for i in range(per_rank)]
    return [items[i % len(items)] for i in indices], sum(i < len(items) for i in indices)


def _loaders(config: TrainConfig, data: _Data, processor: Any, start_step: int, dist: DistEnv):
    """The training and validation loaders, the accumulation steps, and the validation batches that count
    (None: all). Several ranks validate clip by clip, each as many clips as the busiest (a repeated
    clip pads, uncounted): a sharded model's forward is a collective, and a rank without clips would
    not know which losses the others reduce."""
    sampler = StepBatchSampler(
        len(data.train), config.batch_size, config.micro_batch_size, data.total_steps, start_step,
        dist.world_size, dist.rank, config.seed,
    )
    cache_bytes = config.cache_mb << 20
    train_set = GroveClipDataset(data.train, processor, config.seed, config.video_backend, cache_bytes)
    if dist.world_size > 1:
        val_records, val_real = even_shard(data.val, dist.rank, dist.world_size)
        val_batch = 1
    else:
        val_records, val_real, val_batch = data.val, None, config.micro_batch_size
    val_set = GroveClipDataset(val_records, processor, config.seed, config.video_backend, cache_bytes)
    return (
        make_loader(train_set, sampler, processor.collate, config.num_workers),
        make_loader(val_set, None, processor.collate, min(config.num_workers, 1), val_batch),
        sampler.accumulation,
        val_real,
    )


def _train_step(model, micro, accumulation: int, device, autocast, dist: DistEnv) -> dict[str, float]:
    """Forward and backward over the step's micro-batches (gradients synchronised on the last)."""
    sums: dict[str, float] = {}
    for m in range(accumulation):
        batch = batch_to(next(micro), device)
        sync = m == accumulation - 1 or not dist.enabled
        with gradient_sync(model, sync), autocast():
            losses = _losses(model(batch))
        (losses["loss"] / accumulation).backward()
        for name, value in losses.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach()) / accumulation
    return sums


def train(config: TrainConfig, callback: MetricsCallback | None = None) -> TrainResult:
    """Train (or fine-tune, with `config.init`) and return where the checkpoints are."""
    started = time.perf_counter()
    device = pick_device(config.device, int(os.environ.get("LOCAL_RANK", "0")))
    dist = init_distributed(device, config.strategy)
    try:
        return _train(config, callback, device, dist, started)
    finally:
        if dist.own_group:
            torch.distributed.destroy_process_group()


def _train(config: TrainConfig, callback: MetricsCallback | None, device: torch.device, dist: DistEnv, started: float) -> TrainResult:
    out_dir = Path(config.out_dir)
    data = _plan(config, dist)
    model_config = _model_config(config)
    resume_from = _prepare_output(config, model_config, data, dist)
    if resume_from is not None and _finished(out_dir, resume_from, data.total_steps):
        logger.info("%s: this run already finished (%d steps, same fingerprint): nothing to train", out_dir, data.total_steps)
        return dataclasses.replace(read_result(out_dir), seconds=time.perf_counter() - started)
    if dist.is_main:
        atomic_write_json(out_dir / "train_config.json", config.to_portable_dict())
    seed_everything(config.seed)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(config.cpu_threads))

    use_cuda = device.type == "cuda"
    bf16 = use_cuda if config.bf16 is None else config.bf16
    checkpointing = use_cuda if config.gradient_checkpointing is None else config.gradient_checkpointing
    sharded = config.strategy == "fsdp"
    model = build_model(model_config, device, checkpointing)
    if config.init is not None:
        missing = load_weights(model, resolve_checkpoint(config.init), strict=False)
        logger.info("initialised from %s%s", resolve_checkpoint(config.init), f" ({len(missing)} trainable weights not in it)" if missing else "")
    if sharded:  # before the optimiser: sharding replaces the parameters by their shards
        shard_model(model, device)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config.warmup_steps, data.total_steps))
    checkpointer = Checkpointer(out_dir, dist, config.keep_last, training_provenance(config, model_config, data.datasets), sharded)
    metrics_path = out_dir / METRICS_FILE
    start_step = 0
    if resume_from is not None:
        start_step = checkpointer.restore(resume_from, model, optimizer, scheduler)
        if dist.is_main:
            _truncate_metrics(metrics_path, start_step)
            write_curves(out_dir)
        logger.info("resumed from %s (step %d)", resume_from, start_step)
    _barrier(dist)
    best_val = _best_so_far(out_dir, config.best_by) if resume_from is not None else None

    ddp_model: torch.nn.Module = model
    if dist.enabled and not sharded:
        # the box decoder sits idle on a micro-batch without phrases, hence find_unused_parameters
        # (safe with gradient checkpointing because it is non-reentrant: GroveModel.enable_gradient_checkpointing)
        ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if use_cuda else None, find_unused_parameters=True
        )

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    train_loader, val_loader, accumulation, val_real = _loaders(config, data, model.processor, start_step, dist)
    progress = Progress(data.total_steps, start_step, config.batch_size)
    if dist.is_main:
        logger.info(
            "training %d steps (%d clips, %d steps/epoch, global batch %d = %d ranks × %d accumulation × %d), %d val clips, %s, %s, %d threads",
            data.total_steps, len(data.train), data.steps_per_epoch, config.batch_size, dist.world_size, accumulation,
            config.micro_batch_size, len(data.val), device, config.strategy, torch.get_num_threads(),
        )
    policy = SavePolicy(data.save_every, config.save_minutes * 60.0, data.total_steps)
    model.train()
    micro = iter(train_loader)
    last_train_loss: float | None = None
    last_checkpoint = resume_from
    step = start_step
    for done in range(start_step + 1, data.total_steps + 1):
        sums = _train_step(ddp_model, micro, accumulation, device, autocast, dist)
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step = done
        if done % config.log_every == 0 or done == data.total_steps:
            metrics = {f"train/{k}": v for k, v in _mean_across_ranks(sums, 1.0, dist, device).items()}
            steps_per_s, clips_per_s = progress.rates(done)
            metrics.update({"train/lr": scheduler.get_last_lr()[0], "train/grad_norm": float(full_value(grad_norm)),
                            "perf/steps_per_s": steps_per_s, "perf/clips_per_s": clips_per_s})
            last_train_loss = metrics["train/loss"]
            _report(done, metrics, callback, metrics_path, dist)
            if dist.is_main:
                logger.info(progress.line(done, metrics))
        if data.val and (done % data.eval_every == 0 or done == data.total_steps):
            val = validate(model, val_loader, device, autocast, dist, val_real)
            _report(done, val, callback, metrics_path, dist)
            current = val["val/grounding"] if config.best_by == "grounding" else val["val/loss"]
            if best_val is None or current < best_val:
                best_val = current
                checkpointer.save_best(model, model_config, {"step": done, "best_by": config.best_by, **val})
            if dist.is_main:
                logger.info("step %d validation: %s", done, " ".join(f"{k} {v:.4f}" for k, v in val.items()))
        if _save_due(policy, done, dist, device):
            last_checkpoint = checkpointer.save(done, model, model_config, optimizer, scheduler, {"step": done},
                                                whole=done == data.total_steps)
            policy.saved()

    if last_checkpoint is None:  # zero steps (e.g. --max-steps 0 to export an --init model)
        last_checkpoint = checkpointer.save(step, model, model_config, optimizer, scheduler, {"step": step}, whole=True)
    result = TrainResult(
        out_dir=str(out_dir),
        steps=step,
        last_checkpoint=str(last_checkpoint),
        best_checkpoint=str(checkpointer.best) if (checkpointer.best / MODEL_FILE).exists() else None,
        best_val_loss=best_val,
        final_train_loss=last_train_loss,
        resumed_from_step=start_step,
        seconds=time.perf_counter() - started,
        clips_seen=(step - start_step) * config.batch_size,
    )
    if dist.is_main:
        atomic_write_json(out_dir / "result.json", result.to_portable_dict())
    _barrier(dist)
    return result


def _save_due(policy: SavePolicy, step: int, dist: DistEnv, device: torch.device) -> bool:
    """Whether to checkpoint after `step`: rank 0's verdict, shared when it depends on its clock."""
    due = policy.due(step)
    if dist.enabled and policy.every_seconds:
        flag = torch.tensor([float(due)], device=device if device.type == "cuda" else "cpu")
        torch.distributed.broadcast(flag, src=0)
        due = bool(flag.item())
    return due


# What a run writes in its output folder (moved aside together when a new configuration starts fresh).
METRICS_FILE = "metrics.jsonl"
RUN_FILES = ("checkpoints", "best", METRICS_FILE, *CURVE_FILES.values(), "result.json", "train_config.json")


def _fingerprint(config: TrainConfig, model_config: GroveConfig, data: _Data, dist: DistEnv) -> dict[str, Any]:
    """grove.resume.run_fingerprint of this run: its data and starting weights by content."""
    versions = {
        "train": records_version(data.train, _data_root(config.train_data)),
        "val": records_version(data.val, _data_root(config.val_data or config.train_data)),
        "init": weights_version(resolve_checkpoint(config.init)) if config.init is not None else None,
        "base_weights": weights_version(Path(model_config.base_weights)) if model_config.base_weights else None,
    }
    portable = _portable_model_config(model_config, Path(config.out_dir)).to_dict()
    return run_fingerprint(config.to_dict(), portable, versions, dist.world_size)


def _data_root(data: str) -> Path:
    path = Path(data)
    return path if path.is_dir() else path.parent


def _prepare_output(config: TrainConfig, model_config: GroveConfig, data: _Data, dist: DistEnv) -> Path | None:
    """The checkpoint this run continues from, or None to start fresh (rank 0 decides and tidies OUT,
    the others are told)."""
    choice = None
    if dist.is_main:
        found = _continue_or_start(Path(config.out_dir), _fingerprint(config, model_config, data, dist), config.resume)
        choice = None if found is None else str(found)
    if dist.enabled:
        box = [choice]
        torch.distributed.broadcast_object_list(box, src=0)
        choice = box[0]
    return None if choice is None else Path(choice)


def _continue_or_start(out_dir: Path, fingerprint: dict[str, Any], resume: bool) -> Path | None:
    """Same fingerprint and a checkpoint: continue from it. Otherwise start fresh: a previous run of
    another fingerprint is moved aside (grove.resume.supersede) with the reason logged; leftovers of
    this run that never checkpointed, or of any run when `resume` is off, are removed."""
    root = out_dir / "checkpoints"
    recorded = read_fingerprint(root / FINGERPRINT_FILE)
    last = latest_checkpoint(out_dir) if resume and recorded == fingerprint else None
    if last is not None:
        return last
    if not resume:
        if root.exists():
            logger.info("%s: resume is off: removing the previous run's checkpoints", out_dir)
        _remove_run_files(out_dir)
    elif recorded != fingerprint and any((out_dir / name).exists() for name in ("checkpoints", "best")):
        why = changed_fields(recorded, fingerprint) if recorded is not None else ["no fingerprint recorded (an older trainer's run)"]
        label = digest(recorded)[:12] if recorded is not None else "unfingerprinted"
        kept = supersede(out_dir, RUN_FILES, label)
        logger.warning("%s: the configuration changed (%s): starting fresh; the previous run is kept in %s",
                       out_dir, "; ".join(why), kept)
    else:  # a run that never checkpointed: what it left would be mistaken for this run's
        _remove_run_files(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / FINGERPRINT_FILE, fingerprint)
    return None


def _remove_run_files(out_dir: Path) -> None:
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _finished(out_dir: Path, checkpoint: Path, total_steps: int) -> bool:
    """A run whose last checkpoint is its last step and which wrote its result."""
    if not (out_dir / "result.json").is_file():
        return False
    return json.loads((checkpoint / STATE_FILE).read_text()).get("step") == total_steps


def _best_so_far(out_dir: Path, best_by: str) -> float | None:
    state_file = out_dir / "best" / STATE_FILE
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    return state.get("val/grounding" if best_by == "grounding" else "val/loss")


# Metrics that measure the machine, not the model (steps/s, clips/s): the callback gets them, the
# output folder does not (they would make two identical runs' metrics.jsonl differ).
TIMING_PREFIX = "perf/"


def _report(step: int, metrics: dict[str, float], callback: MetricsCallback | None, path: Path, dist: DistEnv) -> None:
    if not dist.is_main:
        return
    _append_metrics(path, step, {k: v for k, v in metrics.items() if not k.startswith(TIMING_PREFIX)})
    write_curves(path.parent)
    if callback is not None:
        callback(step, metrics)
