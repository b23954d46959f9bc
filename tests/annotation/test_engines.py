import sys
import types

import pytest

from annotation.engines import (
    FALLBACK,
    LLM,
    LLM_ENV,
    REPAIRED,
    InvalidAnswer,
    TransformersGenerator,
    VllmGenerator,
    answer_with_repair,
    build_vllm_sampling_params,
    chat_messages,
    make_generator,
    parse_dict_answer,
    reason_kind,
    repair_prompt,
    resolve_llm_options,
    string_schema,
    vllm_output_texts,
    vllm_sampling_options,
)
from annotation.stage2 import Stage2Stats


@pytest.fixture(autouse=True)
def _no_model_from_the_environment(monkeypatch):
    monkeypatch.delenv(LLM_ENV, raising=False)


def test_dict_answers_parse_from_json_or_python_literals():
    assert parse_dict_answer('{"CAPTION": "<p>a cup</p> moves."}', "CAPTION") == "<p>a cup</p> moves."
    assert parse_dict_answer("Sure! {'CATEGORY': 'a man'} Hope it helps.", "CATEGORY") == "a man"
    assert parse_dict_answer("{'X': 1} then {'CATEGORY': 'None'}", "CATEGORY") == "None"
    for bad in ("no dict here", "{'CAPTION': unterminated", '{"OTHER": "x"}', "{{{{"):
        with pytest.raises(InvalidAnswer, match="CAPTION"):
            parse_dict_answer(bad, "CAPTION")


def test_schemas_and_repair_prompts():
    schema = string_schema("CATEGORY", ["a man", "None"])
    assert schema["properties"]["CATEGORY"]["enum"] == ["a man", "None"] and schema["required"] == ["CATEGORY"]
    prompt = repair_prompt("Task.\nAnswer:", "garbage\n\n", "no tags", "CAPTION")
    assert prompt.startswith("Task.\nAnswer: garbage") and "no tags" in prompt and prompt.endswith("Answer:")


class _Recorder:
    """Stands in for the vllm module: records what the engine builds, answers like RequestOutput."""

    def __init__(self):
        self.module = types.ModuleType("fakevllm")
        self.params_module = types.ModuleType("fakevllm.sampling_params")
        self.calls = []
        recorder = self

        class StructuredOutputsParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class SamplingParams:
            def __init__(self, **kwargs):
                self.kwargs = kwargs

        class LLM:
            def __init__(self, **kwargs):
                recorder.llm_kwargs = kwargs

            def chat(self, messages, sampling_params=None, use_tqdm=True, chat_template=None,
                     add_generation_prompt=True, **kwargs):
                recorder.calls.append(("chat", messages, sampling_params))
                recorder.chat_options = {"chat_template": chat_template, "add_generation_prompt": add_generation_prompt}
                return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"answer {i}")])
                        for i in range(len(messages))]

            def generate(self, prompts, params, use_tqdm=True):
                recorder.calls.append(("generate", prompts, params))
                return [types.SimpleNamespace(outputs=[]) for _ in prompts]

        self.params_module.StructuredOutputsParams = StructuredOutputsParams
        self.module.SamplingParams = SamplingParams
        self.module.LLM = LLM
        self.module.sampling_params = self.params_module


@pytest.fixture
def fake_vllm(monkeypatch):
    recorder = _Recorder()
    monkeypatch.setitem(sys.modules, "vllm", recorder.module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", recorder.params_module)
    recorder.module.__name__ = "vllm"
    return recorder


def test_vllm_requests_use_structured_outputs_json():
    schema = string_schema("CAPTION")
    options = vllm_sampling_options(schema, max_tokens=64, temperature=0.0, seed=7)
    assert options == {"temperature": 0.0, "max_tokens": 64, "seed": 7, "structured_outputs": {"json": schema}}
    assert "structured_outputs" not in vllm_sampling_options(None, 64, 0.0, 7)
    assert "guided_decoding" not in options  # removed in vLLM 0.12


def test_vllm_sampling_params_are_built_with_the_current_api(fake_vllm):
    schema = string_schema("CAPTION")
    params = build_vllm_sampling_params(fake_vllm.module, vllm_sampling_options(schema, 32, 0.0, 0))
    assert params.kwargs["max_tokens"] == 32
    assert params.kwargs["structured_outputs"].kwargs == {"json": schema}


def test_vllm_engine_sends_every_prompt_in_one_call_and_parses_outputs(fake_vllm):
    engine = VllmGenerator("some/model", max_tokens=16, tensor_parallel_size=1)
    assert "vllm" in sys.modules and engine._llm is None  # nothing loaded before the first call
    texts = engine.generate(["p1", "p2", "p3"], [string_schema("CAPTION")] * 3)
    assert texts == ["answer 0", "answer 1", "answer 2"]
    (call,) = fake_vllm.calls
    # one conversation per prompt, the same one the transformers engine renders; the model's own template
    assert call[0] == "chat" and call[1] == [chat_messages(p) for p in ["p1", "p2", "p3"]]
    assert call[1][0] == [{"role": "user", "content": "p1"}]
    assert fake_vllm.chat_options == {"chat_template": None, "add_generation_prompt": True}
    assert len(call[2]) == 3 and call[2][0].kwargs["structured_outputs"].kwargs == {"json": string_schema("CAPTION")}
    assert call[2][0].kwargs["temperature"] == 0.0 and call[2][0].kwargs["max_tokens"] == 16
    assert fake_vllm.llm_kwargs == {"model": "some/model", "seed": 0, "enable_prefix_caching": True,
                                    "tensor_parallel_size": 1}
    plain = VllmGenerator("m", chat=False)
    assert plain.generate(["p"]) == [""]  # a request with no completion reads as empty text
    with pytest.raises(ValueError, match="2 prompts but 1 schemas"):
        engine.requests(["a", "b"], [None])


def test_vllm_output_texts():
    outputs = [types.SimpleNamespace(outputs=[types.SimpleNamespace(text="x"), types.SimpleNamespace(text="y")]),
               types.SimpleNamespace(outputs=[])]
    assert vllm_output_texts(outputs) == ["x", ""]


def test_importing_the_annotator_does_not_import_gpu_modules():
    import subprocess

    code = ("import sys, annotation.shards, annotation.stage2, annotation.stage3, annotation.engines, annotation.cli; "
            "print(any(m.split('.')[0] in ('vllm', 'flash_attn') for m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_transformers_engine_generates_in_prompt_order(tiny_causal_lm):
    engine = TransformersGenerator(str(tiny_causal_lm), batch_size=2, max_new_tokens=5)
    prompts = ["a short prompt", "a much longer prompt than the first one", "mid prompt"]
    answers = engine.generate(prompts)
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    assert engine.generate([prompts[1]]) == [answers[1]]  # greedy, and batching does not change an answer


def test_make_generator_checks_its_arguments():
    with pytest.raises(ValueError, match="unknown LLM engine"):
        make_generator("openai", {"model": "x"})
    with pytest.raises(ValueError, match=f"needs a model.*{LLM_ENV}"):
        make_generator("transformers", {})


def test_vllm_prefix_caching_is_on_unless_the_options_turn_it_off(fake_vllm):
    VllmGenerator("m").generate(["p"])
    assert fake_vllm.llm_kwargs["enable_prefix_caching"] is True
    engine = make_generator("vllm", {"model": "m", "enable_prefix_caching": False, "max_model_len": 4096})
    engine.generate(["p"])
    assert fake_vllm.llm_kwargs == {"model": "m", "seed": 0, "enable_prefix_caching": False, "max_model_len": 4096}
    assert engine.describe()["llm_options"]["enable_prefix_caching"] is False


def test_the_environment_names_the_model_over_params(monkeypatch):
    assert resolve_llm_options("vllm", {"model": "params/model", "max_tokens": 8}, {}) == {
        "model": "params/model", "max_tokens": 8}
    assert resolve_llm_options("vllm", {"model": "params/model"}, {LLM_ENV: "/models/llama"}) == {"model": "/models/llama"}
    assert resolve_llm_options("transformers", {}, {LLM_ENV: "/models/llama"}) == {"model": "/models/llama"}
    assert resolve_llm_options("transformers", {"model": "p"}, {LLM_ENV: " "}) == {"model": "p"}  # blank: unset
    assert resolve_llm_options("consensus", {"min_support": 0.2}, {LLM_ENV: "/m"}) == {"min_support": 0.2}
    options = {"model": "params/model"}
    monkeypatch.setenv(LLM_ENV, "/models/from-env")
    assert make_generator("transformers", options).describe()["model"] == "/models/from-env"  # nothing loaded yet
    assert make_generator("vllm", {}).describe()["model"] == "/models/from-env"
    assert options == {"model": "params/model"}  # the caller's options are not changed


class _Scripted:
    """Answers from a script, one list per call; records prompts and schemas."""

    def __init__(self, *calls):
        self.calls, self.prompts, self.schemas = list(calls), [], []

    def describe(self):
        return {"engine": "scripted"}

    def generate(self, prompts, schemas=None):
        self.prompts.append(list(prompts))
        self.schemas.append(list(schemas))
        return self.calls.pop(0)


def _as_int(i, text):
    value = parse_dict_answer(text, "N")
    if not isinstance(value, int):
        raise InvalidAnswer(f"N is {value!r}, not a number")
    return value


def test_answer_with_repair_asks_once_repairs_once_and_counts():
    generator = _Scripted(["{'N': 1}", "{'N': 'two'}", "nothing", "{'N': 4}"], ["{'N': 2}", "still nothing"])
    stats = Stage2Stats()
    schemas = [string_schema("N")] * 4
    answers = answer_with_repair(generator, ["a", "b", "c", "d"], schemas, "N", _as_int, stats)
    assert [(a.value, a.source) for a in answers] == [(1, LLM), (2, REPAIRED), (None, FALLBACK), (4, LLM)]
    assert answers[2].reason == "the answer is not a dictionary with the key 'N'"
    assert (stats.llm, stats.repaired, stats.fallbacks) == (2, 1, 1)
    assert stats.fallback_reasons == {"the answer is not a dictionary with the key '…'": 1}
    # the repair round: only the invalid ones, each with its own answer and reason, the same schemas
    assert generator.prompts[1][0].startswith("b {'N': 'two'}") and "N is 'two', not a number" in generator.prompts[1][0]
    assert generator.prompts[1][1].startswith("c nothing") and generator.schemas[1] == schemas[:2]
    # all valid: no repair call, and no counts without a counter
    generator = _Scripted(["{'N': 5}"])
    assert answer_with_repair(generator, ["e"], [None], "N", _as_int) == [type(answers[0])(5, LLM)]
    assert len(generator.prompts) == 1


def test_reason_kinds_drop_quoted_values():
    assert reason_kind("'a mug' is not one of the categories or 'None'") == "'…' is not one of the categories or '…'"
    assert reason_kind('the tagged phrase "a man\'s hat" names nothing') == "the tagged phrase '…' names nothing"


def test_the_paper_profile_names_llama2_chat_for_both_llm_stages(monkeypatch):
    from pathlib import Path

    import yaml

    annotation = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())["paper"]["annotation"]
    for stage in ("stage2", "stage3"):
        engine, options = annotation[stage], annotation[f"{stage}_options"]
        assert engine in ("transformers", "vllm") and options["model"] == "meta-llama/Llama-2-13b-chat-hf"
        assert make_generator(engine, options).describe()["model"] == options["model"]  # valid options, nothing loaded
        monkeypatch.setenv(LLM_ENV, "/models/llama-2-70b-chat")
        assert make_generator(engine, options).describe()["model"] == "/models/llama-2-70b-chat"
        monkeypatch.delenv(LLM_ENV)
