"""A checkpoint as a folder that needs nothing outside itself: what a logged MLflow model carries.

A trainable-only checkpoint (grove/train.py) rebuilds its frozen weights from its config: from the
seeded random initialisation (self-contained), or from a full-weights folder (`base_weights`), hub or
local component sources and a tokenizer folder (all outside it). The first kind is copied as it is
(its safetensors weights, config, state and provenance; hard links where the file system allows). The
second is written whole, in the full-weights format of grove/model/store.py (every tensor as sharded
safetensors, the tokenizer under `tokenizer/`, a config naming the folder itself as `base_weights`), so
it loads on a machine that has neither the base folder nor the hub.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from grove.io import atomic_write_text, folder_written_via
from grove.model import GroveConfig
from grove.model.store import copy_tokenizer_files, save_full_weights
from grove.model.tokenizer import TINY_TOKENIZER
from grove.train import CONFIG_FILE, MODEL_FILE, PROVENANCE_FILE, STATE_FILE, load_model, resolve_checkpoint

logger = logging.getLogger(__name__)

# the files of a trainable-only checkpoint that loading and provenance read (not the trainer state)
CHECKPOINT_FILES = (MODEL_FILE, CONFIG_FILE, STATE_FILE, PROVENANCE_FILE)


def external_sources(config: GroveConfig) -> dict[str, str]:
    """What a checkpoint with this config reads from outside its folder, by config field."""
    outside = {name: value for name in ("base_weights", "llm_source", "clip_source", "sam_source")
               if (value := getattr(config, name)) is not None}
    if config.tokenizer_source != TINY_TOKENIZER:
        outside["tokenizer_source"] = config.tokenizer_source
    return outside


def write_standalone_checkpoint(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write the checkpoint (a checkpoint folder, or a training folder: its best, else last) into the new
    folder `out` so that `grove.train.load_model(out)` gives the same model with nothing else at hand.
    `out` must not exist; it appears only once complete (a temporary folder beside it is renamed)."""
    folder, out = resolve_checkpoint(checkpoint), Path(out)
    if out.exists():
        raise FileExistsError(f"{out}: already exists; a standalone checkpoint is written into a new folder")
    config = GroveConfig.from_json_file(folder / CONFIG_FILE)
    outside = external_sources(config)
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with folder_written_via(out, tmp):
        if outside or not (folder / MODEL_FILE).is_file():
            _write_whole(folder, tmp, config, outside)
        else:
            _link_files(folder, tmp)
    os.replace(tmp, out)
    return out


def _link_files(folder: Path, out: Path) -> None:
    """The checkpoint's own files, hard-linked (never written to again: a new checkpoint is a new folder) or copied."""
    for name in CHECKPOINT_FILES:
        source = folder / name
        if not source.is_file():
            continue
        try:
            os.link(source, out / name)
        except OSError:  # another file system, or one without hard links
            shutil.copy2(source, out / name)


def _write_whole(folder: Path, out: Path, config: GroveConfig, outside: dict[str, str]) -> None:
    """Every tensor of the loaded model, its tokenizer and a config that points at nothing outside `out`."""
    logger.info("%s reads %s from outside: writing every weight into %s", folder, ", ".join(sorted(outside)) or "sharded weights", out)
    model = load_model(folder, "cpu")
    save_full_weights(model, out)
    changes: dict[str, str | None] = {"base_weights": ".", "llm_source": None, "clip_source": None, "sam_source": None}
    if config.tokenizer_source != TINY_TOKENIZER:
        copy_tokenizer_files(model.processor.tokenizer, out)
        changes["tokenizer_source"] = "tokenizer"
    atomic_write_text(out / CONFIG_FILE, config.replace(**changes).to_json() + "\n")
    for name in (STATE_FILE, PROVENANCE_FILE):
        if (folder / name).is_file():
            shutil.copy2(folder / name, out / name)
