"""A full disk during a write, simulated: the process a fault test starts lowers RLIMIT_FSIZE (with
SIGXFSZ ignored), so every write past LIMIT bytes of a file fails with EFBIG in the kernel, for
Python's writes and for those of pyarrow, safetensors and DuckDB alike, exactly as on a full disk
(a tmpfs would need root and a mount; this needs neither). Each case rewrites a finished output of
the uninterrupted run with that limit and reports how the write failed.

    python -m tests.faults.full_disk PARAMS_FILE ROOT CASE [CASE ...]

Prints one JSON object: case → {"error": "<type>: <message>"} or {"error": null}.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

LIMIT = 4096  # bytes a file may grow to: a small JSON fits, no table, metrics report or checkpoint does
LIMITS = {"predictions": 512}  # the tiny profile's two predicted clips take less than LIMIT


@contextmanager
def full_disk(limit: int = LIMIT) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def cases(params_file: Path, root: Path) -> dict[str, Callable[[], object]]:
    """Each rewrites a finished output of `root` from what the uninterrupted run read (same inputs), except
    training, which trains the uninterrupted run's pre-training into a new folder."""
    import pyarrow.parquet as pq

    from grove.data.predictions import read_predictions, write_predictions
    from grove.data.schema import write_table
    from grove.io import atomic_write_json
    from orchestration.defs.scaling.assets import write_profile_subset
    from orchestration.profile import load_profile
    from orchestration.resources import PipelinePaths

    profile, paths = load_profile("faults", params_file), PipelinePaths(root=str(root))
    metrics = root / "metrics" / "iground" / "s.json"
    predictions = root / "predictions" / "iground" / "s.json"
    pool_clips = root / "annotation" / "pool" / "clips.parquet"

    def training() -> object:  # the asset's training, into a new folder (a full disk before its first checkpoint)
        from grove.train import TrainConfig, train
        from orchestration.defs.models.assets import train_config

        config = train_config(profile, "pretrain", train_data=str(root / "subsets" / "s"), train_split=profile.get("scaling.pool_split"),
                              out_dir=str(root / "checkpoints" / "pretrain" / "s-full-disk"), init=None)
        return train(TrainConfig(**config))

    return {
        "metrics_json": lambda: atomic_write_json(metrics, json.loads(metrics.read_text())),
        "predictions": lambda: write_predictions(predictions, read_predictions(predictions)),
        "pool_table": lambda: write_table(pq.read_table(pool_clips), pool_clips),
        "subset": lambda: write_profile_subset(profile, paths, "s"),
        "training": training,
    }


def main(argv: list[str]) -> int:
    params_file, root, names = Path(argv[0]), Path(argv[1]), argv[2:]
    chosen = cases(params_file, root)
    report = {}
    for name in names:
        run = chosen[name]
        try:
            with full_disk(LIMITS.get(name, LIMIT)):
                run()
            report[name] = {"error": None}
        except Exception as exc:  # what a user would read
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
