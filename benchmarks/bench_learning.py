"""Does the tiny model learn? Untrained vs fine-tuned alone vs pre-trained + fine-tuned, on the synthetic test split.

    .venv/bin/python benchmarks/bench_learning.py [--data DATASET] [--out runs/bench_learning]
        [--pt-steps 8000] [--ft-steps 1000] [--lr 1e-3] [--ft-lr 3e-4] [--batch 1] [--nproc 1]
        [--pool-clips 2400] [--test-clips 120]

Without --data, renders the demo synthetic dataset (params.yaml `demo.synthetic`: train 48, val 16)
with a pool of --pool-clips and a test split of --test-clips (the demo's 24 test clips swing CIDEr
by 10-30 points between seeds) into OUT/synthetic (reused when already there; clip i of a split does
not depend on the split sizes, so the demo's clips are among them). Then, with `grove.train.train`:
- untrained: the random initialisation (0 steps);
- PT: pre-training on the pool split (ground-truth boxes of the pool);
- FT only: fine-tuning on the train split from the random initialisation;
- PT+FT: fine-tuning on the train split from PT.
Each is scored on the test split by the official inference protocol (grove.infer) and the iGround
metrics of evaluation/ (CIDEr and METEOR through pycocoevalcap, per-video AP50 as COCOeval).
The table gives the metrics (x100, as the paper reports them) and the CPU seconds of each training;
the last lines give the margins of PT+FT over the untrained model and over FT only (goal: > 0;
the untrained model scores 0, so margins rather than ratios).

Column "AP50 ref": AP50 with the reference caption teacher-forced in place of the generated one
(grove.infer mode "reference"): grounding alone, apart from what the captioner names.
Column "vision": how much the captioner reads the video. The teacher-forced caption loss (CE per
token) on the test split with each clip's own frames, minus the loss with the next clip's frames in
their place; 0 means the captions come from the language prior alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.iground import evaluate_iground, load_iground_gt  # noqa: E402
from grove.data.loader import GroveClipDataset, clip_records, resolve_dataset  # noqa: E402
from grove.data.predictions import write_predictions  # noqa: E402
from grove.data.synthetic import config_from_params, generate_dataset  # noqa: E402
from grove.infer import predict_dataset  # noqa: E402
from grove.model import GroveModel  # noqa: E402
from grove.train import TrainConfig, load_model, read_result, resolve_checkpoint, train  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
METRICS = ("CIDEr", "METEOR", "AP50")


def train_run(
    args: argparse.Namespace, data: Path, name: str, split: str, steps: int, init: str | None = None, lr: float | None = None
) -> tuple[str, float]:
    """Train one model (in this process, or as torchrun ranks with --nproc) and return (checkpoint, CPU s)."""
    out = args.out / name
    lr = args.lr if lr is None else lr
    config = TrainConfig(
        train_data=str(data), out_dir=str(out), train_split=split, max_steps=steps, batch_size=args.batch,
        lr=lr, warmup_steps=min(args.warmup, steps), log_every=50, num_workers=1, seed=args.seed,
        init=init, eval_every=max(steps, 1), resume=False, model_overrides=args.model_overrides,
    )
    started = time.process_time()
    if args.nproc > 1 and steps > 0:
        command = [sys.executable, "-m", "grove.cli", "train", "--train", str(data), "--out", str(out),
                   "--train-split", split, "--max-steps", str(steps), "--batch-size", str(args.batch), "--lr", str(lr),
                   "--warmup-steps", str(config.warmup_steps), "--log-every", "50", "--workers", "1",
                   "--seed", str(args.seed), "--eval-every", str(steps), "--no-resume", "--nproc", str(args.nproc)]
        if init is not None:
            command += ["--init", init]
        children_before = _children_cpu()
        subprocess.run(command, cwd=REPO, check=True)
        cpu = _children_cpu() - children_before
        return read_result(out).last_checkpoint, cpu  # result.json's paths are relative to `out`
    result = train(config)
    return result.last_checkpoint, time.process_time() - started


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def score(checkpoint: str, data: Path, gt, out: Path) -> dict[str, float]:
    model = load_model(resolve_checkpoint(checkpoint)).eval()  # one load for the three reads below
    predictions = predict_dataset(checkpoint, data, "test", model=model)
    write_predictions(out, predictions)
    report = evaluate_iground(gt, predictions, embed=None, split="test")
    reference = predict_dataset(checkpoint, data, "test", mode="reference", model=model)
    grounding = evaluate_iground(gt, reference, embed=None, captions=False, split="test")
    return {**{name: 100 * report.metrics[name] for name in METRICS}, "AP50 ref": 100 * grounding.metrics["AP50"],
            "vision": frame_swap_gain(model, data)}


@torch.no_grad()
def frame_swap_gain(model: GroveModel, data: Path, split: str = "test") -> float:
    """Teacher-forced caption CE with the next clip's frames minus with the clip's own (nats per token)."""
    dataset = GroveClipDataset(clip_records(resolve_dataset(str(data), split, processed=True)), model.processor)
    batches = [model.processor.collate([dataset[index]]) for index in range(len(dataset))]
    own, swapped = [], []
    for index, batch in enumerate(batches):
        own.append(model(batch).losses["ce"].item())
        batch = {**batch, "global_pixels": batches[(index + 1) % len(batches)]["global_pixels"]}
        swapped.append(model(batch).losses["ce"].item())
    return sum(swapped) / len(swapped) - sum(own) / len(own)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_learning")
    parser.add_argument("--pt-steps", type=int, default=8000)
    parser.add_argument("--ft-steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--ft-lr", type=float, default=3e-4, help="fine-tuning learning rate")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--nproc", type=int, default=1)
    parser.add_argument("--pool-clips", type=int, default=2400, help="pool size of the rendered dataset (without --data)")
    parser.add_argument("--test-clips", type=int, default=120, help="test split size of the rendered dataset (without --data)")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                        help="GroveConfig override of the tiny model, e.g. global_image_size=128 (repeatable; one process only)")
    args = parser.parse_args()
    args.model_overrides = {key: json.loads(value) for key, value in (item.split("=", 1) for item in args.override)}
    if args.model_overrides and args.nproc > 1:
        parser.error("--override works in one process only (grove train has no override flag)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("grove.model.grove").setLevel(logging.ERROR)  # malformed answers of the untrained model

    data = args.data or args.out / "synthetic"
    if args.data is None:
        demo = config_from_params(REPO / "params.yaml", "demo")
        generate_dataset(data, replace(demo, pool_clips=args.pool_clips, test_clips=args.test_clips))
    gt = load_iground_gt(data, "test")

    rows: dict[str, dict[str, float]] = {}
    untrained, _ = train_run(args, data, "untrained", "train", 0)
    rows["untrained"] = {**score(untrained, data, gt, args.out / "untrained_test.json"), "train CPU s": 0.0}
    pt, pt_cpu = train_run(args, data, "pt", "pool", args.pt_steps)
    rows["PT"] = {**score(pt, data, gt, args.out / "pt_test.json"), "train CPU s": pt_cpu}
    ft, ft_cpu = train_run(args, data, "ft", "train", args.ft_steps, lr=args.ft_lr)
    rows["FT only"] = {**score(ft, data, gt, args.out / "ft_test.json"), "train CPU s": ft_cpu}
    ptft, ptft_cpu = train_run(args, data, "ptft", "train", args.ft_steps, init=pt, lr=args.ft_lr)
    rows["PT+FT"] = {**score(ptft, data, gt, args.out / "ptft_test.json"), "train CPU s": pt_cpu + ptft_cpu}

    columns = [*METRICS, "AP50 ref", "vision", "train CPU s"]
    print(f"\nsynthetic test split ({len(gt)} clips), tiny model, PT {args.pt_steps} steps, FT {args.ft_steps} steps, "
          f"batch {args.batch}, lr {args.lr} (fine-tuning {args.ft_lr})")
    print(f"{'model':<10}" + "".join(f"{c:>13}" for c in columns))
    for name, row in rows.items():
        print(f"{name:<10}" + "".join(f"{row[c]:>13.2f}" for c in columns))
    for metric in ("CIDEr", "AP50", "AP50 ref"):
        best = rows["PT+FT"][metric]
        margins = {other: best - rows[other][metric] for other in ("untrained", "FT only")}
        print(f"{metric}: PT+FT - untrained = {margins['untrained']:+.2f}, PT+FT - FT only = {margins['FT only']:+.2f}  (goal > 0)")
    (args.out / "table.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
