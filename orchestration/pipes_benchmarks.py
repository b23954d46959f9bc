"""Pipes-side inference on VidSTG or ActivityNet-Entities: `torchrun ... -m orchestration.pipes_benchmarks`.

Extras: `benchmark` ("vidstg" or "anet_entities"), `checkpoint`, `dataset` (the converted benchmark
folder), `split`, `out` (JSON predictions), `threshold` and `temporal` (VidSTG's temporal
grounding), `threads`, `device`. Runs grove.infer_benchmarks (GROVE's protocols) and writes the
official prediction layouts. One process: only rank 0 works.
"""

from __future__ import annotations

import json
import time

from orchestration.pipes_side import inference_setup, pipes_on_rank_zero, rank, read_extras


def main() -> None:
    if rank() != 0:
        return
    from grove.infer_benchmarks import predict_anet_entities, predict_vidstg
    from grove.io import atomic_write_text

    extras = read_extras()
    with pipes_on_rank_zero() as pipes:
        started = time.perf_counter()
        device, checkpoint = inference_setup(extras)
        benchmark = extras["benchmark"]
        if benchmark == "vidstg":
            predictions = predict_vidstg(checkpoint, extras["dataset"], split=extras["split"], temporal=bool(extras.get("temporal", True)),
                                         threshold=float(extras.get("threshold", 0.5)), device=str(device))
            clips = len(predictions)
        elif benchmark == "anet_entities":
            predictions = predict_anet_entities(checkpoint, extras["dataset"], split=extras["split"], device=str(device))
            clips = sum(len(segments) for segments in predictions["results"].values())
        else:
            raise ValueError(f"unknown benchmark {benchmark!r}: vidstg or anet_entities")
        atomic_write_text(extras["out"], json.dumps(predictions, sort_keys=True) + "\n")
        if pipes is not None:
            pipes.report_asset_materialization(
                metadata={"clips": clips, "checkpoint": str(checkpoint), "infer_seconds": round(time.perf_counter() - started, 3)}
            )


if __name__ == "__main__":
    main()
