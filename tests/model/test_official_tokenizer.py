"""The official vocabulary and token ids, checked against ids recorded with the official GROVE code
(tests/fixtures/official/tokenizer: a LLaMA-style SentencePiece tokenizer, GLaMM's tokenizer made from
it as GLaMM's train.py does, and tokenizer_reference.json written by the official code paths)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from grove.model import GroveConfig
from grove.model.processor import GroveProcessor
from grove.model.tokenizer import load_tokenizer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "official" / "tokenizer"
REFERENCE = json.loads((FIXTURES / "tokenizer_reference.json").read_text())


def tokenizer_folder(tmp_path: Path, name: str) -> str:
    """A fixture tokenizer folder with the shared SentencePiece model beside it."""
    folder = tmp_path / name
    shutil.copytree(FIXTURES / name, folder)
    shutil.copy(FIXTURES / "llama" / "tokenizer.model", folder / "tokenizer.model")
    return str(folder)


@pytest.fixture(scope="module")
def glamm(tmp_path_factory):
    # GLaMM's released file layout (added_tokens.json), the one the official train.py reads correctly
    return load_tokenizer(tokenizer_folder(tmp_path_factory.mktemp("tok"), "glamm_oldformat"))


def test_grove_tokens_on_glamm_get_the_official_ids(glamm):
    official = REFERENCE["grove_pretrained_from_glamm_oldformat"]
    assert len(glamm) == official["len"] == 32010
    assert {token: glamm.convert_tokens_to_ids(token) for token in official["ids"]} == official["ids"]
    assert glamm.pad_token == glamm.unk_token


def test_from_a_plain_llama_tokenizer_the_official_not_pretrained_order(tmp_path):
    tokenizer = load_tokenizer(tokenizer_folder(tmp_path, "llama"))
    official = REFERENCE["grove_not_pretrained_from_llama"]["ids"]
    expected = {token: i for token, i in official.items() if token != "[SEG]"}  # GROVE does not add [SEG]
    assert {token: tokenizer.convert_tokens_to_ids(token) for token in expected} == expected


@pytest.mark.parametrize("name", sorted(REFERENCE["infer_iground_prompts"]))
def test_the_prompt_and_answers_tokenize_to_the_official_ids(glamm, name):
    """infer_iground.tokenize_prompt + tokenizer_image_token ids, incl. the '▁' piece the official
    tokenization puts before every [DET] (the [DET] query is that piece's hidden state)."""
    item = REFERENCE["infer_iground_prompts"][name]
    processor = GroveProcessor(GroveConfig.paper_small(), glamm)
    answer = item["answer"]
    ids = processor.prompt_ids() + (processor.answer_ids(answer) + [processor.ids.eos] if answer else [])
    assert ids == item["input_ids"]
    assert ids.count(processor.ids.det) == item["n_det"]
