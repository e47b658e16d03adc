"""The prediction log and the delayed labels, in one small SQLite file under HEARTH_HOME.

The rollout analysis and monitoring join the two tables on ``transaction_id``: which variant
and model version scored a transaction, what it decided, and (days later, via /feedback)
whether it was fraud.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hearth.serving.schemas import PredictionOut

DB_FILE = "serving.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    transaction_id TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    variant        TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    score          REAL NOT NULL,
    decision       TEXT NOT NULL,
    at             REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_tx ON predictions (transaction_id);
CREATE TABLE IF NOT EXISTS feedback (
    transaction_id TEXT NOT NULL,
    is_fraud       INTEGER NOT NULL,
    at             REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_tx ON feedback (transaction_id);
"""


class PredictionLog:
    """Append-only log of predictions and labels; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # WAL + NORMAL: a commit is an append, not an fsync, so logging stays off the
        # latency budget; a crash loses at most the last few rows, never the file.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def record(self, predictions: Sequence[PredictionOut]) -> None:
        now = time.time()
        rows = [
            (
                p.transaction_id,
                p.request_id,
                p.variant,
                p.model_version,
                p.fraud_probability,
                p.decision,
                now,
            )
            for p in predictions
        ]
        with self._lock:
            self._db.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?, ?, ?)", rows)

    def feedback(self, transaction_id: str, is_fraud: bool) -> bool:
        """Store a label; True when a prediction for this transaction was logged."""
        with self._lock:
            self._db.execute(
                "INSERT INTO feedback VALUES (?, ?, ?)",
                (transaction_id, int(is_fraud), time.time()),
            )
            found = self._db.execute(
                "SELECT 1 FROM predictions WHERE transaction_id = ? LIMIT 1", (transaction_id,)
            ).fetchone()
        return found is not None

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of `predictions` or `feedback` (tests, small analyses)."""
        if table not in {"predictions", "feedback"}:
            raise ValueError(f"unknown table {table!r}")
        with self._lock:
            cursor = self._db.execute(f"SELECT * FROM {table}")  # table checked above
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def close(self) -> None:
        with self._lock:
            self._db.close()
