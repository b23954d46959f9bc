"""Project side of the forward-parity check: the imported official model against the official outputs.

    .venv/bin/python scripts/official_parity/compare.py --work WORK [--imported WORK/imported]

WORK is what `official_side.py model` wrote (reference.safetensors / reference.json, from the official
`grove_transformers` model at reduced width, float32, CPU); WORK/imported is `grove weights import
--from grove WORK/grove_release` (run_parity.sh does both). This script loads the imported checkpoint
with this project's code (`grove.train.load_model`), feeds it the same pixels and ids, and prints the
largest absolute deviation of every output, with the tolerance it must meet. Exit 1 if any exceeds it.

Tolerances (float32 against float32 of other kernels: transformers 4.46 eager attention vs 5.x sdpa,
the official explicit attention of SAM vs transformers' SAM; official_interop.md: 1e-4 to 1e-3 per
tensor and 0.1 px on kept boxes are honest): see TOLERANCES.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from grove.model.processor import denormalize_boxes  # noqa: E402
from grove.train import load_model  # noqa: E402

# output -> (absolute tolerance, unit)
TOLERANCES = {
    "clip_features": (1e-4, ""),
    "video_tokens": (1e-4, ""),
    "sam_embeddings": (1e-4, ""),
    "dense_pe": (1e-5, ""),
    "final_hidden": (1e-3, ""),
    "lm_logits": (1e-3, ""),
    "queries": (1e-3, ""),
    "objectness_logits": (1e-3, ""),
    "boxes_all": (0.1, "px"),
    "boxes_kept": (0.1, "px"),
    "gen_boxes_kept": (0.1, "px"),
    "gen_objectness_logits": (1e-3, ""),
}


def to_project(pixels: torch.Tensor) -> torch.Tensor:
    """Official (B, C, T, H, W) -> this project's (B, T, C, H, W)."""
    return pixels.permute(0, 2, 1, 3, 4).contiguous()


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, float, str, bool]] = []

    def add(self, name: str, ours: torch.Tensor, theirs: torch.Tensor, tolerance_key: str | None = None) -> None:
        tolerance, unit = TOLERANCES[tolerance_key or name]
        if tuple(ours.shape) != tuple(theirs.shape):
            self.rows.append((name, f"{tuple(ours.shape)} vs {tuple(theirs.shape)}", float("inf"), tolerance, unit, False))
            return
        deviation = float((ours.float() - theirs.float()).abs().max()) if ours.numel() else 0.0
        self.rows.append((name, str(tuple(theirs.shape)), deviation, tolerance, unit, deviation <= tolerance))

    def equal(self, name: str, ok: bool, detail: str) -> None:
        self.rows.append((name, detail, 0.0 if ok else float("inf"), 0.0, "exact", ok))

    def print(self) -> bool:
        width = max(len(r[0]) for r in self.rows)
        print(f"{'output':<{width}}  {'shape':<22} {'max |dev|':>11}  {'tolerance':>10}  result")
        for name, shape, deviation, tolerance, unit, ok in self.rows:
            print(f"{name:<{width}}  {shape:<22} {deviation:>11.3g}  {tolerance:>8.0e}{unit:>2}  {'ok' if ok else 'FAIL'}")
        return all(r[5] for r in self.rows)


def kept(boxes: torch.Tensor, logits: torch.Tensor, threshold: float) -> torch.Tensor:
    return boxes[torch.sigmoid(logits) > threshold]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="official_side.py model --out folder")
    parser.add_argument("--imported", type=Path, help="the imported checkpoint (default WORK/imported)")
    args = parser.parse_args()
    imported = args.imported or args.work / "imported"
    meta = json.loads((args.work / "reference.json").read_text())
    ref = load_file(str(args.work / "reference.safetensors"))
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.perf_counter()
    model = load_model(imported).float()
    print(f"loaded {imported} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters) in {time.perf_counter() - started:.0f}s")
    if model.processor.ids.det != meta["det_token_idx"]:
        print(f"[DET] id {model.processor.ids.det} != official {meta['det_token_idx']}")
        return 1
    width, height = meta["original_size_WH"]
    threshold = meta["temp_objectness_threshold"]
    global_pixels = to_project(ref["input_global_pixels"])
    grounding_pixels = to_project(ref["input_grounding_pixels"])
    ids = ref["input_ids"].long()[None]
    table = Table()
    with torch.no_grad():
        table.add("clip_features", model.global_encoder(global_pixels), ref["clip_features"])
        table.add("video_tokens", model.encode_video(global_pixels), ref["video_tokens"])
        features = model.grounding_encoder(grounding_pixels)
        table.add("sam_embeddings", features[0], ref["sam_embeddings"])
        table.add("dense_pe", model.box_decoder.image_positional_embeddings(), ref["dense_pe"])
        hidden, expanded, _ = model._llm_hidden(ids, torch.ones_like(ids), None, global_pixels)
        table.add("final_hidden", hidden, ref["final_hidden"])
        table.add("lm_logits", model.llm.lm_head(hidden), ref["lm_logits"])
        queries, _ = model._queries(hidden, expanded)
        table.add("queries", queries[0], ref["queries"])
        boxes, logits = model.decode_boxes(features, queries, grounding_pixels)
        pixels = denormalize_boxes(boxes[0].float(), width, height)
        for t in range(pixels.shape[0]):
            table.add(f"objectness_logits_f{t}", logits[0, t], ref[f"objectness_logits_f{t}"], "objectness_logits")
            table.add(f"boxes_all_f{t}", pixels[t], ref[f"boxes_all_f{t}"], "boxes_all")
            table.add(f"boxes_kept_f{t}", kept(pixels[t], logits[0, t], threshold), ref[f"boxes_kept_f{t}"], "boxes_kept")
        compare_generation(model, global_pixels, features, grounding_pixels, meta, ref, table, width, height, threshold)
    ok = table.print()
    print(f"{'PASS' if ok else 'FAIL'}: {sum(r[5] for r in table.rows)}/{len(table.rows)} outputs within tolerance "
          f"({time.perf_counter() - started:.0f}s)")
    return 0 if ok else 1


def compare_generation(model, global_pixels, features, grounding_pixels, meta, ref, table: Table, width, height, threshold) -> None:
    """Greedy generation from the official prompts; the boxes of every [DET] in the generated sequence
    (teacher-forced over it, on the SAM features computed once)."""
    for tag, prompt in (("gen", meta["prompt_ids"]), ("gen_prefix", meta["input_ids"][:-1])):
        if f"{tag}_ids" not in ref:
            continue
        official = ref[f"{tag}_ids"].long()
        new = model.generate_ids(global_pixels, max_new_tokens=len(official) - len(prompt), prompt_ids=prompt)[0]
        eos = model.processor.ids.eos
        ours = torch.tensor(list(prompt) + _until_eos(new.tolist(), eos))
        table.equal(f"{tag}_ids", torch.equal(ours, official), f"{len(ours) - len(prompt)} vs {len(official) - len(prompt)} new")
        if f"{tag}_boxes_kept_f0" not in ref:
            continue
        sequence = official[None]
        hidden, expanded, _ = model._llm_hidden(sequence, torch.ones_like(sequence), None, global_pixels)
        queries, _ = model._queries(hidden, expanded)
        boxes, logits = model.decode_boxes(features, queries, grounding_pixels)
        pixels = denormalize_boxes(boxes[0].float(), width, height)
        for t in range(pixels.shape[0]):
            table.add(f"{tag}_objectness_logits_f{t}", logits[0, t], ref[f"{tag}_objectness_logits_f{t}"], "gen_objectness_logits")
            table.add(f"{tag}_boxes_kept_f{t}", kept(pixels[t], logits[0, t], threshold), ref[f"{tag}_boxes_kept_f{t}"], "gen_boxes_kept")


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


if __name__ == "__main__":
    raise SystemExit(main())
