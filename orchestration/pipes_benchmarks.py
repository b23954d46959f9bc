"""Pipes-side inference on VidSTG or ActivityNet-Entities: `torchrun ... -m orchestration.pipes_benchmarks`.

Extras: `benchmark` ("vidstg" or "anet_entities"), `checkpoint`, `dataset` (the converted benchmark
folder), `split`, `out` (JSON predictions), `threshold` and `temporal` (VidSTG's temporal
grounding), `threads`, `device`. Runs grove.infer_benchmarks (GROVE's protocols) and writes the
official prediction layouts. One process: only rank 0 works.
"""

from __future__ import annotations

import json
import time
from typing import Any

from orchestration.pipes_side import inference_setup, pipes_on_rank_zero, rank, read_extras


def run(extras: dict[str, Any]) -> dict[str, Any]:
    """Predict one benchmark as `extras` say, write the predictions atomically; the materialisation's metadata.
    Also what `grove pipeline predict-benchmark` (DVC's stage) runs, so both write the same file."""
    from grove.infer_benchmarks import predict_benchmark
    from grove.io import atomic_write_text

    started = time.perf_counter()
    device, checkpoint = inference_setup(extras)
    predictions, clips = predict_benchmark(extras["benchmark"], checkpoint, extras["dataset"], extras["split"],
                                           temporal=bool(extras.get("temporal", True)),
                                           threshold=float(extras.get("threshold", 0.5)), device=str(device))
    atomic_write_text(extras["out"], json.dumps(predictions, sort_keys=True) + "\n")
    return {"clips": clips, "checkpoint": str(checkpoint), "infer_seconds": round(time.perf_counter() - started, 3)}


def main() -> None:
    if rank() != 0:
        return
    extras = read_extras()
    with pipes_on_rank_zero() as pipes:
        metadata = run(extras)
        if pipes is not None:
            pipes.report_asset_materialization(metadata=metadata)


if __name__ == "__main__":
    main()
