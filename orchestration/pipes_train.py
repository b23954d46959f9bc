"""Pipes-side training entry: `torchrun ... -m orchestration.pipes_train`, launched by a PipesLauncher.

Reads the TrainConfig from the launching asset's extras, trains with grove.train (DDP when torchrun
starts several ranks), and from rank 0 streams the library's log lines to Dagster, logs each
reported step's metrics and the machine's system metrics to the asset's MLflow run while it trains
(orchestration.pipes_mlflow), and reports the checkpoint and the run's figures as the materialisation.
"""

from __future__ import annotations

from typing import Any

from orchestration.pipes_mlflow import RemoteRun, tracked_metrics
from orchestration.pipes_side import pipes_on_rank_zero, read_extras


def main() -> None:
    from grove.train import TrainConfig, resolve_checkpoint, train

    extras = read_extras()
    config = TrainConfig(**extras["train_config"])
    with pipes_on_rank_zero() as pipes, tracked_metrics(RemoteRun.from_extras(extras) if pipes is not None else None) as report:
        result = train(config, callback=report)
        if pipes is not None:
            summary: dict[str, Any] = {
                "checkpoint": str(resolve_checkpoint(result.out_dir)),
                "steps": result.steps,
                "train_seconds": round(result.seconds, 3),
                "clips_seen": result.clips_seen,
                "resumed_from_step": result.resumed_from_step,
            }
            for name in ("best_val_loss", "final_train_loss"):
                value = getattr(result, name)
                if value is not None:
                    summary[name] = float(value)
            pipes.report_asset_materialization(metadata=summary)


if __name__ == "__main__":
    main()
