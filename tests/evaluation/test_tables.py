"""DuckDB metric tables: append-only runs, latest-run queries, the scaling-curve query."""

import datetime as dt
import math

import pytest

from evaluation.report import EvalReport, Problem
from evaluation.tables import (
    append_metrics,
    benchmark_across_checkpoints,
    connect,
    metric_vs_pretrain_size,
    record_report,
    register_checkpoint,
)


def test_runs_checkpoints_and_queries(tmp_path):
    db = tmp_path / "metrics.duckdb"
    t0 = dt.datetime(2025, 1, 1)
    for name, size, ap in (("pt-1k", 1000, 0.30), ("pt-10k", 10000, 0.35), ("pt-100k", 100000, 0.41)):
        register_checkpoint(db, name, size, {"stage": "pt"})
        append_metrics(db, "iground", "val", name, {"AP50": ap, "Recall": ap / 2}, {"preset": "official"}, t0)
    append_metrics(db, "iground", "val", "pt-1k", {"AP50": 0.31}, {"preset": "official"}, t0 + dt.timedelta(days=1))
    append_metrics(db, "iground", "test", "ft-only", {"AP50": 0.16, "Recall": float("nan")})
    append_metrics(db, "vidstg", "test", "pt-1k", {"declarative_msIoU": 0.5})

    rows = benchmark_across_checkpoints(db, "iground", split="val", metrics=["AP50"])
    assert [(r["checkpoint"], r["value"]) for r in rows] == [("pt-100k", 0.41), ("pt-10k", 0.35), ("pt-1k", 0.31)]
    assert rows[2]["protocol"] == {"preset": "official"} and rows[2]["pretrain_size"] == 1000
    all_rows = benchmark_across_checkpoints(db, "iground")
    assert ("ft-only", "test", "Recall", None) in {(r["checkpoint"], r["split"], r["metric"], r["value"]) for r in all_rows}

    curve = metric_vs_pretrain_size(db, "iground", "AP50", split="val")
    assert [(r["pretrain_size"], r["value"]) for r in curve] == [(1000, 0.31), (10000, 0.35), (100000, 0.41)]
    assert register_checkpoint(db, "pt-1k")["pretrain_size"] == 1000  # re-registering keeps what is known
    with connect(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM metrics").fetchone()[0] == 10


def test_record_report_keeps_protocol_and_counts(tmp_path):
    db = tmp_path / "m.duckdb"
    report = EvalReport("iground", "test", {"AP50": 0.4, "Recall": 0.28}, {"pairing": "official"}, num_items=3,
                        num_scored=2, problems=[Problem("v_1", "missing_prediction", "no prediction")])
    run = record_report(db, report, "grove-ptft", pretrain_size=1_000_000)
    assert run["metrics"] == {"AP50": 0.4, "Recall": 0.28}
    row = benchmark_across_checkpoints(db, "iground", metrics=["Recall"])[0]
    assert row["protocol"]["pairing"] == "official" and row["protocol"]["counts"]["items_with_errors"] == 1
    assert metric_vs_pretrain_size(db, "iground", "AP50")[0]["pretrain_size"] == 1_000_000
    assert not math.isnan(row["value"])


def test_reading_a_missing_database_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metric database"):
        benchmark_across_checkpoints(tmp_path / "absent.duckdb", "iground")
