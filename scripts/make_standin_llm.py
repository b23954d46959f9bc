"""A tiny random-weight stand-in of the annotation LLM (Llama-2 chat), made offline and deterministically.

    .venv/bin/python scripts/make_standin_llm.py OUT [--seed 0] [--vocab-size 1000]

OUT gets the file layout of meta-llama/Llama-2-13b-chat-hf (the `paper` profile's stage-2/3 model),
loaded by the same classes: `LlamaForCausalLM` weights as safetensors with their config.json and
generation_config.json, and a `LlamaTokenizer` as tokenizer.model (SentencePiece) + tokenizer.json +
tokenizer_config.json (with Llama-2 chat's chat template) + special_tokens_map.json. Point the engines
at it (`--stage2-option model=OUT`, or `GROVE_ANNOTATION_LLM=OUT`) to run stages 2 and 3 end to end
without the model hub: the prompts, the chat rendering, batching, parsing, repair and fallback all
run; the answers are noise, so every answer takes the repair and then the fallback path.

The tokenizer is trained here rather than taken from the project's tiny tokenizer: that one is a
lower-casing WordPiece with GROVE's `<p>` tokens as special tokens, so it would neither round-trip the
prompts (`CAPTION`) nor decode the tags. This one has Llama-2's settings (BPE with byte fallback, no
normalisation, `<unk>`/`<s>`/`</s>` = 0/1/2, no pad token), trained on the annotation prompts and
generated caption-like lines, seeded, single-threaded and unshuffled: the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import tempfile
from pathlib import Path
from typing import Any

STANDS_IN_FOR = "meta-llama/Llama-2-13b-chat-hf"

# Llama-2 chat's chat template, as its tokenizer_config.json carries it (no default system prompt):
# `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {answer} </s><s>[INST] ...`
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

# Llama-2-13b-chat-hf's generation_config.json (its sampling defaults; the engines decode greedily)
GENERATION_CONFIG = {"bos_token_id": 1, "do_sample": True, "eos_token_id": 2, "max_length": 4096,
                     "pad_token_id": 0, "temperature": 0.6, "top_p": 0.9}

_WORDS = {
    "subject": ["a man", "a woman", "a person", "a hand", "a child", "a small red cup", "a large blue box",
                "a yellow ball", "a wooden spoon", "a green bottle"],
    "verb": ["cut", "hold", "move", "push", "stir", "slice", "pour", "pick up", "place", "be", "stay"],
    "object": ["", "a knife", "a red tomato", "a pan", "the bowl", "a white plate", "some water", "a board"],
    "prep": ["on", "in", "with", "to", "next to", "over", "into"],
    "place": ["the left", "the right", "a table", "the kitchen", "the scene", "a wooden board"],
}


def corpus(seed: int, lines: int = 4000) -> list[str]:
    """The annotation prompts and `lines` generated frame clauses and answers, in a fixed order."""
    from annotation.stage2 import load_prompt

    rng = random.Random(seed)
    text = [line for name in ("stage2.txt", "stage3.txt", "summary.txt") for line in load_prompt(name).splitlines()]
    for i in range(lines):
        subject, verb, obj = (rng.choice(_WORDS[k]) for k in ("subject", "verb", "object"))
        prep, place = rng.choice(_WORDS["prep"]), rng.choice(_WORDS["place"])
        if i % 3 == 0:
            text.append(json.dumps([[subject, verb, obj, [prep, place]]]))
        elif i % 3 == 1:
            text.append(f"{{'CAPTION': '<p>{subject}</p> {verb}s <p>{obj or place}</p> {prep} {place}.'}}")
        else:
            text.append(f"{{'CATEGORY': '{rng.choice([subject, obj or place, 'None'])}'}} {rng.randint(0, 99)}")
    return [line for line in text if line.strip()]


def train_sentencepiece(seed: int, vocab_size: int) -> bytes:
    """A Llama-2-style SentencePiece BPE model (tokenizer.model bytes), deterministic for `seed`."""
    import sentencepiece as spm

    if hasattr(spm, "set_random_generator_seed"):
        spm.set_random_generator_seed(seed + 1)
    model = io.BytesIO()
    # from an iterator into memory: no file paths end up in the trainer spec stored in the model
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus(seed)), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", allow_whitespace_only_pieces=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, unk_piece="<unk>", bos_piece="<s>", eos_piece="</s>",
        num_threads=1, input_sentence_size=0, shuffle_input_sentence=False, minloglevel=2,
    )
    return model.getvalue()


def tokenizer_config() -> dict[str, Any]:
    """Llama-2-13b-chat-hf's tokenizer_config.json fields."""
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "chat_template": LLAMA2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "legacy": False,
        "model_max_length": 4096,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
        "unk_token": "<unk>",
    }


def make_standin_llm(out: str | Path, seed: int = 0, vocab_size: int = 1000) -> Path:
    """Write the stand-in into `out` (created; files already there are overwritten) and return it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(train_sentencepiece(seed, vocab_size))
    _write_json(out / "tokenizer_config.json", tokenizer_config())
    _write_json(out / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})
    # tokenizer.json: transformers' own conversion of tokenizer.model (what the hub's file is too)
    with tempfile.TemporaryDirectory() as scratch:
        for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
            (Path(scratch) / name).write_bytes((out / name).read_bytes())
        tokenizer = AutoTokenizer.from_pretrained(scratch)
    tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    # Llama-2-13b's shape scaled down: no grouped-query attention, SwiGLU width ~2.7x, RMSNorm 1e-5,
    # 4096 positions, untied embeddings, float16 weights as released
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=172, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096, rms_norm_eps=1e-5,
        rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=None,
        initializer_range=0.02,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float16)
    model.save_pretrained(out)
    _write_json(out / "generation_config.json", GENERATION_CONFIG)
    _write_json(out / "standin.json", {"stands_in_for": STANDS_IN_FOR, "seed": seed, "vocab_size": len(tokenizer),
                                       "weights": "random (torch.manual_seed(seed)); its answers are noise"})
    return out


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (a model folder the engines load)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=1000)
    args = parser.parse_args()
    out = make_standin_llm(args.out, args.seed, args.vocab_size)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f"{out}: a random-weight stand-in of {STANDS_IN_FOR} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
