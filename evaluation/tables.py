"""Metric tables: every evaluation appends its rows to a DuckDB database, and two questions are asked of it.

Tables:
    metrics(id, run_id, benchmark, split, checkpoint, metric, value, protocol JSON, recorded_at,
            preset, ci_low, ci_high, ci_confidence, ci_resamples, ci_seed)
    checkpoints(checkpoint PRIMARY KEY, pretrain_size, attributes JSON, registered_at)
`preset` names the protocol a row was scored under (iGround: "official" or "corrected"; one evaluation
records both under one run id); the `ci_` columns hold the metric's bootstrap interval over the test
clips, with the confidence, resamples and seed that drew it (NULL without one). Databases made before
these columns existed gain them when opened for writing. Rows are only appended (a re-evaluation adds a
run; queries read each metric's latest run per protocol), inside one transaction per evaluation, so a
killed writer leaves no half run. The queries return plain dicts:
"one benchmark across checkpoints" and "a metric against pre-training size" (the data-scaling curve;
a checkpoint carries its `pretrain_size` through `register_checkpoint` or `record_report`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import duckdb

from evaluation.report import EvalReport

SCHEMA = """
CREATE SEQUENCE IF NOT EXISTS metric_row_id;
CREATE TABLE IF NOT EXISTS metrics (
    id BIGINT DEFAULT nextval('metric_row_id'),
    run_id VARCHAR NOT NULL,
    benchmark VARCHAR NOT NULL,
    split VARCHAR NOT NULL,
    checkpoint VARCHAR NOT NULL,
    metric VARCHAR NOT NULL,
    value DOUBLE,
    protocol VARCHAR NOT NULL,
    recorded_at TIMESTAMP NOT NULL
);
ALTER TABLE metrics ADD COLUMN IF NOT EXISTS preset VARCHAR DEFAULT '';
ALTER TABLE metrics ADD COLUMN IF NOT EXISTS ci_low DOUBLE;
ALTER TABLE metrics ADD COLUMN IF NOT EXISTS ci_high DOUBLE;
ALTER TABLE metrics ADD COLUMN IF NOT EXISTS ci_confidence DOUBLE;
ALTER TABLE metrics ADD COLUMN IF NOT EXISTS ci_resamples INTEGER;
ALTER TABLE metrics ADD COLUMN IF NOT EXISTS ci_seed BIGINT;
CREATE TABLE IF NOT EXISTS checkpoints (
    checkpoint VARCHAR PRIMARY KEY,
    pretrain_size BIGINT,
    attributes VARCHAR NOT NULL,
    registered_at TIMESTAMP NOT NULL
);
"""

_LATEST = """
SELECT m.checkpoint, m.split, m.metric, m.value, m.preset, m.ci_low, m.ci_high, m.ci_confidence, m.ci_resamples,
       m.ci_seed, m.run_id, m.recorded_at, m.protocol, c.pretrain_size
FROM metrics m LEFT JOIN checkpoints c USING (checkpoint)
WHERE m.benchmark = ? {filters}
QUALIFY row_number() OVER (PARTITION BY m.checkpoint, m.split, m.metric, m.preset
                           ORDER BY m.recorded_at DESC, m.id DESC) = 1
ORDER BY {order}
"""


@contextlib.contextmanager
def connect(db_path: str | Path, read_only: bool = False, wait_s: float = 30.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the database (creating its tables), waiting up to `wait_s` while another process holds the lock."""
    db_path = Path(db_path)
    if read_only and not db_path.exists():
        raise FileNotFoundError(f"{db_path}: no metric database")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            connection = duckdb.connect(str(db_path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{db_path}: metric database is locked by another process ({exc})") from exc
            time.sleep(0.2)
    try:
        if not read_only:
            connection.execute(SCHEMA)
        yield connection
    finally:
        connection.close()


def _value(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def register_checkpoint(db_path: str | Path, checkpoint: str, pretrain_size: int | None = None,
                        attributes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Create or update a checkpoint's row; a None `pretrain_size` keeps the one already recorded."""
    now = dt.datetime.now()
    attrs = json.dumps(dict(attributes or {}), sort_keys=True, default=str)
    with connect(db_path) as con:
        con.execute("""
            INSERT INTO checkpoints VALUES (?, ?, ?, ?)
            ON CONFLICT (checkpoint) DO UPDATE SET
                pretrain_size = coalesce(excluded.pretrain_size, checkpoints.pretrain_size),
                attributes = CASE WHEN excluded.attributes = '{}' THEN checkpoints.attributes ELSE excluded.attributes END,
                registered_at = excluded.registered_at""", [checkpoint, pretrain_size, attrs, now])
        row = con.execute("SELECT pretrain_size, attributes FROM checkpoints WHERE checkpoint = ?", [checkpoint]).fetchone()
    return {"checkpoint": checkpoint, "pretrain_size": row[0], "attributes": json.loads(row[1])}


Row = tuple[Any, ...]


def metric_rows(
    run_id: str, benchmark: str, split: str, checkpoint: str, metrics: Mapping[str, float],
    protocol: Mapping[str, Any] | None, recorded_at: dt.datetime, intervals: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> list[Row]:
    """One row per metric; `intervals` maps a metric to an `evaluation.bootstrap.Interval`; `preset`
    defaults to the protocol record's "preset" (else '')."""
    protocol = dict(protocol or {})
    protocol_json = json.dumps(protocol, sort_keys=True, default=str)
    preset = str(protocol.get("preset", "")) if preset is None else preset
    rows = []
    for name, value in metrics.items():
        interval = (intervals or {}).get(name)
        bounds = ((None,) * 5 if interval is None else
                  (_value(interval.low), _value(interval.high), interval.confidence, interval.resamples, interval.seed))
        rows.append((run_id, benchmark, split, checkpoint, name, _value(value), protocol_json, recorded_at, preset, *bounds))
    return rows


def _insert(db_path: str | Path, rows: Sequence[Row]) -> None:
    """Append rows in a single transaction (all or none)."""
    with connect(db_path) as con:
        con.execute("BEGIN TRANSACTION")
        try:
            con.executemany("INSERT INTO metrics (run_id, benchmark, split, checkpoint, metric, value, protocol, "
                            "recorded_at, preset, ci_low, ci_high, ci_confidence, ci_resamples, ci_seed) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise


def append_metrics(
    db_path: str | Path, benchmark: str, split: str, checkpoint: str, metrics: Mapping[str, float],
    protocol: Mapping[str, Any] | None = None, recorded_at: dt.datetime | None = None,
    intervals: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Append one evaluation run (one row per metric) in a single transaction; returns the run as a dict."""
    run_id = uuid.uuid4().hex
    recorded_at = recorded_at or dt.datetime.now()
    _insert(db_path, metric_rows(run_id, benchmark, split, checkpoint, metrics, protocol, recorded_at, intervals))
    return {"run_id": run_id, "benchmark": benchmark, "split": split, "checkpoint": checkpoint,
            "metrics": {k: _value(v) for k, v in metrics.items()}, "recorded_at": recorded_at.isoformat()}


def record_report(db_path: str | Path, report: EvalReport, checkpoint: str, pretrain_size: int | None = None,
                  attributes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Append an `EvalReport`'s metrics and intervals for `checkpoint` (its protocol and counts as the protocol
    JSON), and those of its alternative protocols, as one run (one transaction, one run id)."""
    if pretrain_size is not None or attributes:
        register_checkpoint(db_path, checkpoint, pretrain_size, attributes)
    run_id, recorded_at = uuid.uuid4().hex, dt.datetime.now()
    rows = []
    for preset, part in [(None, report), *report.alternatives.items()]:
        protocol = {**part.protocol, "counts": part.counts}
        rows += metric_rows(run_id, report.benchmark, report.split, checkpoint, part.metrics, protocol, recorded_at,
                            part.intervals, preset)
    _insert(db_path, rows)
    return {"run_id": run_id, "benchmark": report.benchmark, "split": report.split, "checkpoint": checkpoint,
            "metrics": {k: _value(v) for k, v in report.metrics.items()}, "recorded_at": recorded_at.isoformat()}


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
    cursor = con.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    out = []
    for row in cursor.fetchall():
        record = dict(zip(names, row))
        if "protocol" in record:
            record["protocol"] = json.loads(record["protocol"])
        if isinstance(record.get("recorded_at"), dt.datetime):
            record["recorded_at"] = record["recorded_at"].isoformat()
        out.append(record)
    return out


def _filters(split: str | None, preset: str | None) -> tuple[str, list[Any]]:
    filters, params = "", []
    for column, value in (("split", split), ("preset", preset)):
        if value is not None:
            filters += f" AND m.{column} = ?"
            params.append(value)
    return filters, params


def benchmark_across_checkpoints(db_path: str | Path, benchmark: str, split: str | None = None,
                                 metrics: Sequence[str] | None = None, preset: str | None = None) -> list[dict[str, Any]]:
    """The latest value (and interval) of each metric of `benchmark` for every checkpoint and protocol
    (`preset`: only that protocol's rows), ordered by checkpoint, split, metric, protocol."""
    filters, params = _filters(split, preset)
    if metrics:
        filters += f" AND m.metric IN ({', '.join('?' for _ in metrics)})"
        params += list(metrics)
    with connect(db_path, read_only=True) as con:
        return _rows(con, _LATEST.format(filters=filters, order="m.checkpoint, m.split, m.metric, m.preset"),
                     [benchmark, *params])


def metric_vs_pretrain_size(db_path: str | Path, benchmark: str, metric: str, split: str | None = None,
                            preset: str | None = None) -> list[dict[str, Any]]:
    """(pretrain_size, checkpoint, value, interval) of the latest `metric` runs, for checkpoints with a
    pre-training size (`preset`: one protocol's rows; None: every protocol's)."""
    filters, params = _filters(split, preset)
    with connect(db_path, read_only=True) as con:
        rows = _rows(con, _LATEST.format(filters=" AND m.metric = ? AND c.pretrain_size IS NOT NULL" + filters,
                                         order="c.pretrain_size, m.checkpoint, m.preset"), [benchmark, metric, *params])
    return [{"pretrain_size": r["pretrain_size"], "checkpoint": r["checkpoint"], "split": r["split"],
             "preset": r["preset"], "value": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
             "recorded_at": r["recorded_at"]} for r in rows]
