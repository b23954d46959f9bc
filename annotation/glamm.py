"""Stage-1 backend `glamm`: GLaMM's grounded conversation generation (GCG) on every 5 fps frame, the paper's
stage 1 (grove_spec 5). Each frame gets GLaMM's GCG prompt; each `[SEG]` of its answer becomes a SAM mask
and the mask a box (grove/model/glamm.py says how, exactly as the official GLaMM inference does it).

    grove annotate --catalog CAT --out OUT --stage1 glamm --stage1-option model=/weights/GLaMM-GranD-Pretrained

Options (`--stage1-option key=value`):
- `model`: an imported GLaMM checkpoint (`grove weights import --from glamm SRC --grounding-size 1024 --out
  DIR`), or a GLaMM checkpoint as released (pytorch_model*.bin or safetensors + config.json + tokenizer
  files), which is imported on first use into `cache_dir` with SAM's position embeddings at their own
  resolution (1024 px for GLaMM: the same import), once per source (keyed by its files' names, sizes and
  times; a lock file keeps concurrent shards from importing twice).
- `clip`: with a released checkpoint, a CLIP folder to take the vision tower from (the import's `--clip`;
  GLaMM's inference reloads openai/clip-vit-large-patch14-336, which GLaMM never trained); default the
  checkpoint's own tower. `decoder_heads`: SAM decoder heads for that import (8; not in the weights).
- `cache_dir`: default `$GROVE_CACHE_DIR/glamm`, else `~/.cache/grove/glamm`.
- `batch_size`: frames per forward pass (8), across clips; `max_new_tokens`: 512 (GLaMM's GCG evaluation);
  `device`: cuda where there is one, else cpu; `dtype`: bfloat16 on cuda (GLaMM's), float32 on the CPU;
  `instruction`: GLaMM's GCG instruction unless given.

Per frame: GLaMM's cleaned caption, and one (phrase, box) entry for each `[SEG]` that grounds a `<p>`
phrase with a non-empty mask (a phrase may repeat). Boxes are the masks' tight bounds in the decoded
frame's pixels, scaled to the clip's width and height. A phrase whose mask is empty stays in the caption
only. A clip whose video cannot be decoded, or whose frames meet a model error even when run one by one,
is a ClipFailure; no clip raises.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from grove.io import exclusive_lock
from annotation.records import Box, ClipFailure, ClipFrames, ClipRequest, FrameAnnotation
from annotation.stage1 import Stage1Context

logger = logging.getLogger(__name__)

PROGRESS_SECONDS = 30.0
IMPORT_LAYOUT = "glamm-native-sam-1"  # changes when the on-the-fly import would write something else


def default_cache_dir() -> Path:
    root = os.environ.get("GROVE_CACHE_DIR")
    return Path(root) / "glamm" if root else Path.home() / ".cache" / "grove" / "glamm"


def resolve_glamm_checkpoint(model: str | Path, clip: str | None = None, cache_dir: str | Path | None = None,
                             decoder_heads: int = 8) -> Path:
    """An imported checkpoint folder as given, or a released GLaMM checkpoint imported into the cache."""
    from grove.model.store import is_full_checkpoint

    path = Path(model)
    if is_full_checkpoint(path):
        return path
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such GLaMM checkpoint (an imported folder or a released GLaMM folder)")
    from grove.weights.importer import import_checkpoint, native_grounding_size
    from grove.weights.sources import open_checkpoint

    def files(folder: str | Path | None) -> list[list[Any]]:
        if folder is None:
            return []
        return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in open_checkpoint(folder).files]

    key = {"layout": IMPORT_LAYOUT, "source": str(path.resolve()), "files": files(path),
           "clip": str(Path(clip).resolve()) if clip else None, "clip_files": files(clip), "decoder_heads": decoder_heads}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = root / f"{path.resolve().name}-{digest}"
    if is_full_checkpoint(out):
        return out
    with exclusive_lock(root / f".{out.name}.lock"):
        if not is_full_checkpoint(out):
            size = native_grounding_size(path)
            logger.info("glamm: importing %s into %s (SAM at its own %d px)", path, out, size)
            import_checkpoint("glamm", path, out, clip=clip, decoder_heads=decoder_heads, grounding_size=size)
    return out


class GlammCaptioner:
    def __init__(
        self,
        context: Stage1Context,
        model: str,
        clip: str | None = None,
        cache_dir: str | None = None,
        decoder_heads: int = 8,
        batch_size: int = 8,
        max_new_tokens: int = 512,
        device: str | None = None,
        dtype: str | None = None,
        instruction: str | None = None,
    ) -> None:
        from grove.model.glamm import GCG_INSTRUCTION

        if batch_size < 1 or max_new_tokens < 1:
            raise ValueError(f"batch_size and max_new_tokens must be >= 1, got {batch_size}, {max_new_tokens}")
        self.context = context
        self.model_name = str(model)
        self.clip = clip
        self.cache_dir = cache_dir
        self.decoder_heads = int(decoder_heads)
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self.dtype = dtype
        self.instruction = instruction if instruction is not None else GCG_INSTRUCTION
        self._checkpoint: Path | None = None
        self._gcg: Any = None

    # -- what decides the output
    @property
    def checkpoint(self) -> Path:
        if self._checkpoint is None:
            self._checkpoint = resolve_glamm_checkpoint(self.model_name, self.clip, self.cache_dir, self.decoder_heads)
        return self._checkpoint

    def _device_and_dtype(self) -> tuple[str, str]:
        import torch

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = self.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
        return device, dtype

    def describe(self) -> dict[str, Any]:
        """The model (as given, the checkpoint used, where it came from with the source files' hashes, the
        hash of its weight index), the prompt and every option that changes the output."""
        from grove.model.config import GroveConfig
        from grove.model.glamm import gcg_prompt
        from grove.model.store import INDEX_FILE

        folder = self.checkpoint
        provenance_file = folder / "provenance.json"
        provenance = json.loads(provenance_file.read_text()) if provenance_file.is_file() else None
        config = GroveConfig.from_json_file(folder / "config.json")
        device, dtype = self._device_and_dtype()
        return {
            "backend": "glamm",
            "model": self.model_name,
            "checkpoint": str(folder),
            "weights_index_sha256": hashlib.sha256((folder / INDEX_FILE).read_bytes()).hexdigest(),
            "provenance": {k: provenance.get(k) for k in ("origin", "format", "source", "source_files", "clip_from",
                                                          "clip_files")} if provenance else None,
            "sam_image_size": config.grounding_image_size,
            "prompt": gcg_prompt(self.instruction),
            "max_new_tokens": self.max_new_tokens,
            "dtype": dtype,
            "device": device,
            "mask": "logits > 0 at the frame's size; box = the mask's tight bounds; empty mask: no box",
        }

    # -- captioning
    def _load(self) -> Any:
        if self._gcg is None:
            from grove.model.glamm import GlammGcg

            device, dtype = self._device_and_dtype()
            self._gcg = GlammGcg.from_checkpoint(self.checkpoint, device=device, dtype=dtype, instruction=self.instruction)
        return self._gcg

    def _answer(self, frames: list[np.ndarray]) -> list[Any]:
        """GCG answers of a batch of frames; a failing batch is retried frame by frame, and a frame that
        still fails gets its exception instead of an answer."""
        gcg = self._load()
        try:
            return gcg(frames, max_new_tokens=self.max_new_tokens)
        except Exception as exc:  # noqa: BLE001 - one bad frame must not fail the others of its batch
            if len(frames) == 1:
                return [exc]
            logger.warning("glamm: a batch of %d frames failed (%s: %s); retrying frame by frame",
                           len(frames), type(exc).__name__, exc)
        return [answer for frame in frames for answer in self._answer([frame])]

    def caption_clips(self, clips: Sequence[ClipRequest]) -> list[ClipFrames | ClipFailure]:
        from grove.data.video import DecodeError, open_video

        self._load()
        results: list[ClipFrames | ClipFailure | None] = [None] * len(clips)
        answers: dict[int, list[Any]] = {}
        sizes: dict[int, tuple[int, int]] = {}
        pending: list[tuple[int, int, np.ndarray]] = []  # (clip slot, frame position, frame)
        progress = _Progress(sum(len(c.frame_ids) for c in clips))

        def run(batch: list[tuple[int, int, np.ndarray]]) -> None:
            for (slot, position, _), answer in zip(batch, self._answer([frame for _, _, frame in batch])):
                answers[slot][position] = answer
            progress.add(len(batch))

        for slot, clip in enumerate(clips):
            try:
                with open_video(clip.video_file, self.context.video_backend) as reader:
                    frames = reader.get_frames(list(clip.frame_ids))
            except (DecodeError, OSError, IndexError) as exc:
                results[slot] = ClipFailure(clip.key, f"cannot decode {clip.video_file}: {exc}")
                progress.add(len(clip.frame_ids))
                continue
            answers[slot] = [None] * len(frames)
            sizes[slot] = (int(frames.shape[2]), int(frames.shape[1])) if len(frames) else (clip.width, clip.height)
            pending.extend((slot, position, frame) for position, frame in enumerate(frames))
            while len(pending) >= self.batch_size:
                run(pending[: self.batch_size])
                pending = pending[self.batch_size :]
        if pending:
            run(pending)
        for slot, frame_answers in answers.items():
            results[slot] = self._clip_frames(clips[slot], frame_answers, sizes[slot])
        return [r for r in results if r is not None]

    def _clip_frames(self, clip: ClipRequest, answers: list[Any], size: tuple[int, int]) -> ClipFrames | ClipFailure:
        errors = [a for a in answers if isinstance(a, Exception)]
        if errors:
            return ClipFailure(clip.key, f"GLaMM failed on {len(errors)} of {len(answers)} frames: "
                                         f"{type(errors[0]).__name__}: {errors[0]}")
        scale = (clip.width / size[0], clip.height / size[1])
        out = []
        for index, frame_id, answer in zip(clip.frame_indices, clip.frame_ids, answers):
            phrases, boxes = answer.grounded()
            scaled = [_scale_box(box, scale, (clip.width, clip.height)) for box in boxes]
            out.append(FrameAnnotation(index, frame_id, answer.caption, list(phrases), scaled))
        return ClipFrames(clip.key, out)


def _scale_box(box: Box, scale: tuple[float, float], size: tuple[int, int]) -> Box:
    """A box in decoded-frame pixels -> the clip's pixels (clamped to the frame), rounded to 0.01 px."""
    x1, y1, x2, y2 = box
    sx, sy = scale
    width, height = size
    return (round(min(x1 * sx, width), 2), round(min(y1 * sy, height), 2),
            round(min(x2 * sx, width), 2), round(min(y2 * sy, height), 2))


class _Progress:
    """A log line with rate and ETA at most every PROGRESS_SECONDS (GLaMM is slow: minutes per shard)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.start = self.last = time.perf_counter()

    def add(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self.last >= PROGRESS_SECONDS or self.done == self.total:
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            logger.info("glamm: %d/%d frames (%.2f frames/s, ETA %.0f s)", self.done, self.total, rate, eta)
            self.last = now
