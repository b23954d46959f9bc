"""Project side of the GLaMM GCG parity: grove/model/glamm.py against the official GLaMM inference.

    .venv/bin/python scripts/official_parity/compare_glamm_gcg.py --work WORK [--imported WORK/imported_glamm_gcg]

WORK is what `official_side.py glamm-gcg` wrote: `glamm_gcg/` (a reduced-width GLaMM in its released layout,
SAM ViT-H at 1024 px as GLaMM hard-codes it) and `glamm_gcg_reference/` (three fixed images and what the
official eval/gcg/infer.py `inference()` and GLaMM's `evaluate()` made of them: pixels, ids, [SEG] queries,
SAM embeddings, low-resolution and final mask logits, texts). The imported checkpoint is
`grove weights import --from glamm WORK/glamm_gcg --clip WORK/clip-vit-tiny-patch14-336 --grounding-size 1024`
(run_parity.sh does it). Per image, two runs, both float32 on the CPU:
- free: GLaMM's GCG prompt, greedy, the same token budget as the official run;
- prefix: the prompt plus a teacher-forced answer start with three [SEG]s, 8 more tokens (its [SEG]s are
  decoded whatever the weights generate).
Each is fed the official pixels (model deviations alone); the project's own preprocessing of the image is
compared with the official pixels, and when they differ the free run is repeated on the project's pixels.
Printed: the largest deviation per output, pixels whose mask (logit > 0) differs, and box deviations
(boxes: tight bounds of the official binary masks, computed here with numpy, against the project's).
Exit 1 if anything exceeds its tolerance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from grove.model.glamm import GlammGcg, GlammInputs, gcg_caption  # noqa: E402

# output -> (absolute tolerance, unit); float32 against float32 of other kernels (official_interop.md)
TOLERANCES = {
    "clip pixels": (1e-5, ""),
    "sam pixels": (1e-4, ""),
    "sam embeddings": (1e-3, ""),
    "[SEG] queries": (1e-3, ""),
    "low-res mask logits": (1e-3, ""),
    "mask logits": (1e-3, ""),
    "boxes": (1.0, "px"),
    "mask pixels differing": (1e-3, "frac"),
}


def numpy_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Tight pixel-edge bounds of a boolean (H, W) mask, independently of grove.model.glamm.mask_box."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, float, str, bool]] = []

    def deviation(self, name: str, ours: torch.Tensor, theirs: torch.Tensor, key: str) -> None:
        tolerance, unit = TOLERANCES[key]
        if tuple(ours.shape) != tuple(theirs.shape):
            self.rows.append((name, f"{tuple(ours.shape)} vs {tuple(theirs.shape)}", float("inf"), tolerance, unit, False))
            return
        value = float((ours.float() - theirs.float()).abs().max()) if ours.numel() else 0.0
        self.rows.append((name, str(tuple(theirs.shape)), value, tolerance, unit, value <= tolerance))

    def value(self, name: str, detail: str, value: float, key: str) -> None:
        tolerance, unit = TOLERANCES[key]
        self.rows.append((name, detail, value, tolerance, unit, value <= tolerance))

    def exact(self, name: str, ok: bool, detail: str) -> None:
        self.rows.append((name, detail, 0.0 if ok else float("inf"), 0.0, "exact", ok))

    def print(self) -> bool:
        width = max(len(r[0]) for r in self.rows)
        print(f"{'output':<{width}}  {'detail':<26} {'max |dev|':>11}  {'tolerance':>13}  result")
        for name, detail, value, tolerance, unit, ok in self.rows:
            print(f"{name:<{width}}  {detail:<26} {value:>11.3g}  {tolerance:>8.0e} {unit:<4}  {'ok' if ok else 'FAIL'}")
        return all(r[5] for r in self.rows)


def compare_run(report: Report, label: str, gcg: GlammGcg, inputs: GlammInputs, ref: dict, key: str, prompt_len: int,
                new_tokens: int, captured: dict, sam: torch.Tensor | None = None) -> dict:
    """One official evaluate() call against the project's run on the same inputs."""
    official_input = ref[f"{key}_input_ids"].tolist()
    prefix = official_input[prompt_len:]
    captured.clear()
    answer = gcg.run(inputs, max_new_tokens=new_tokens, answer_prefix=prefix, keep_masks=True)[0]
    official_generated = ref[f"{key}_output_ids"].tolist()[len(official_input):]
    report.exact(f"{label}: generated ids", answer.answer_ids == official_generated,
                 f"{len(answer.answer_ids)} vs {len(official_generated)} ids")
    n_official = ref[f"{key}_mask_logits"].shape[0] if f"{key}_mask_logits" in ref else 0
    report.exact(f"{label}: [SEG] count", len(answer.segments) == n_official, f"{len(answer.segments)} vs {n_official}")
    summary = {"generated": len(answer.answer_ids), "seg": len(answer.segments), "ids_equal": answer.answer_ids == official_generated}
    if sam is not None and "features" in captured:  # SAM runs only for answers with a [SEG]
        report.deviation(f"{label}: SAM embeddings", captured["features"][0], sam, "sam embeddings")
    if not n_official or len(answer.segments) != n_official:
        return summary
    report.deviation(f"{label}: [SEG] queries", captured["queries"], ref[f"{key}_queries"], "[SEG] queries")
    report.deviation(f"{label}: low-res mask logits", captured["low_res"], ref[f"{key}_low_res"], "low-res mask logits")
    theirs = ref[f"{key}_mask_logits"]
    report.deviation(f"{label}: mask logits", answer.mask_logits, theirs, "mask logits")
    differing = int(((answer.mask_logits > 0) != (theirs > 0)).sum())
    report.value(f"{label}: mask pixels differing", f"{differing} of {theirs.numel()}", differing / theirs.numel(),
                 "mask pixels differing")
    worst, mismatched = 0.0, 0
    for segment, logits in zip(answer.segments, theirs):
        box = numpy_box((logits > 0).numpy())
        if (box is None) != (segment.box is None):
            mismatched += 1
        elif box is not None:
            worst = max(worst, max(abs(a - b) for a, b in zip(box, segment.box)))
    report.value(f"{label}: boxes", f"{n_official} boxes, {mismatched} empty/non", worst if not mismatched else float("inf"), "boxes")
    summary.update(max_box_px=worst, mask_pixels_differing=differing)
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="official_side.py glamm-gcg --out folder")
    parser.add_argument("--imported", type=Path, help="default WORK/imported_glamm_gcg")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    imported = args.imported or args.work / "imported_glamm_gcg"
    meta = json.loads((args.work / "glamm_gcg_reference" / "reference.json").read_text())
    ref = load_file(str(args.work / "glamm_gcg_reference" / "reference.safetensors"))
    gcg = GlammGcg.from_checkpoint(imported, device="cpu", dtype="float32", instruction=meta["instruction"])
    report = Report()

    # intermediates of the project's run, recorded as it runs (no second SAM pass)
    captured: dict = {}
    encode, decode = gcg.encode_grounding, gcg.decode_masks

    def encode_grounding(pixels):
        captured["features"] = encode(pixels)
        return captured["features"]

    def decode_masks(features, queries, owner):
        captured["queries"] = queries
        captured["low_res"] = decode(features, queries, owner)
        return captured["low_res"]

    gcg.encode_grounding, gcg.decode_masks = encode_grounding, decode_masks

    # The project tokenises as GLaMM's pinned transformers (4.28) does: no "▁" piece between a space and an
    # added token (<im_start>, <im_end>, <p>, [SEG], ...). The official code run here on transformers 4.46.3
    # keeps one before <im_start> and <im_end>; the check is that this is the only difference. The model
    # runs below then take the official ids, so that they compare the same computation.
    ours_prompt = gcg.prompt_ids
    space = gcg.model.processor.tokenizer.convert_tokens_to_ids("▁")
    added = set(gcg.model.processor.tokenizer.get_added_vocab().values())
    summaries = []
    for i, record in enumerate(meta["images"]):
        started = time.perf_counter()
        image = ref[f"image_{i}"].numpy()
        official_prompt = ref[f"free_{i}_input_ids"].tolist()
        without_space = [t for k, t in enumerate(official_prompt)
                         if not (t == space and k + 1 < len(official_prompt) and official_prompt[k + 1] in added)]
        report.exact(f"image {i}: prompt ids, but 4.46's '▁' pieces", ours_prompt == without_space,
                     f"{len(ours_prompt)} vs {len(official_prompt)} - {len(official_prompt) - len(without_space)}")
        gcg.prompt_ids = prompt = official_prompt
        ours = gcg.preprocessor([image])
        report.deviation(f"image {i}: CLIP pixels", ours.clip_pixels[0], ref[f"clip_pixels_{i}"], "clip pixels")
        report.deviation(f"image {i}: SAM pixels", ours.sam_pixels[0], ref[f"sam_pixels_{i}"], "sam pixels")
        report.exact(f"image {i}: SAM resize", list(ours.resized_sizes[0]) == record["resize_hw"],
                     f"{ours.resized_sizes[0]} vs {tuple(record['resize_hw'])}")
        official = GlammInputs(ref[f"clip_pixels_{i}"][None], ref[f"sam_pixels_{i}"][None], [tuple(record["resize_hw"])],
                               [tuple(record["original_hw"])])
        free = compare_run(report, f"image {i} free", gcg, official, ref, f"free_{i}", len(prompt),
                           meta["max_new_tokens"]["free"], captured, ref[f"sam_embeddings_{i}"])
        answer_text = gcg.model.processor.tokenizer.decode(
            [t for t in ref[f"free_{i}_output_ids"].tolist()[len(official_prompt):]], skip_special_tokens=False)
        caption, official_caption = gcg_caption(answer_text), record["free"]["caption"]
        if caption != official_caption:
            # GLaMM decodes the whole sequence and keeps what follows "ASSISTANT: "; an answer whose first token
            # has no leading space leaves that split empty and the caption starts with the system prompt
            print(f"image {i}: caption differs: ours {caption[:60]!r}, official {official_caption[:60]!r}")
        prefix = compare_run(report, f"image {i} prefix", gcg, official, ref, f"prefix_{i}", len(prompt),
                             meta["max_new_tokens"]["prefix"], captured, ref[f"sam_embeddings_{i}"])
        identical = torch.equal(ours.clip_pixels[0], ref[f"clip_pixels_{i}"]) and torch.equal(ours.sam_pixels[0], ref[f"sam_pixels_{i}"])
        own = None
        if not identical:  # the whole pipeline from the image, as annotation runs it
            own = compare_run(report, f"image {i} free (our pixels)", gcg, ours, ref, f"free_{i}", len(prompt),
                              meta["max_new_tokens"]["free"], captured)
        summaries.append({"image": i, "size_hw": record["size_hw"], "free": free, "prefix": prefix, "own_pixels": own,
                          "caption_equal": caption == official_caption, "seconds": round(time.perf_counter() - started, 1)})
        print(f"image {i}: {summaries[-1]}", flush=True)
    ok = report.print()
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
