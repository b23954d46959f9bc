"""One tiny GROVE training step (1 clip of 8 frames, forward + backward + AdamW) on one CPU thread.

    .venv/bin/python benchmarks/bench_model_step.py [--steps 30] [--phrases 3] [--threads 1]

Builds `GroveConfig.tiny()` (random init, no download), makes one clip of 160x96 frames with a
caption of `--phrases` grounded phrases, and times full training steps after a warm-up. Prints the
per-component forward+backward times, the step time in CPU and wall seconds (the machine may be
shared: CPU time is the steadier figure) and the ratio against the goal: a tiny step well under
0.1 s on one core, goal = 100 ms (ratio > 1 is better).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL_MS = 100.0


def clip(phrases: int):
    import numpy as np

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, 96, 160, 3), dtype=np.uint8)
    names = ["a red ball", "a man in a blue shirt", "a green knife", "a small yellow cup"][:phrases]
    caption = "here, " + " and ".join(names) + " move to the left."
    boxes = np.tile(np.array([10.0, 10.0, 40.0, 50.0]), (8, len(names), 1))
    return frames, caption, names, boxes


def timed(fn, steps: int) -> tuple[float, float]:
    for _ in range(3):
        fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - wall) / steps * 1000, (time.process_time() - cpu) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--phrases", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from grove.model import GroveConfig, GroveModel

    torch.set_num_threads(args.threads)
    model = GroveModel.from_config(GroveConfig.tiny())
    processor = model.processor
    frames, caption, names, boxes = clip(args.phrases)
    batch = processor.collate([processor(frames, caption, names, boxes=boxes)])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0, fused=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(batch).loss.backward()
        optimizer.step()

    def part(fn):
        def run() -> None:
            out = fn()
            (out * torch.randn_like(out)).sum().backward()
        return run

    seq = batch["input_ids"].shape[1] + model.config.num_video_tokens - 1
    features = model.grounding_encoder(batch["grounding_pixels"]).detach()
    queries = torch.randn(1, args.phrases, model.config.decoder_dim, requires_grad=True)
    embeds = torch.randn(1, seq, model.llm.config.hidden_size, requires_grad=True)
    parts = {
        "global encoder (CLIP + pool + VL)": part(lambda: model.encode_video(batch["global_pixels"])),
        "grounding encoder (SAM + adapters)": part(lambda: model.grounding_encoder(batch["grounding_pixels"])),
        f"box decoder ({args.phrases} phrases x 8 frames, {model.config.box_readout} readout)": part(
            lambda: model.decode_boxes(features, queries, batch["grounding_pixels"])[0]
        ),
        f"LLM ({seq} positions)": part(lambda: model.llm.model(inputs_embeds=embeds).last_hidden_state),
        "processor (1 clip)": lambda: processor(frames, caption, names, boxes=boxes),
    }
    print(f"tiny GROVE: {model.num_parameters() / 1e6:.2f}M parameters ({model.num_parameters(True) / 1e6:.2f}M trainable), "
          f"{args.threads} thread(s)")
    for name, fn in parts.items():
        wall_ms, cpu_ms = timed(fn, args.steps)
        print(f"  {name:<40} {cpu_ms:7.1f} ms CPU  {wall_ms:7.1f} ms wall")
    wall_ms, cpu_ms = timed(step, args.steps)
    print(f"training step (forward + backward + fused AdamW): {cpu_ms:.1f} ms CPU, {wall_ms:.1f} ms wall")
    print(f"ratio goal/step = {GOAL_MS / cpu_ms:.2f} (CPU time; goal {GOAL_MS:.0f} ms, > 1 is better)")


if __name__ == "__main__":
    main()
