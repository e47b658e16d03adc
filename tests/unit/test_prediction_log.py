"""The prediction log's storage: whole batches, typed failures, a migration under a lock.

What the log's rows mean for the analysis is tested in tests/unit/test_rollout_control.py
and test_drift.py; here, what `hearth.storage.sqlite.SQLiteFile` gives it.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from hearth.traffic.prediction_log import (
    PredictionLog,
    PredictionLogUnavailable,
    PredictionRecord,
)


def record(tx: str, variant: str = "champion") -> PredictionRecord:
    return PredictionRecord(
        transaction_id=tx,
        request_id="req",
        variant=variant,
        model_version="1",
        score=0.1,
        decision="approve",
        latency_ms=2.0,
    )


def test_a_batch_is_logged_whole_or_not_at_all(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "serving.sqlite")
    broken = record("t2", variant=None)  # type: ignore[arg-type]  # NOT NULL column
    with pytest.raises(PredictionLogUnavailable, match=r"prediction log .*serving\.sqlite"):
        log.record_entries([record("t1"), broken])
    assert log.rows("predictions") == []
    log.record_entries([record("t1"), record("t3")])
    assert [r["transaction_id"] for r in log.rows("predictions")] == ["t1", "t3"]
    log.close()


def test_a_closed_log_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "serving.sqlite")
    log.close()
    log.close()
    with pytest.raises(PredictionLogUnavailable, match="closed"):
        log.record_entries([record("t1")])
    with pytest.raises(PredictionLogUnavailable, match="closed"):
        log.feedback("t1", True)


def test_a_file_that_is_not_a_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "serving.sqlite"
    path.write_bytes(b"this is not SQLite " * 100)
    with pytest.raises(PredictionLogUnavailable, match="not a database"):
        PredictionLog(path)


def test_logs_opened_at_once_on_an_old_file_all_open_and_keep_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "serving.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE predictions (transaction_id TEXT NOT NULL, request_id TEXT NOT NULL, "
            "variant TEXT NOT NULL, model_version TEXT NOT NULL, score REAL NOT NULL, "
            "decision TEXT NOT NULL, at REAL NOT NULL)"
        )
        db.execute("INSERT INTO predictions VALUES ('t0', 'r', 'champion', '1', 0.1, 'ok', 1)")
    db.close()
    logs: list[PredictionLog] = []
    errors: list[BaseException] = []

    def open_log() -> None:
        try:
            logs.append(PredictionLog(path))
        except BaseException as exc:  # reported below, with the others
            errors.append(exc)

    threads = [threading.Thread(target=open_log) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    logs[0].record_entries([record("t1")])
    assert [r["transaction_id"] for r in logs[-1].rows("predictions")] == ["t0", "t1"]
    for log in logs:
        log.close()
