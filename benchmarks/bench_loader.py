"""Is the training data loader ever the bottleneck? Loader clips/s against the training step rate.

    .venv/bin/python benchmarks/bench_loader.py [--data DATASET] [--split pool] [--clips 48] [--workers 0 1 2]

Without --data, renders a small synthetic dataset (demo frame size, 8 s at 10 fps) into a temporary
folder. Three measurements on the tiny model, one CPU thread for the model (the trainer's default):
1. model: forward + backward + AdamW step on ready-made batches (no loading), clips/s;
2. loader: the training DataLoader alone (decode the 5 fps grid, sample 8 frames, both encoders'
   preprocessing, tokenisation, collate) for each worker count, over a first epoch (cold: decodes
   every clip) and a second (warm: the per-worker frame cache);
3. end to end: the model fed by the loader with 1 worker, clips/s.
Goal: loader clips/s / model clips/s > 1 (cold and warm), and end to end within 10% of the model
alone. The ratios are printed; the machine's other load changes the absolute numbers.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grove.data.loader import GroveClipDataset, StepBatchSampler, clip_records, make_loader, resolve_dataset  # noqa: E402
from grove.data.synthetic import SynthConfig, generate_dataset  # noqa: E402
from grove.model import GroveConfig, GroveModel  # noqa: E402


def model_rate(model: GroveModel, batches: list[dict], optimizer: torch.optim.Optimizer) -> float:
    """Training clips/s with the data already in memory (after 2 warm-up steps)."""
    for batch in batches[:2]:
        optimizer.zero_grad()
        model(batch).loss.backward()
        optimizer.step()
    started = time.perf_counter()
    for batch in batches:
        optimizer.zero_grad()
        model(batch).loss.backward()
        optimizer.step()
    return len(batches) / (time.perf_counter() - started)


def loader_rates(dataset: GroveClipDataset, collate, workers: int, seed: int = 0) -> tuple[float, float]:
    """Clips/s of a first (cold) and a second (warm, cached) epoch through the training loader."""
    clips = len(dataset)
    sampler = StepBatchSampler(clips, global_batch=1, micro_batch=1, total_steps=2 * clips, seed=seed)
    loader = iter(make_loader(dataset, sampler, collate, workers))
    rates = []
    for _ in range(2):
        started = time.perf_counter()
        for _ in range(clips):
            next(loader)
        rates.append(clips / (time.perf_counter() - started))
    return rates[0], rates[1]


def end_to_end_rate(model: GroveModel, dataset: GroveClipDataset, collate, optimizer, steps: int) -> float:
    sampler = StepBatchSampler(len(dataset), 1, 1, total_steps=steps + 2, seed=1)
    loader = iter(make_loader(dataset, sampler, collate, 1))
    for _ in range(2):
        optimizer.zero_grad()
        model(next(loader)).loss.backward()
        optimizer.step()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        model(next(loader)).loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="dataset folder (default: render a synthetic one)")
    parser.add_argument("--split", default="pool")
    parser.add_argument("--clips", type=int, default=48, help="clips to load per epoch")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model-steps", type=int, default=24)
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "synthetic"
            generate_dataset(data, SynthConfig(pool_clips=args.clips, train_clips=0, val_clips=0, test_clips=0))
        records = clip_records(resolve_dataset(data, args.split))[: args.clips]
        model = GroveModel.from_config(GroveConfig.tiny())
        processor = model.processor
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
        warm_set = GroveClipDataset(records, processor, seed=0)
        batches = [processor.collate([warm_set[(i % len(records), 0)]]) for i in range(args.model_steps)]
        train_rate = model_rate(model, batches, optimizer)
        print(f"model alone (fwd+bwd+step, 1 thread): {train_rate:.2f} clips/s")
        worst = float("inf")
        for workers in args.workers:
            cold, warm = loader_rates(GroveClipDataset(records, processor, seed=0), processor.collate, workers)
            worst = min(worst, cold, warm)
            print(f"loader, {workers} worker(s): cold {cold:.1f} clips/s (x{cold / train_rate:.1f} the model), "
                  f"warm {warm:.1f} clips/s (x{warm / train_rate:.1f})")
        combined = end_to_end_rate(model, GroveClipDataset(records, processor, seed=0), processor.collate, optimizer,
                                   args.model_steps)
        print(f"model fed by the loader (1 worker): {combined:.2f} clips/s = {combined / train_rate:.2f} of the model alone")
        print(f"ratio (slowest loader / model): {worst / train_rate:.1f}  (goal > 1)")


if __name__ == "__main__":
    main()
