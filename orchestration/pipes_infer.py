"""Pipes-side inference entry: `torchrun ... -m orchestration.pipes_infer`, launched by a PipesLauncher.

Predicts every clip of a dataset split with grove.infer.predict_dataset (the official GROVE
protocol) and writes the official prediction layout. Inference is one process: only rank 0 works.
On the CPU it uses `threads` intra-op threads, as `grove infer --threads` does (the same thread
count also gives the same floating-point results as DVC's `predict` stage).
"""

from __future__ import annotations

import time

from orchestration.pipes_side import inference_setup, pipes_on_rank_zero, rank, read_extras


def main() -> None:
    if rank() != 0:
        return
    from grove.data.predictions import write_predictions
    from grove.infer import predict_dataset

    extras = read_extras()
    with pipes_on_rank_zero() as pipes:
        started = time.perf_counter()
        device, checkpoint = inference_setup(extras)
        predictions = predict_dataset(
            checkpoint,
            extras["dataset"],
            split=extras["split"],
            threshold=float(extras["threshold"]),
            device=str(device),
        )
        write_predictions(extras["out"], predictions)
        if pipes is not None:
            pipes.report_asset_materialization(
                metadata={"clips": len(predictions), "checkpoint": str(checkpoint), "infer_seconds": round(time.perf_counter() - started, 3)}
            )


if __name__ == "__main__":
    main()
