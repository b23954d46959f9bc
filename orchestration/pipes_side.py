"""What the Pipes-side entry scripts share: reading their extras and talking to Dagster from rank 0.

These scripts run under `torchrun` on whatever machine the launcher picked (this one, a Slurm
node, a Kubernetes pod), so they import `dagster_pipes` only, never `dagster`. Every rank reads the
extras (the job's parameters); only rank 0 opens the message channel, because the ranks would
otherwise write interleaved messages into the one channel.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator

from dagster_pipes import PipesContext, PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def read_extras() -> dict[str, Any]:
    """The extras of the launching asset, readable from every rank."""
    params = PipesEnvVarParamsLoader().load_context_params()
    with PipesDefaultContextLoader().load_context(params) as data:
        return dict(data.get("extras") or {})


MAX_LOG_CHARS = 1000  # longer records are cut before they reach the Pipes message file


class _PipesLogHandler(logging.Handler):
    """Forwards library log records to Dagster's event log, so training progress streams to the UI.

    A record is cut to MAX_LOG_CHARS: Dagster's file message reader tails the file while it is written,
    and a line of many kilobytes (a degenerate model's repeated caption in a warning) can be read half
    written, which kills its reader thread and loses every later message, the materialisation included.
    """

    def __init__(self, pipes: PipesContext) -> None:
        super().__init__(level=logging.INFO)
        self.pipes = pipes

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if len(message) > MAX_LOG_CHARS:
                message = f"{message[:MAX_LOG_CHARS]}… ({len(message)} characters, cut)"
            if record.levelno >= logging.ERROR:
                self.pipes.log.error(message)
            elif record.levelno >= logging.WARNING:
                self.pipes.log.warning(message)
            else:
                self.pipes.log.info(message)
        except Exception:  # a closed channel must not kill the job it reports on
            self.handleError(record)


@contextlib.contextmanager
def pipes_on_rank_zero(loggers: tuple[str, ...] = ("grove", "evaluation")) -> Iterator[PipesContext | None]:
    """Rank 0: the open Pipes context, with the named loggers streamed to Dagster. Other ranks: None."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if rank() != 0:
        yield None
        return
    with open_dagster_pipes() as pipes:
        handler = _PipesLogHandler(pipes)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        for name in loggers:
            logging.getLogger(name).addHandler(handler)
        try:
            yield pipes
        finally:
            for name in loggers:
                logging.getLogger(name).removeHandler(handler)


def inference_setup(extras: dict[str, Any]) -> tuple[Any, Any]:
    """(device, checkpoint) of an inference process: the extras' device (`auto` picks), and on the CPU
    `threads` intra-op threads (as `grove infer --threads`: the same count gives the same floats)."""
    import torch

    from grove.train import pick_device, resolve_checkpoint

    device = pick_device(extras.get("device", "auto"))
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(extras.get("threads", 1))))
    return device, resolve_checkpoint(extras["checkpoint"])
