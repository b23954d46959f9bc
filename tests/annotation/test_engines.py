import sys
import types

import pytest

from annotation.engines import (
    InvalidAnswer,
    TransformersGenerator,
    VllmGenerator,
    build_vllm_sampling_params,
    make_generator,
    parse_dict_answer,
    repair_prompt,
    string_schema,
    vllm_output_texts,
    vllm_sampling_options,
)


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

            def chat(self, conversations, params, use_tqdm=True):
                recorder.calls.append(("chat", conversations, params))
                return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=f"answer {i}")])
                        for i in range(len(conversations))]

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
    assert call[0] == "chat" and [c[0]["content"] for c in call[1]] == ["p1", "p2", "p3"]
    assert len(call[2]) == 3 and fake_vllm.llm_kwargs == {"model": "some/model", "seed": 0, "tensor_parallel_size": 1}
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
    with pytest.raises(ValueError, match="needs a model"):
        make_generator("transformers", {})
