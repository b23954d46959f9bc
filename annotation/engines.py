"""LLM engines for stages 2 and 3, and the parsing of their dict-shaped answers.

An engine is a `TextGenerator`: a list of prompts in (a whole shard's, in one call, so the engine can
batch them), one text per prompt out; each prompt may carry a JSON schema that constrains the answer.
- `vllm`: offline batched generation; the schema goes through vLLM's structured outputs,
  `SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))` (the `guided_*` fields
  were removed in vLLM 0.12). vllm is imported only when this engine is built.
- `transformers`: any causal LM, batched with left padding, greedy; the schema is stated in the
  prompt only, so its answers may be invalid and go through repair and fallback.
Answers are parsed by `parse_dict_answer`, which accepts JSON or a Python dict literal.
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import re
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

logger = logging.getLogger(__name__)

Schema = dict[str, Any]


@runtime_checkable
class TextGenerator(Protocol):
    def describe(self) -> dict[str, Any]: ...

    def generate(self, prompts: Sequence[str], schemas: Sequence[Schema | None] | None = None) -> list[str]: ...


class InvalidAnswer(ValueError):
    """An LLM answer that cannot be used; the message is the reason, shown to the model on repair."""


_BRACES = re.compile(r"\{.*?\}", re.DOTALL)


def parse_dict_answer(text: str, key: str) -> Any:
    """The value under `key` of the first dict in `text`, written as JSON or as a Python literal."""
    for candidate in _BRACES.findall(text):
        for loads in (json.loads, ast.literal_eval):
            try:
                value = loads(candidate)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(value, dict) and key in value:
                return value[key]
    raise InvalidAnswer(f"the answer is not a dictionary with the key {key!r}")


def string_schema(key: str, choices: Sequence[str] | None = None) -> Schema:
    """JSON schema of `{key: <string>}`, or of `{key: <one of choices>}`."""
    value: Schema = {"type": "string"} if choices is None else {"type": "string", "enum": list(choices)}
    return {"type": "object", "properties": {key: value}, "required": [key], "additionalProperties": False}


def repair_prompt(prompt: str, answer: str, reason: str, key: str) -> str:
    """The one second chance an invalid answer gets: the same task, the bad answer and what was wrong."""
    shown = " ".join(answer.split())[:400]
    return (
        f"{prompt} {shown}\n\nThat answer cannot be used: {reason}. "
        f"Answer again with only a Python dictionary with the key {key!r}.\nAnswer:"
    )


# ----------------------------------------------------------------------------------------------
# transformers


class TransformersGenerator:
    """Greedy batched generation with any causal LM from a local path or hub id, on CPU or GPU."""

    def __init__(
        self,
        model: str,
        batch_size: int = 8,
        max_new_tokens: int = 96,
        device: str | None = None,
        chat_template: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.model_name = model
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.chat_template = chat_template
        self.progress = progress
        self._model: Any = None
        self._tokenizer: Any = None

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "transformers",
            "model": self.model_name,
            "max_new_tokens": self.max_new_tokens,
            "chat_template": self.chat_template,
        }

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu":
            logger.info("transformers engine: no GPU, running %s on the CPU", self.model_name)
        tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = AutoModelForCausalLM.from_pretrained(self.model_name).to(device).eval()
        self._tokenizer, self._model, self.device = tokenizer, model, device

    def _render(self, prompt: str) -> str:
        if self.chat_template and getattr(self._tokenizer, "chat_template", None):
            return self._tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt

    def generate(self, prompts: Sequence[str], schemas: Sequence[Schema | None] | None = None) -> list[str]:
        import torch

        if self._model is None:
            self._load()
        rendered = [self._render(p) for p in prompts]
        # similar lengths together: less padding; answers go back to their prompt's position
        order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
        answers = [""] * len(rendered)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            inputs = self._tokenizer([rendered[i] for i in batch], return_tensors="pt", padding=True).to(self.device)
            with torch.inference_mode():
                output = self._model.generate(
                    **inputs,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=self._tokenizer.pad_token_id,
                )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            for i, text in zip(batch, self._tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                answers[i] = text
            if self.progress is not None:
                self.progress(min(start + self.batch_size, len(order)), len(order))
        return answers


# ----------------------------------------------------------------------------------------------
# vLLM: request building and output parsing are plain functions, tested without vllm installed.


def vllm_sampling_options(schema: Schema | None, max_tokens: int, temperature: float, seed: int) -> dict[str, Any]:
    """Keyword arguments of one request's SamplingParams; the schema as vLLM >= 0.12 structured outputs."""
    options: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens, "seed": seed}
    if schema is not None:
        options["structured_outputs"] = {"json": schema}
    return options


def build_vllm_sampling_params(vllm: Any, options: dict[str, Any]) -> Any:
    """`vllm.SamplingParams` from `vllm_sampling_options`, given the imported vllm module."""
    options = dict(options)
    structured = options.pop("structured_outputs", None)
    if structured is not None:
        params_module = importlib.import_module(f"{vllm.__name__}.sampling_params")
        options["structured_outputs"] = params_module.StructuredOutputsParams(**structured)
    return vllm.SamplingParams(**options)


def vllm_output_texts(outputs: Sequence[Any]) -> list[str]:
    """The first completion's text of each `RequestOutput`, in request order ('' when none came back)."""
    return [output.outputs[0].text if output.outputs else "" for output in outputs]


class VllmGenerator:
    """vLLM offline engine: all prompts of a call in one `LLM.generate`, one SamplingParams per prompt."""

    def __init__(
        self,
        model: str,
        max_tokens: int = 128,
        temperature: float = 0.0,
        seed: int = 0,
        chat: bool = True,
        **llm_options: Any,
    ) -> None:
        self.model_name = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.chat = chat
        self.llm_options = llm_options
        self._vllm: Any = None
        self._llm: Any = None

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "vllm",
            "model": self.model_name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "seed": self.seed,
            "chat": self.chat,
            "llm_options": self.llm_options,
        }

    def _load(self) -> None:
        try:
            self._vllm = importlib.import_module("vllm")
        except ImportError as exc:
            raise RuntimeError("the vllm engine needs vLLM on a GPU machine: pip install '.[gpu]'") from exc
        self._llm = self._vllm.LLM(model=self.model_name, seed=self.seed, **self.llm_options)

    def requests(self, prompts: Sequence[str], schemas: Sequence[Schema | None] | None) -> list[dict[str, Any]]:
        schemas = list(schemas) if schemas is not None else [None] * len(prompts)
        if len(schemas) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(schemas)} schemas")
        return [vllm_sampling_options(s, self.max_tokens, self.temperature, self.seed) for s in schemas]

    def generate(self, prompts: Sequence[str], schemas: Sequence[Schema | None] | None = None) -> list[str]:
        if not prompts:
            return []
        if self._llm is None:
            self._load()
        params = [build_vllm_sampling_params(self._vllm, o) for o in self.requests(prompts, schemas)]
        if self.chat:
            conversations = [[{"role": "user", "content": p}] for p in prompts]
            outputs = self._llm.chat(conversations, params, use_tqdm=True)
        else:
            outputs = self._llm.generate(list(prompts), params, use_tqdm=True)
        return vllm_output_texts(outputs)


GENERATORS: dict[str, type] = {"transformers": TransformersGenerator, "vllm": VllmGenerator}


def make_generator(engine: str, options: dict[str, Any]) -> TextGenerator:
    if engine not in GENERATORS:
        raise ValueError(f"unknown LLM engine {engine!r}: use one of {sorted(GENERATORS)}")
    if "model" not in options:
        raise ValueError(f"the {engine} engine needs a model (a local path or hub id): --stage2-option model=...")
    return GENERATORS[engine](**options)
