"""Memory of `grove weights import` on a 7B-size GROVE checkpoint: it must stream, not load the checkpoint.

    .venv/bin/python benchmarks/bench_weights_import.py --like runs/official_parity/model/grove_release \
        --tokenizer runs/official_parity/tokenizer/glamm_tokenizer [--work /big/disk/folder]

Writes a synthetic checkpoint in the released layout (bf16, 500 MB shards, config.json) at the paper's
size: LLaMA-7B (Vicuna's shapes), CLIP ViT-L/14-336, SAM ViT-H, GLaMM's projectors. The names come from
real layouts: transformers' LlamaForCausalLM and CLIPVisionModel for the LLM and CLIP tower (the
official code uses these classes; forward parity checks their names), and an official release folder
(`--like`: e.g. the reduced-width one run_parity.sh writes, whose SAM is already full size) for the
rest. Values are constant (the import does not look at them). Then it imports it in a subprocess and
samples the subprocess's memory every 0.1 s: peak RSS, and its anonymous part (what the process
allocated; the rest is the page cache of the memory-mapped shards, which the kernel can drop).
Prints the checkpoint size, the peak RSS and the ratio. Needs ~2 x 16 GB of disk in --work.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grove.weights import official  # noqa: E402

LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32010, rms_norm_eps=1e-5, max_position_embeddings=4096)
CLIP_L = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336, patch_size=14)


def paper_layout(like: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Official key -> (shape, where the name came from) of a 7B GROVE."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(**LLAMA_7B))
        clip = CLIPVisionModel(CLIPVisionConfig(**CLIP_L))
    layout = {name: (tuple(t.shape), "LlamaForCausalLM") for name, t in llm.state_dict().items() if "rotary" not in name}
    for name, tensor in clip.state_dict().items():
        if name != "embeddings.position_ids":
            layout[official.CLIP + name] = (tuple(tensor.shape), "CLIPVisionModel")
    for k in range(CLIP_L["num_hidden_layers"] // 3):  # the official conv adapters after every third layer
        layout[f"{official.CLIP}encoder.adapters.{k}.conv3d.weight"] = ((1024, 1024, 3, 3, 3), "official adapters")
        layout[f"{official.CLIP}encoder.adapters.{k}.conv3d.bias"] = ((1024,), "official adapters")
        layout[f"{official.CLIP}encoder.adapters.{k}.alpha"] = ((1,), "official adapters")
    hidden = LLAMA_7B["hidden_size"]
    layout["model.mm_projector.0.weight"] = ((hidden, 1024), "GLaMM")
    layout["model.mm_projector.0.bias"] = ((hidden,), "GLaMM")
    layout["model.mm_projector.2.weight"] = ((hidden, hidden), "GLaMM")
    layout["model.mm_projector.2.bias"] = ((hidden,), "GLaMM")
    layout["model.text_hidden_fcs.0.0.weight"] = ((hidden, hidden), "GLaMM")
    layout["model.text_hidden_fcs.0.0.bias"] = ((hidden,), "GLaMM")
    layout["model.text_hidden_fcs.0.2.weight"] = ((256, hidden), "GLaMM")
    layout["model.text_hidden_fcs.0.2.bias"] = ((256,), "GLaMM")
    index = json.loads((like / "model.safetensors.index.json").read_text())["weight_map"]
    for name, shard in index.items():
        if name.startswith(("model.grounding_encoder.", "model.region_encoder.")):
            with safe_open(str(like / shard), framework="pt") as handle:
                layout[name] = (tuple(handle.get_slice(name).get_shape()), str(like))
    return layout


def write_checkpoint(layout: dict, folder: Path, like: Path, shard_bytes: int = 500 * 1024**2) -> int:
    folder.mkdir(parents=True)
    pending: dict[str, torch.Tensor] = {}
    size = total = 0
    weight_map: dict[str, str] = {}
    shards: list[list[str]] = []

    def flush() -> None:
        nonlocal pending, size
        if pending:
            name = f"part-{len(shards) + 1:05d}.safetensors"
            save_file(pending, str(folder / name), metadata={"format": "pt"})
            shards.append(list(pending))
            weight_map.update({k: name for k in pending})
            pending, size = {}, 0

    for name, (shape, _) in layout.items():
        tensor = torch.full(shape, 0.01, dtype=torch.bfloat16)
        if size + tensor.nbytes > shard_bytes:
            flush()
        pending[name] = tensor
        size += tensor.nbytes
        total += tensor.nbytes
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config = json.loads((like / "config.json").read_text())
    config.update(LLAMA_7B)
    config.pop("mm_vision_tower", None)  # CLIP ViT-L's 16 heads = 1024 / 64, the default rule
    (folder / "config.json").write_text(json.dumps(config))
    return total


def rss_parts(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon"):
            fields[key] = int(value.split()[0]) * 1024
    return fields.get("VmRSS", 0), fields.get("RssAnon", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--like", type=Path, required=True, help="an official release folder (any width) for the SAM names")
    parser.add_argument("--tokenizer", type=Path, required=True, help="a tokenizer folder of the official vocabulary")
    parser.add_argument("--work", type=Path, default=None, help="where the 2 x 16 GB go (default: a temporary folder)")
    parser.add_argument("--shard-gb", type=float, default=2.0)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(dir=args.work))
    try:
        layout = paper_layout(args.like)
        started = time.perf_counter()
        total = write_checkpoint(layout, work / "grove_7b", args.like)
        print(f"synthetic checkpoint: {len(layout)} tensors, {sum(torch.Size(s).numel() for s, _ in layout.values()) / 1e9:.2f}B "
              f"parameters, {total / 1e9:.2f} GB bf16, written in {time.perf_counter() - started:.0f}s")
        command = [str(REPO / ".venv" / "bin" / "grove"), "weights", "import", "--from", "grove", str(work / "grove_7b"),
                   "--tokenizer", str(args.tokenizer), "--out", str(work / "imported"), "--no-hash", "--shard-gb", str(args.shard_gb)]
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        peak = peak_anon = 0
        while process.poll() is None:
            try:
                rss, anon = rss_parts(process.pid)
            except FileNotFoundError:
                break
            peak, peak_anon = max(peak, rss), max(peak_anon, anon)
            time.sleep(0.1)
        output = process.stdout.read()
        if process.returncode != 0:
            raise SystemExit(f"import failed:\n{output[-3000:]}")
        seconds = time.perf_counter() - started
        written = sum(f.stat().st_size for f in (work / "imported").glob("model-*.safetensors"))
        print(output.strip().splitlines()[0])
        print(f"import: {seconds:.0f}s, {written / 1e9:.2f} GB written in {args.shard_gb:g} GB shards")
        print(f"peak RSS {peak / 1e9:.2f} GB ({peak / total:.1%} of the checkpoint); anonymous {peak_anon / 1e9:.2f} GB "
              f"({peak_anon / total:.1%}); goal: well under the checkpoint size")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
