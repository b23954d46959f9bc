"""Stages 2 and 3 end to end with the transformers engine on the Llama-2 chat stand-in
(scripts/make_standin_llm.py: real classes and files, random weights). Its answers are noise, so
every prompt takes the repair path and then the fallback; the counts must say so, per shard."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from annotation.engines import LLM_ENV, TransformersGenerator, chat_messages, make_generator
from annotation.records import VideoCaption
from annotation.shards import AnnotatorConfig, annotate, read_done, shards_of
from annotation.stage2 import Stage2
from annotation.stage3 import ClassifyRequest, LexicalClassifier, LlmClassifier, Stage3Stats, make_classifier
from tests.annotation.test_stage2 import CUP_CLIP, HAND_CLIP, PARSER

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "make_standin_llm.py"


def _script():
    spec = importlib.util.spec_from_file_location("make_standin_llm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _script().make_standin_llm(tmp_path_factory.mktemp("llama2-chat-standin"), seed=0)


@pytest.fixture(autouse=True)
def _no_model_from_the_environment(monkeypatch):
    monkeypatch.delenv(LLM_ENV, raising=False)


class Spy:
    """Wraps an engine and records each call's prompts."""

    def __init__(self, generator):
        self.generator, self.calls = generator, []

    def describe(self):
        return self.generator.describe()

    def generate(self, prompts, schemas=None):
        self.calls.append(list(prompts))
        return self.generator.generate(prompts, schemas)


def test_the_standin_has_llama2_chats_layout_classes_and_template(standin, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    names = {p.name for p in standin.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.model", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json"} <= names
    assert sum(p.stat().st_size for p in standin.iterdir()) < 5e6
    config = AutoConfig.from_pretrained(standin)
    assert config.architectures == ["LlamaForCausalLM"] and config.model_type == "llama"
    tokenizer = AutoTokenizer.from_pretrained(standin)
    assert type(tokenizer).__name__ == "LlamaTokenizer" and len(tokenizer) == config.vocab_size
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token) == (0, 1, 2, None)
    rendered = tokenizer.apply_chat_template(chat_messages("Classify.\nAnswer:\n"), tokenize=False, add_generation_prompt=True)
    assert rendered == "<s>[INST] Classify.\nAnswer: [/INST]"
    with_system = [{"role": "system", "content": "Be brief."}, *chat_messages("Hi")]
    assert tokenizer.apply_chat_template(with_system, tokenize=False) == "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"
    text = "{'CAPTION': '<p>a man</p> cuts <p>a red tomato</p> with ümlauts.'}"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text  # byte fallback
    # deterministic for a seed, different for another
    again = _script().make_standin_llm(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "config.json"):
        assert (again / name).read_bytes() == (standin / name).read_bytes(), name
    other = _script().make_standin_llm(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (standin / "model.safetensors").read_bytes()


def test_transformers_engine_sends_the_chat_with_one_bos_greedily(standin):
    engine = TransformersGenerator(str(standin), batch_size=2, max_new_tokens=4)
    seen = []
    answers = engine.generate(["first prompt", "a second, longer prompt", "third"])
    generate = engine._model.generate

    def record(**inputs):
        seen.append(inputs)
        return generate(**inputs)

    engine._model.generate = record
    assert engine.generate(["a second, longer prompt"]) == [answers[1]]  # batching does not change an answer
    ids = seen[0]["input_ids"][0].tolist()
    assert ids[:2] != [1, 1] and ids[0] == 1 and ids.count(1) == 1  # the template's <s>, not a second one
    assert engine.render("p") == "<s>[INST] p [/INST]"
    config = engine._model.generation_config
    assert config.do_sample is False and config.max_new_tokens == 4 and config.temperature is None  # not the checkpoint's
    assert engine._model.dtype.is_floating_point and str(engine._model.dtype) == "torch.float32"  # CPU: float32


def test_stage2_on_the_standin_repairs_then_falls_back_and_counts(standin):
    stage2 = Stage2("transformers", parser=PARSER, model=str(standin), max_new_tokens=8, batch_size=4)
    spy = stage2.llm.generator = Spy(stage2.llm.generator)
    results, stats = stage2.run([CUP_CLIP, HAND_CLIP])
    assert all(isinstance(r, VideoCaption) for r in results)
    assert [r.source for r in results] == ["consensus-fallback"] * 2 and all(r.note for r in results)
    assert [len(c) for c in spy.calls] == [2, 2]  # the shard's prompts in one call, their repairs in one more
    assert all("That answer cannot be used" in p for p in spy.calls[1])
    assert (stats.llm, stats.repaired, stats.fallbacks) == (0, 0, 2) and sum(stats.fallback_reasons.values()) == 2
    assert stage2.describe()["llm"]["engine"]["model"] == str(standin)


def test_stage3_on_the_standin_repairs_then_falls_back_to_lexical(standin):
    categories = ("a hand in a green glove", "a small red cup", "a large red cup")
    requests = [ClassifyRequest(p, categories) for p in ("a small red mug", "a palm in a green glove", "a plate")]
    classifier = make_classifier("transformers", PARSER, {"model": str(standin), "max_new_tokens": 8})
    assert isinstance(classifier, LlmClassifier)
    spy = classifier.generator = Spy(classifier.generator)
    stats = Stage3Stats()
    labels = classifier.classify(requests, stats)
    assert labels == LexicalClassifier(PARSER).classify(requests, Stage3Stats()) == [1, 0, -1]
    assert [len(c) for c in spy.calls] == [3, 3]
    assert (stats.llm, stats.repaired, stats.fallbacks) == (0, 0, 3) and sum(stats.fallback_reasons.values()) == 3


def test_the_counts_surface_per_shard_and_in_the_dataset(standin, synthetic, tmp_path, monkeypatch):
    monkeypatch.setenv(LLM_ENV, str(standin))  # the model comes from the environment: params name none
    config = AnnotatorConfig(stage2="transformers", stage3="transformers", stage2_options={"max_new_tokens": 6},
                             stage3_options={"max_new_tokens": 6, "batch_size": 16})
    run = annotate(synthetic.catalog, tmp_path / "auto", config, shard_size=6)
    shards = shards_of(synthetic.keys, 6)
    assert run.shards == len(shards) == 2
    total = {2: 0, 3: 0}
    for shard in shards:
        stage2 = read_done(tmp_path / "auto", 2, shard)["stats"]
        stage3 = read_done(tmp_path / "auto", 3, shard)["stats"]
        # every clip stage 1 captioned and every distinct phrase request took the repair and the fallback
        assert stage2["fallbacks"] == stage2["clips"] > 0 and stage2["llm"] == stage2["repaired"] == 0
        assert stage3["fallbacks"] == stage3["requests"] > 0 and stage3["llm"] == stage3["repaired"] == 0
        assert sum(stage2["fallback_reasons"].values()) == stage2["fallbacks"]
        total[2] += stage2["fallbacks"]
        total[3] += stage3["fallbacks"]
    manifest = json.loads((tmp_path / "auto" / "dataset.json").read_text())
    assert manifest["stats"]["stage2"]["fallbacks"] == total[2] and manifest["stats"]["stage3"]["fallbacks"] == total[3]


def test_make_generator_loads_nothing_until_asked(standin):
    engine = make_generator("transformers", {"model": str(standin)})
    assert engine._model is None and engine.generate([]) == []


def test_a_prompt_beyond_the_models_context_is_never_sent_and_falls_back_saying_why(standin):
    from annotation.engines import FALLBACK, InvalidAnswer, answer_with_repair, reason_kind

    engine = TransformersGenerator(str(standin), max_new_tokens=8)
    overlong = "a man cuts a red tomato on a wooden board. " * 600  # beyond Llama-2's 4096 positions
    assert engine.context_overflow("a short prompt") is None
    reason = engine.context_overflow(overlong)
    assert reason.startswith("the prompt does not fit the model's context") and reason.endswith("> '4096'")
    sent, generate = [], engine.generate
    engine.generate = lambda prompts, schemas=None: sent.append(list(prompts)) or generate(prompts, schemas)

    def unusable(i: int, text: str):
        raise InvalidAnswer("no label")

    counts = Stage3Stats()
    outcomes = answer_with_repair(engine, ["a short prompt", overlong], [None, None], "LABEL", unusable, counts)
    assert sent[0] == ["a short prompt"] and all(overlong not in p for call in sent for p in call)
    assert outcomes[1].source == FALLBACK and outcomes[1].reason == reason
    assert counts.fallbacks == 2 and counts.fallback_reasons[reason_kind(reason)] == 1
