"""Pipes side: a training process logs to the MLflow run that its asset opened, while it trains.

The asset passes the run (`MlflowResource.pipes_extras`: tracking URI, run id) in the Pipes extras;
rank 0 sends each reported step's metrics to that run as they come, a few at a time with
`MlflowClient.log_batch` and the time they were reported, so a training killed mid-way still has
its curve up to the kill, and runs MLflow's system metrics monitor (CPU, memory, disk, network;
GPUs where pynvml or pyrsmi is installed) on the same run. Like pipes_side, it imports no dagster.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

log = logging.getLogger(__name__)

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch


@dataclass(frozen=True)
class RemoteRun:
    """The MLflow run a Pipes process logs to (the extras' `mlflow` entry)."""

    tracking_uri: str
    run_id: str
    system_metrics_interval_s: float = 10.0
    flush_s: float = 2.0

    @classmethod
    def from_extras(cls, extras: Mapping[str, Any]) -> "RemoteRun | None":
        entry = extras.get("mlflow")
        if not entry:
            return None
        missing = [name for name in ("tracking_uri", "run_id") if not entry.get(name)]
        if missing:
            raise ValueError(f"Pipes extras 'mlflow': no {', '.join(missing)} (got {sorted(entry)})")
        return cls(**{name: entry[name] for name in cls.__dataclass_fields__ if name in entry})


class MetricStream:
    """Step metrics of one run, buffered and sent with `log_batch` once `flush_s` seconds have passed since
    the last send (or `MAX_BATCH` metrics wait), each stamped with the time it was reported.

    A send that fails (a tracking server away) is logged and kept for the next one: the training goes on,
    and its curve is also in the run folder's metrics.jsonl.
    """

    def __init__(self, client: Any, run_id: str, flush_s: float = 2.0, clock: Callable[[], float] = time.time) -> None:
        self.client, self.run_id, self.flush_s, self.clock = client, run_id, flush_s, clock
        self.pending: list[Any] = []
        self.last_send = clock()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = self.clock()
        stamp = int(now * 1000)
        self.pending += [Metric(name, float(value), stamp, int(step)) for name, value in metrics.items()
                         if isinstance(value, (int, float)) and not isinstance(value, bool)]
        if now - self.last_send >= self.flush_s or len(self.pending) >= MAX_BATCH:
            self.flush()

    def flush(self) -> None:
        self.last_send = self.clock()
        while self.pending:
            batch = self.pending[:MAX_BATCH]
            try:
                self.client.log_batch(self.run_id, metrics=batch)
            except Exception as exc:  # a metrics sink away must not end a training; the next flush retries
                log.warning("MLflow run %s: %d metrics not sent yet (%s: %s)", self.run_id, len(self.pending),
                            type(exc).__name__, exc)
                return
            del self.pending[: len(batch)]


def system_metrics_monitor(remote: RemoteRun) -> Any:
    """MLflow's system metrics monitor on the run, started (None when the interval is 0).

    The class itself rather than `mlflow.start_run(log_system_metrics=True)`: that fluent call would make
    this process own the run (as the active run, ended FINISHED at exit), while the asset that opened it
    still logs to it after the training and decides how it ends.
    """
    if remote.system_metrics_interval_s <= 0:
        return None
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(remote.run_id, sampling_interval=remote.system_metrics_interval_s,
                                   tracking_uri=remote.tracking_uri)
    monitor.start()
    return monitor


@contextlib.contextmanager
def tracked_metrics(remote: RemoteRun | None) -> Iterator[Callable[[int, Mapping[str, float]], None] | None]:
    """A metrics callback that streams to `remote`'s run, with system metrics logged beside it while the
    block runs; None without a run (ranks other than 0, a launch without MLflow)."""
    if remote is None:
        yield None
        return
    from mlflow import MlflowClient

    stream = MetricStream(MlflowClient(tracking_uri=remote.tracking_uri), remote.run_id, remote.flush_s)
    monitor = system_metrics_monitor(remote)
    try:
        yield stream.log
    finally:
        stream.flush()
        if monitor is not None:
            monitor.finish()
