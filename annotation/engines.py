"""LLM engines for stages 2 and 3: the model they load, one way to ask, parse, repair and fall back.

An engine is a `TextGenerator`: a list of prompts in (a whole shard's, in one call, so the engine can
batch them), one text per prompt out; each prompt may carry a JSON schema that constrains the answer.
Both engines send a prompt as the same one-message conversation (`chat_messages`), rendered by the
model's own chat template (Llama-2 chat: `<s>[INST] {prompt} [/INST]`):
- `vllm`: offline batched generation with prefix caching (every prompt of a stage starts with the same
  instructions and in-context examples, so their KV blocks are computed once); the schema goes
  through vLLM's structured outputs, `SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))`
  (the `guided_*` fields were removed in vLLM 0.12). vllm is imported only when this engine is built.
- `transformers`: any causal LM, batched with left padding, greedy; the schema is stated in the
  prompt only, so its answers may be invalid more often.
Every stage asks through `answer_with_repair`: answers are parsed by `parse_dict_answer` (JSON or a
Python dict literal) and checked by the stage's validator; an invalid answer gets one repair prompt,
and what is still invalid is left to the stage's fallback; the counts go to the shard's stats.

Which model: options `model` (params' `stage2_options` / `stage3_options`, or `--stage2-option
model=...`), overridden by `$GROVE_ANNOTATION_LLM` for both stages (`resolve_llm_options`).
"""

from __future__ import annotations

import ast
import importlib
import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Generic, Mapping, Protocol, Sequence, TypeVar, runtime_checkable

logger = logging.getLogger(__name__)

Schema = dict[str, Any]
T = TypeVar("T")

LLM_ENGINES = ("transformers", "vllm")
# a local folder or hub id; wins over the `model` option of both LLM stages
LLM_ENV = "GROVE_ANNOTATION_LLM"


@runtime_checkable
class TextGenerator(Protocol):
    def describe(self) -> dict[str, Any]: ...

    def generate(self, prompts: Sequence[str], schemas: Sequence[Schema | None] | None = None) -> list[str]: ...


def model_from_environment(options: Mapping[str, Any], variable: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`options` with `$variable`, where set and not blank, as its `model` (a local folder or hub id)."""
    resolved = dict(options)
    override = (os.environ if environ is None else environ).get(variable, "").strip()
    if override:
        if resolved.get("model") not in (None, override):
            logger.info("$%s=%s replaces the configured model %s", variable, override, resolved["model"])
        resolved["model"] = override
    return resolved


def resolve_llm_options(engine: str, options: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The options an LLM engine is built with: `$GROVE_ANNOTATION_LLM` over the `model` option.

    Other engines' options come back unchanged. Whatever hashes a stage's configuration should hash
    this result, so that a model named by the environment changes the annotator version too.
    """
    if engine not in LLM_ENGINES:
        return dict(options)
    return model_from_environment(options, LLM_ENV, environ)


def chat_messages(prompt: str) -> list[dict[str, str]]:
    """The conversation a prompt is sent as, by every engine: one user turn, no system prompt (the
    prompt carries its own instructions; Llama-2 chat's default system prompt is no longer applied)."""
    return [{"role": "user", "content": prompt}]


class InvalidAnswer(ValueError):
    """An LLM answer that cannot be used; the message is the reason, shown to the model on repair."""


_BRACES = re.compile(r"\{.*?\}", re.DOTALL)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


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


def reason_kind(reason: str) -> str:
    """A rejection reason without its quoted values, so that the stats count kinds, not phrases."""
    return _QUOTED.sub("'…'", reason).strip()


class LlmCounts(Protocol):
    """The per-shard counters every LLM stage keeps (Stage2Stats, Stage3Stats)."""

    llm: int  # usable first answers
    repaired: int  # usable answers to the repair prompt
    fallbacks: int  # prompts whose two answers were both unusable
    fallback_reasons: Counter  # reason_kind of the last answer -> prompts


LLM, REPAIRED, FALLBACK = "llm", "llm-repaired", "fallback"


@dataclass(frozen=True)
class Answer(Generic[T]):
    """What one prompt got: a validated value and where it came from, or the reason it needs the fallback."""

    value: T | None
    source: str  # LLM, REPAIRED or FALLBACK (value None)
    reason: str = ""  # why the last unusable answer was rejected


def answer_with_repair(
    generator: TextGenerator,
    prompts: Sequence[str],
    schemas: Sequence[Schema | None],
    key: str,
    validate: Callable[[int, str], T],
    counts: LlmCounts | None = None,
) -> list[Answer[T]]:
    """Ask every prompt in one call, repair the invalid answers in one more call, count what happened.

    `validate(i, text)` turns prompt i's answer into its value or raises InvalidAnswer with the
    reason, which the repair prompt shows the model. Answers with FALLBACK as source are left for the
    caller's fallback (consensus, lexical); `counts` has them counted already.
    """
    outcomes: list[Answer[T]] = [Answer(None, FALLBACK, "not asked")] * len(prompts)
    failed: dict[int, tuple[str, str]] = {}  # prompt -> (its answer, why it is unusable)
    for i, text in _ask(generator, list(prompts), list(schemas), outcomes):
        try:
            outcomes[i] = Answer(validate(i, text), LLM)
        except InvalidAnswer as exc:
            outcomes[i] = Answer(None, FALLBACK, str(exc))
            failed[i] = (text, str(exc))
    retry = sorted(failed)
    if retry:
        repairs = [repair_prompt(prompts[i], *failed[i], key) for i in retry]
        repaired: list[Answer[T] | None] = [None] * len(retry)
        for j, text in _ask(generator, repairs, [schemas[i] for i in retry], repaired):
            try:
                repaired[j] = Answer(validate(retry[j], text), REPAIRED)
            except InvalidAnswer as exc:
                repaired[j] = Answer(None, FALLBACK, str(exc))
        for i, outcome in zip(retry, repaired):
            outcomes[i] = outcome
    if counts is not None:
        for outcome in outcomes:
            if outcome.source == LLM:
                counts.llm += 1
            elif outcome.source == REPAIRED:
                counts.repaired += 1
            else:
                counts.fallbacks += 1
                counts.fallback_reasons[reason_kind(outcome.reason)] += 1
    return outcomes


def _ask(generator: TextGenerator, prompts: list[str], schemas: list[Schema | None],
         outcomes: list) -> list[tuple[int, str]]:
    """(index, answer) for every prompt that fits the generator's context. A prompt that does not is never
    sent (an overlong prompt is cut or refused by the engines); its outcome becomes a fallback saying why."""
    overflow = getattr(generator, "context_overflow", None)
    blocked = {i: reason for i, prompt in enumerate(prompts) if overflow is not None and (reason := overflow(prompt))}
    for i, reason in blocked.items():
        outcomes[i] = Answer(None, FALLBACK, reason)
    asked = [i for i in range(len(prompts)) if i not in blocked]
    if blocked:
        logger.warning("%d of %d prompts do not fit the model's context; they fall back: %s", len(blocked), len(prompts),
                       next(iter(blocked.values())))
    answers = generator.generate([prompts[i] for i in asked], [schemas[i] for i in asked]) if asked else []
    return list(zip(asked, answers))


# ----------------------------------------------------------------------------------------------
# transformers


class TransformersGenerator:
    """Greedy batched generation with any causal LM from a local path or hub id, on CPU or GPU.

    On a GPU the weights keep their saved dtype (Llama-2: float16) and use flash-attention 2 where it
    is installed; on the CPU they are float32 (half-precision matmuls are slow or missing there).
    """

    def __init__(
        self,
        model: str,
        batch_size: int = 8,
        max_new_tokens: int = 96,
        device: str | None = None,
        dtype: str | None = None,
        chat_template: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self.model_name = model
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.device = device
        self.dtype = dtype
        self.chat_template = chat_template
        self.progress = progress
        self._model: Any = None
        self._tokenizer: Any = None

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "transformers",
            "model": self.model_name,
            "max_new_tokens": self.max_new_tokens,
            "dtype": self.dtype,
            "chat_template": self.chat_template,
        }

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

        from grove.train import attention_implementation

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cpu":
            logger.info("transformers engine: no GPU, running %s on the CPU", self.model_name)
        tokenizer = AutoTokenizer.from_pretrained(self.model_name)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token  # Llama-2 has none; masked out, never generated
        dtype = self.dtype or ("float32" if torch.device(device).type == "cpu" else "auto")
        options: dict[str, Any] = {"dtype": dtype}
        attention = attention_implementation(torch.device(device))
        if attention is not None:
            options["attn_implementation"] = attention
        model = AutoModelForCausalLM.from_pretrained(self.model_name, **options).to(device).eval()
        # greedy, whatever sampling defaults the checkpoint ships (Llama-2 chat: temperature 0.6, top_p 0.9);
        # replaced rather than passed to generate(), which would merge the shipped ones back in
        model.generation_config = GenerationConfig(
            max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=model.generation_config.bos_token_id, eos_token_id=model.generation_config.eos_token_id,
        )
        self._tokenizer, self._model, self.device = tokenizer, model, device

    def render(self, prompt: str) -> str:
        """The text the model reads: the chat template applied to `chat_messages(prompt)`, where the
        tokenizer has a template (it writes the BOS token itself) and `chat_template` is on."""
        if self._uses_chat_template():
            return self._tokenizer.apply_chat_template(chat_messages(prompt), tokenize=False, add_generation_prompt=True)
        return prompt

    def _uses_chat_template(self) -> bool:
        return self.chat_template and bool(getattr(self._tokenizer, "chat_template", None))

    def context_overflow(self, prompt: str) -> str | None:
        """Why `prompt` and its answer do not fit the model's context (Llama-2: 4096 positions), or None."""
        if self._model is None:
            self._load()
        limit = getattr(self._model.config, "max_position_embeddings", None)
        if not limit:
            return None
        tokens = len(self._tokenizer(self.render(prompt), add_special_tokens=not self._uses_chat_template())["input_ids"])
        if tokens + self.max_new_tokens <= limit:
            return None
        return (f"the prompt does not fit the model's context: '{tokens}' prompt tokens and up to "
                f"'{self.max_new_tokens}' answer tokens > '{limit}'")

    def generate(self, prompts: Sequence[str], schemas: Sequence[Schema | None] | None = None) -> list[str]:
        import torch

        if not prompts:
            return []
        if self._model is None:
            self._load()
        rendered = [self.render(p) for p in prompts]
        # a rendered chat starts with its BOS token already: the tokenizer must not add a second one
        special = not self._uses_chat_template()
        # similar lengths together: less padding; answers go back to their prompt's position
        order = sorted(range(len(rendered)), key=lambda i: len(rendered[i]))
        answers = [""] * len(rendered)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            inputs = self._tokenizer([rendered[i] for i in batch], return_tensors="pt", padding=True,
                                     add_special_tokens=special).to(self.device)
            with torch.inference_mode():
                output = self._model.generate(**inputs)
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
    """vLLM offline engine: all prompts of a call in one `LLM.chat` (or `LLM.generate` with `chat=False`),
    one SamplingParams per prompt; `llm_options` go to `vllm.LLM` (tensor_parallel_size, dtype,
    gpu_memory_utilization, max_model_len, ...), with prefix caching on unless they say otherwise."""

    def __init__(
        self,
        model: str,
        max_tokens: int = 128,
        temperature: float = 0.0,
        seed: int = 0,
        chat: bool = True,
        enable_prefix_caching: bool = True,
        **llm_options: Any,
    ) -> None:
        self.model_name = model
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.seed = seed
        self.chat = chat
        self.llm_options = {"enable_prefix_caching": enable_prefix_caching, **llm_options}
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
            raise RuntimeError(
                "the vllm engine needs the vllm package, and a release that fits this project's torch pin "
                "(README, 'Annotation LLMs'); the transformers engine runs the same prompts without it"
            ) from exc
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
            # the model's chat template renders them, as apply_chat_template does for transformers
            outputs = self._llm.chat([chat_messages(p) for p in prompts], params, use_tqdm=True)
        else:
            outputs = self._llm.generate(list(prompts), params, use_tqdm=True)
        return vllm_output_texts(outputs)


GENERATORS: dict[str, type] = {"transformers": TransformersGenerator, "vllm": VllmGenerator}


def make_generator(engine: str, options: Mapping[str, Any]) -> TextGenerator:
    """The engine, built with `resolve_llm_options` (the environment's model over the configured one)."""
    if engine not in GENERATORS:
        raise ValueError(f"unknown LLM engine {engine!r}: use one of {sorted(GENERATORS)}")
    options = resolve_llm_options(engine, options)
    if "model" not in options:
        raise ValueError(
            f"the {engine} engine needs a model (a local folder or hub id): --stage2-option model=..., "
            f"the profile's stage2_options/stage3_options `model`, or ${LLM_ENV}"
        )
    return GENERATORS[engine](**options)
