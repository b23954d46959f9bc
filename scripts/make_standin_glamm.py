"""A tiny random-weight stand-in of GLaMM (the `paper` profile's stage-1 model), made offline and deterministically.

    .venv/bin/python scripts/make_standin_glamm.py OUT

OUT gets GLaMM's released layout, as `MBZUAI/GLaMM-GranD-Pretrained` ships it: `pytorch_model.bin` under the
official state-dict names (LLaMA, the CLIP vision tower, `mm_projector`, SAM's image encoder, prompt encoder
and mask decoder, `text_hidden_fcs`), `config.json` with the LLaMA fields and `mm_vision_tower`, and GLaMM's
tokenizer files (LLaMA's SentencePiece model with GLaMM's added tokens: vocabulary 32007). Point the stage-1
backend at it (`--stage1-option model=OUT`, or `GROVE_ANNOTATION_GLAMM=OUT`): it imports the folder as it
would a real GLaMM checkpoint and runs GCG on every 5 fps frame. Its answers are noise (random weights).

The tensors are the official module fixtures of tests/fixtures/official (written by running the official
GROVE code at reduced width, seeded random initialisation: scripts/official_parity/official_side.py), less
GROVE's additions to GLaMM (CLIP adapters, box head, temporal objectness), with a transformers CLIP vision
tower of 8 x 8 patches (GLaMM keeps openai's CLIP as it is) and the vocabulary rows of GLaMM's added tokens
drawn here, seeded. The same call writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

STANDS_IN_FOR = "MBZUAI/GLaMM-GranD-Pretrained"
FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official"
FIXTURE_MODULES = ("clip_tower", "llm", "sam_encoder", "grounding_decoder")
GROVE_ONLY = (".adapters.", "bbox_prediction_head", "temporal_objectness_head")  # not in GLaMM
CLIP_PREFIX = "model.vision_tower.vision_tower.vision_model."
# 64 patches: short sequences; a multiple of the 16 rows that GROVE's official CLIP-adapter reshape needs,
# which the import's GROVE config checks. 32 channels: what the fixture's mm_projector reads.
CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64, patch_size=8,
            hidden_act="quick_gelu")
GLAMM_VOCAB = 32007  # LLaMA's 32000 + <im_start> <im_end> <bbox> <point> [SEG] <p> </p>


def read_fixture(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """A fixture's config and its module weights under their official names."""
    from safetensors import safe_open

    with safe_open(str(FIXTURES / f"{name}.safetensors"), framework="pt") as handle:
        config = json.loads(handle.metadata()["config"])
        weights = {key.removeprefix("weights."): handle.get_tensor(key).float()
                   for key in handle.keys() if key.startswith("weights.")}
    return config, weights


def tiny_clip() -> torch.nn.Module:
    """A seeded transformers CLIP vision tower."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    return CLIPVisionModel(CLIPVisionConfig(**CLIP))


def standin_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """The stand-in's tensors under GLaMM's state-dict names (module docstring)."""
    state: dict[str, torch.Tensor] = {}
    for name in FIXTURE_MODULES:
        state.update({k: v for k, v in read_fixture(name)[1].items() if not any(t in k for t in GROVE_ONLY)})
    state = {k: v for k, v in state.items() if not k.startswith(CLIP_PREFIX)}
    state.update({CLIP_PREFIX + k.removeprefix("vision_model."): v for k, v in tiny_clip().state_dict().items()})
    generator = torch.Generator().manual_seed(seed)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = state[key]
        state[key] = torch.cat([rows, 0.02 * torch.randn(GLAMM_VOCAB - rows.shape[0], rows.shape[1], generator=generator)])
    return state


def write_glamm_layout(folder: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
    """`state` (default: `standin_state()`) as a GLaMM checkpoint in its released layout, in `folder` (new)."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    for file in (FIXTURES / "tokenizer" / "glamm_oldformat").iterdir():
        shutil.copy(file, folder / file.name)
    shutil.copy(FIXTURES / "tokenizer" / "llama" / "tokenizer.model", folder / "tokenizer.model")
    torch.save(standin_state() if state is None else state, folder / "pytorch_model.bin")
    llm = read_fixture("llm")[0]
    tower = folder / "clip-tiny"  # GLaMM names a hub CLIP here; the import reads its head count from it
    tower.mkdir()
    (tower / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "num_attention_heads": CLIP["num_attention_heads"]}))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llava", "architectures": ["GLaMMForCausalLM"], "hidden_size": llm["hidden"],
        "intermediate_size": llm["intermediate"], "num_hidden_layers": llm["layers"], "num_attention_heads": llm["heads"],
        "num_key_value_heads": llm["kv_heads"], "rms_norm_eps": llm["rms_eps"], "rope_theta": llm["rope_theta"],
        "max_position_embeddings": llm["max_pos"], "vocab_size": GLAMM_VOCAB, "mm_vision_tower": str(tower),
        "out_dim": 32, "use_cache": False, "stands_in_for": STANDS_IN_FOR,
    }, indent=1))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="a new folder")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out}: already exists")
    write_glamm_layout(args.out)
    print(f"{args.out}: GLaMM-layout stand-in for {STANDS_IN_FOR} (random weights)")


if __name__ == "__main__":
    main()
