"""Does pre-training on more clips give a better fine-tuned model, and which intervals separate it?

    .venv/bin/python benchmarks/bench_data_scaling.py [--sizes 15 60 240] [--pt-steps 1500 | --pt-epochs 10]
        [--ft-steps 600] [--pool-clips 240] [--test-clips 120] [--seed 42] [--out runs/bench_data_scaling]

Renders the demo synthetic dataset (params.yaml `demo.synthetic`) with --pool-clips pool clips and
--test-clips test clips into OUT/synthetic (reused when already there), takes nested seeded subsets of
the pool (orchestration/defs/scaling/subsets.py, as the lineage does), pre-trains the tiny model on
each with the pool's ground-truth boxes, fine-tunes each on the train split (and one model on the
train split alone: FT-only), and scores all of them on the test split by the official iGround
protocol with bootstrap intervals (1,000 resamples, seed 0). Pre-training runs either a fixed
number of steps for every size (--pt-steps: the same compute, so only the data differs) or a fixed
number of passes over each subset (--pt-epochs: larger subsets also train longer, as a profile with
`pretrain: {epochs: N}` does). Models already trained in OUT are reused, so sizes can be added later.

Prints each model's METEOR, CIDEr and AP50 (x100) with intervals, then every paired difference
(same clips, same resamples), marked `*` where its interval excludes 0: the table the demo's
findings are judged by, at a test-split size the demo cannot afford.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.bootstrap import BootstrapSettings, add_intervals, paired_differences  # noqa: E402
from evaluation.iground import evaluate_iground, load_iground_gt  # noqa: E402
from grove.data.synthetic import config_from_params, generate_dataset  # noqa: E402
from grove.infer import predict_dataset  # noqa: E402
from grove.train import TrainConfig, read_result, train  # noqa: E402
from orchestration.defs.scaling.subsets import write_subset  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
METRICS = ("METEOR", "CIDEr", "AP50")
BOOTSTRAP = BootstrapSettings(resamples=1000, seed=0, confidence=0.95)


def trained(args: argparse.Namespace, name: str, data: Path, split: str, steps: int, lr: float, init: str | None = None) -> str:
    """The last checkpoint of one training run in OUT/name (trained now unless it finished before)."""
    out = args.out / name
    if (out / "result.json").exists():
        return read_result(out).last_checkpoint
    config = TrainConfig(
        train_data=str(data), out_dir=str(out), train_split=split, val_split="val" if split == "train" else None,
        max_steps=steps, batch_size=1, lr=lr, warmup_steps=20, log_every=500, num_workers=1, seed=args.seed,
        init=init, eval_every=steps, resume=False,
    )
    return train(config).last_checkpoint


def scored(checkpoint: str, data: Path, gt) -> object:
    report = evaluate_iground(gt, predict_dataset(checkpoint, data, "test"), embed=None, split="test")
    return add_intervals(report, BOOTSTRAP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[15, 60, 240])
    steps = parser.add_mutually_exclusive_group()
    steps.add_argument("--pt-steps", type=int, default=None, help="pre-training steps for every size (default 1500)")
    steps.add_argument("--pt-epochs", type=float, default=None, help="pre-training passes over each subset instead")
    parser.add_argument("--ft-steps", type=int, default=600)
    parser.add_argument("--pool-clips", type=int, default=240)
    parser.add_argument("--test-clips", type=int, default=120)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench_data_scaling")
    args = parser.parse_args()
    if max(args.sizes) > args.pool_clips:
        parser.error(f"--sizes up to {max(args.sizes)} need --pool-clips >= {max(args.sizes)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("grove.model.grove").setLevel(logging.ERROR)  # malformed answers of weak models
    torch.set_num_threads(1)

    data = args.out / "synthetic"
    demo = config_from_params(REPO / "params.yaml", "demo")
    generate_dataset(data, replace(demo, pool_clips=args.pool_clips, test_clips=args.test_clips, seed=args.seed), workers=1)
    gt = load_iground_gt(data, "test")

    reports, recipe = {}, {}
    for size in sorted(args.sizes):
        subset = args.out / f"subset_{size}"
        if not (subset / "dataset.json").exists():
            write_subset(data, subset, size, args.seed, split="pool", video_root=data)
        pt_steps = int(round(args.pt_epochs * size)) if args.pt_epochs else (args.pt_steps or 1500)
        pretrained = trained(args, f"pt_{size}_{pt_steps}", subset, "pool", pt_steps, 1e-3)
        finetuned = trained(args, f"ptft_{size}_{pt_steps}", data, "train", args.ft_steps, 3e-4, init=pretrained)
        reports[f"PT {size} + FT"], recipe[f"PT {size} + FT"] = scored(finetuned, data, gt), f"{pt_steps} PT steps"
    reports["FT only"], recipe["FT only"] = scored(trained(args, "ft_only", data, "train", args.ft_steps, 3e-4), data, gt), "-"

    print(f"\nsynthetic test split ({len(gt)} clips, seed {args.seed}), official protocol, x100, "
          f"95% intervals over test clips ({BOOTSTRAP.resamples} resamples); FT {args.ft_steps} steps")
    print(f"{'model':<16}{'recipe':<16}" + "".join(f"{m:>26}" for m in METRICS))
    for name, report in reports.items():
        cells = [f"{100 * report.metrics[m]:.2f} [{100 * report.intervals[m].low:.2f}, {100 * report.intervals[m].high:.2f}]" for m in METRICS]
        print(f"{name:<16}{recipe[name]:<16}" + "".join(f"{c:>26}" for c in cells))
    print("\npaired differences (* : the interval excludes 0)")
    for (name_b, b), (name_a, a) in itertools.combinations(reports.items(), 2):
        diffs = paired_differences(a.clip_statistics, a.metrics, b.clip_statistics, b.metrics, BOOTSTRAP)
        cells = [f"{100 * d.value:+.2f} [{100 * d.low:+.2f}, {100 * d.high:+.2f}]{'*' if d.separates else ' '}"
                 for d in (diffs[m] for m in METRICS)]
        print(f"{name_a + ' - ' + name_b:<32}" + "".join(f"{c:>27}" for c in cells))


if __name__ == "__main__":
    main()
