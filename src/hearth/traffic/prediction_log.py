"""The prediction log and the delayed labels, in one small SQLite file under HEARTH_HOME.

The rollout analysis and monitoring join the two tables on ``transaction_id``: which variant
and model version scored a transaction (for which customer, in which rollout, how fast,
whether it failed, whether it was a shadow copy), what it decided, and (days later, via
/feedback) whether it was fraud. `PredictionLog.analysis_rows` is the rollout analysis's
view of it: rows that `hearth.rollout.verdict.analyse` takes as they are.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hearth.storage.sqlite import SQLiteFile

DB_FILE = "serving.sqlite"

_PREDICTIONS = """
CREATE TABLE IF NOT EXISTS predictions (
    transaction_id TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    variant        TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    score          REAL,
    decision       TEXT,
    at             REAL NOT NULL,
    features       TEXT,
    customer_id    TEXT,
    rollout_id     TEXT,
    latency_ms     REAL,
    ok             INTEGER NOT NULL DEFAULT 1,
    shadow         INTEGER NOT NULL DEFAULT 0
);
"""
_SCHEMA = (
    _PREDICTIONS
    + """
CREATE INDEX IF NOT EXISTS predictions_tx ON predictions (transaction_id);
CREATE INDEX IF NOT EXISTS predictions_rollout ON predictions (rollout_id, at);
CREATE TABLE IF NOT EXISTS feedback (
    transaction_id TEXT NOT NULL,
    is_fraud       INTEGER NOT NULL,
    at             REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_tx ON feedback (transaction_id);
"""
)
_COLUMNS = (
    "transaction_id", "request_id", "variant", "model_version", "score", "decision", "at",
    "features", "customer_id", "rollout_id", "latency_ms", "ok", "shadow",
)  # fmt: skip
# The newest label of the transaction (a corrected label replaces an earlier one).
_LABEL = (
    "(SELECT f.is_fraud FROM feedback f WHERE f.transaction_id = p.transaction_id "
    "ORDER BY f.at DESC LIMIT 1)"
)


@dataclass(frozen=True)
class PredictionRecord:
    """One scoring attempt: an answer (ok) or a failed challenger call (ok=False).

    `shadow` marks a challenger's score of a copy of the request (shadow mode): logged for
    the analysis, never returned. `score`/`decision` are None when the attempt failed.
    """

    transaction_id: str
    request_id: str
    variant: str
    model_version: str
    score: float | None
    decision: str | None
    latency_ms: float | None  # None: not measured (left out of the analysis)
    ok: bool = True
    shadow: bool = False
    customer_id: str | None = None
    rollout_id: str | None = None
    features: dict[str, float | str] | None = None

    def row(self, at: float) -> tuple[Any, ...]:
        features = json.dumps(self.features) if self.features is not None else None
        return (
            self.transaction_id, self.request_id, self.variant, self.model_version, self.score,
            self.decision, at, features, self.customer_id, self.rollout_id, self.latency_ms,
            int(self.ok), int(self.shadow),
        )  # fmt: skip


class PredictionLogUnavailable(RuntimeError):
    """The log's file cannot be read or written (locked for too long, unwritable, closed)."""


class PredictionLog:
    """Append-only log of predictions and labels; safe to share between threads.

    One `hearth.storage.sqlite.SQLiteFile`: each append is one transaction, so a batch of
    scoring attempts is logged whole or not at all; SQLite failures are
    `PredictionLogUnavailable`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        # WAL + NORMAL: a commit is an append, not an fsync, so logging stays off the
        # latency budget; a crash loses at most the last few rows, never the file.
        self._db = SQLiteFile(
            path, name=f"prediction log {path}", error=PredictionLogUnavailable, timeout_s=5.0
        )
        self._migrate()
        self._db.script(_SCHEMA)

    @staticmethod
    def _outdated(conn: sqlite3.Connection) -> list[str] | None:
        """The columns to keep when the log was made by an older Hearth (fewer columns,
        NOT NULL scores) and needs a rebuild; None when it is current or new."""
        info = conn.execute("PRAGMA table_info(predictions)").fetchall()
        if not info:
            return None
        names = {row[1] for row in info}
        score_not_null = any(row[1] == "score" and row[3] for row in info)
        if set(_COLUMNS) <= names and not score_not_null:
            return None
        return [c for c in _COLUMNS if c in names]

    def _migrate(self) -> None:
        """Rebuild a log made by an older Hearth, keeping its rows."""
        with self._db.read() as conn:
            if self._outdated(conn) is None:  # the usual case: no write lock taken
                return
        with self._db.transaction() as conn:
            # Asked again under the write lock: another process may have migrated it since.
            keep = self._outdated(conn)
            if keep is None:
                return
            columns = ", ".join(keep)
            conn.execute("ALTER TABLE predictions RENAME TO predictions_old")
            conn.execute("DROP INDEX IF EXISTS predictions_tx")
            conn.execute(_PREDICTIONS)
            conn.execute(
                f"INSERT INTO predictions ({columns}) SELECT {columns} FROM predictions_old"
            )
            conn.execute("DROP TABLE predictions_old")

    def record_entries(self, entries: Sequence[PredictionRecord]) -> None:
        """Append scoring attempts (answers, challenger failures, shadow scores)."""
        if not entries:
            return
        now = time.time()
        rows = [e.row(now) for e in entries]
        marks = ", ".join("?" * len(_COLUMNS))
        with self._db.transaction() as conn:
            conn.executemany(
                f"INSERT INTO predictions ({', '.join(_COLUMNS)}) VALUES ({marks})", rows
            )

    def feedback(self, transaction_id: str, is_fraud: bool) -> bool:
        """Store a label; True when a prediction for this transaction was logged."""
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO feedback VALUES (?, ?, ?)",
                (transaction_id, int(is_fraud), time.time()),
            )
            found = conn.execute(
                "SELECT 1 FROM predictions WHERE transaction_id = ? LIMIT 1", (transaction_id,)
            ).fetchone()
        return found is not None

    def analysis_rows(
        self, rollout_id: str | None = None, since: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The rollout analysis's input: one dict per scoring attempt, oldest first.

        Keys: ``variant`` ("champion" | "challenger"), ``ok`` (bool), ``latency_ms``
        (float: the model call's own time, measured alike for both variants — see
        `hearth.serving.scoring`), ``score`` (float, None when not ok), ``is_fraud`` (the
        newest /feedback label of the transaction as a bool, or None), ``model_version``
        (str), ``shadow`` (bool: a challenger's score of a copy), ``customer_id`` (str or
        None: the analysis resamples by customer, as frauds come in bursts per customer),
        ``transaction_id`` (str: a retried transaction is scored once in the analysis).
        Filtered by `rollout_id` (None: every rollout, and none) and `since` (aware or naive
        UTC).
        """
        where: list[str] = ["p.latency_ms IS NOT NULL"]
        args: list[Any] = []
        if rollout_id is not None:
            where.append("p.rollout_id = ?")
            args.append(rollout_id)
        if since is not None:
            where.append("p.at >= ?")
            args.append(_epoch(since))
        query = (
            f"SELECT p.variant, p.ok, p.latency_ms, p.score, {_LABEL}, p.model_version, "
            f"p.shadow, p.customer_id, p.transaction_id FROM predictions p "
            f"WHERE {' AND '.join(where)} "
            "ORDER BY p.at, p.rowid"
        )
        with self._db.read() as conn:
            fetched = conn.execute(query, args).fetchall()
        return [
            {
                "variant": variant,
                "ok": bool(ok),
                "latency_ms": float(latency),
                "score": None if score is None else float(score),
                "is_fraud": None if label is None else bool(label),
                "model_version": str(version),
                "shadow": bool(shadow),
                "customer_id": customer,
                "transaction_id": transaction,
            }
            for (variant, ok, latency, score, label, version, shadow, customer, transaction) in (
                fetched
            )
        ]

    def counts(self, rollout_id: str | None = None) -> dict[str, dict[str, int]]:
        """Per variant (shadow copies apart as "challenger (shadow)"): requests, errors,
        labelled, frauds — the live numbers `hearth rollout status` shows."""
        where, args = ("WHERE p.rollout_id = ?", [rollout_id]) if rollout_id else ("", [])
        query = (
            "SELECT p.variant, p.shadow, COUNT(*), SUM(1 - p.ok), "
            f"SUM({_LABEL} IS NOT NULL), SUM(COALESCE({_LABEL}, 0)) "
            f"FROM predictions p {where} GROUP BY p.variant, p.shadow"
        )
        with self._db.read() as conn:
            fetched = conn.execute(query, args).fetchall()
        return {
            f"{variant}{' (shadow)' if shadow else ''}": {
                "requests": int(n),
                "errors": int(errors or 0),
                "labelled": int(labelled or 0),
                "frauds": int(frauds or 0),
            }
            for variant, shadow, n, errors, labelled, frauds in fetched
        }

    def answered_since(self, since: float) -> list[tuple[str, float, str]]:
        """(features JSON, score, model version) of every answer logged at or after `since`
        (epoch seconds) that carries its feature row: what the drift monitor compares."""
        with self._db.read() as conn:
            rows = conn.execute(
                # Answers only: challenger failures and shadow copies would count traffic twice.
                "SELECT features, score, model_version FROM predictions"
                " WHERE at >= ? AND features IS NOT NULL AND ok = 1 AND shadow = 0",
                (since,),
            ).fetchall()
        return [(str(f), float(s), str(v)) for f, s, v in rows]

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of `predictions` or `feedback` (tests, small analyses)."""
        if table not in {"predictions", "feedback"}:
            raise ValueError(f"unknown table {table!r}")
        with self._db.read() as conn:
            cursor = conn.execute(f"SELECT * FROM {table}")  # table checked above
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def close(self) -> None:
        self._db.close()


def _epoch(at: datetime) -> float:
    """Seconds since the epoch; a naive datetime is taken as UTC (as Hearth writes them)."""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
