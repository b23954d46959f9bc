"""Phrase embeddings: the packaged MiniLM offline, masked batch means equal one-phrase means, the model is named."""

import numpy as np
import pytest
import torch

from evaluation.embeddings import (
    OFFICIAL_MODEL,
    PACKAGED_NAME,
    EmbeddingModelError,
    load_phrase_embedder,
    packaged_model_path,
    unit_rows,
)


@pytest.fixture(scope="module")
def embedder():
    return load_phrase_embedder("all-MiniLM-L6-v2")


def test_packaged_model_is_found_and_named(embedder):
    assert (packaged_model_path() / "model.safetensors").is_file()
    assert embedder.name == PACKAGED_NAME


def test_batched_masked_mean_equals_the_official_single_phrase_mean(embedder):
    phrases = ["a man", "the wooden cutting board on the left", "hands", "a man"]
    batched = embedder(phrases)
    for phrase, vector in zip(phrases, batched):
        inputs = embedder.tokenizer(phrase, return_tensors="pt", max_length=512, truncation=True)
        with torch.no_grad():
            single = embedder.model(**inputs).last_hidden_state[0].mean(0).numpy()  # eval_iground.py's pooling
        np.testing.assert_allclose(vector, single, atol=2e-6)  # batched only with equal token counts: no padding
    unit = unit_rows(batched)
    assert unit[0] @ unit[3] == pytest.approx(1.0)
    assert unit[0] @ unit[1] < 0.5


def test_auto_prefers_the_official_model_and_says_which_ran():
    try:
        load_phrase_embedder(OFFICIAL_MODEL)
    except EmbeddingModelError as exc:  # not in this machine's Hugging Face cache: auto falls back, and says so
        assert OFFICIAL_MODEL in str(exc)
        assert load_phrase_embedder("auto").name == PACKAGED_NAME
    else:
        assert load_phrase_embedder("auto").name == OFFICIAL_MODEL
    with pytest.raises(EmbeddingModelError, match="unknown phrase-embedding model"):
        load_phrase_embedder("no-such-model")


def test_a_local_model_folder_is_loaded_and_named(tmp_path):
    import shutil

    folder = tmp_path / "bert-base-uncased"
    shutil.copytree(packaged_model_path(), folder)
    local = load_phrase_embedder(str(folder))
    assert local.name == str(folder) and str(folder) in local.describe() and "[bert, 384-d" in local.describe()
    np.testing.assert_array_equal(local(["a red onion"]), load_phrase_embedder("all-MiniLM-L6-v2")(["a red onion"]))
