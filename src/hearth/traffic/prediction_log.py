"""The prediction log and the delayed labels: a SQLite file under HEARTH_HOME, or PostgreSQL.

By default the log is one small SQLite file (``<home>/serving/serving.sqlite``); with
``HEARTH_DATABASE_URL`` set it is two tables of Hearth's PostgreSQL schema (created by
`hearth.traffic.migrations`), shared by every serving process on every machine, so the
rollout analysis counts the whole fleet. `hearth.traffic.stores.open_prediction_log` opens
the one `Settings` chooses; both answer every query below alike.

The rollout analysis and monitoring join the two tables on ``transaction_id``: which variant
and model version scored a transaction (for which customer, in which rollout, how fast,
whether it failed, whether it was a shadow copy), what it decided, and (days later, via
/feedback) whether it was fraud. `PredictionLog.analysis_rows` is the rollout analysis's
view of it: rows that `hearth.rollout.verdict.analyse` takes as they are.

Serving writes through a `hearth.traffic.prediction_log_writer.PredictionLogWriter`, so a
log that fails never fails or stalls a scored request.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hearth.storage.sqlite import SQLiteFile

if TYPE_CHECKING:
    from hearth.storage.postgres import PostgresDatabase

log = logging.getLogger(__name__)

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
# The newest label of the transaction (a corrected label replaces an earlier one). The
# queries are written once, with `?` parameters and `{row}` (the column that orders rows
# appended in one instant: SQLite's rowid, PostgreSQL's seq); each backend fills them in.
_LABEL = (
    "(SELECT f.is_fraud FROM feedback f WHERE f.transaction_id = p.transaction_id "
    "ORDER BY f.at DESC, f.{row} DESC LIMIT 1)"
)
_TABLE_COLUMNS = {"predictions": _COLUMNS, "feedback": ("transaction_id", "is_fraud", "at")}


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
    """The log cannot be read or written (file locked for too long or unwritable, database
    unreachable, closed)."""


class _Tables(Protocol):
    """Where the two tables are: the part of `PredictionLog` a backend supplies."""

    name: str

    def read(self) -> AbstractContextManager[Any]: ...
    def transaction(self) -> AbstractContextManager[Any]: ...
    def sql(self, query: str) -> str: ...
    def insert_many(self, conn: Any, query: str, rows: list[tuple[Any, ...]]) -> None: ...
    def close(self) -> None: ...


class _SQLiteTables:
    """One `hearth.storage.sqlite.SQLiteFile`, migrated from older Hearths' layouts."""

    name = "sqlite"

    def __init__(self, path: Path) -> None:
        # WAL + NORMAL: a commit is an append, not an fsync, so logging stays off the
        # latency budget; a crash loses at most the last few rows, never the file.
        # Checkpoints in a thread of their own, not inside the writer's commits (the
        # requests waiting for those, `Gateway._log`, waited for the checkpoint too).
        self.file = SQLiteFile(
            path, name=f"prediction log {path}", error=PredictionLogUnavailable, timeout_s=5.0,
            checkpoint_every_s=0.25,
        )  # fmt: skip
        self._migrate()
        self.file.script(_SCHEMA)

    def read(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.file.read()

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return self.file.transaction()

    @staticmethod
    def sql(query: str) -> str:
        return query.replace("{row}", "rowid")

    @staticmethod
    def insert_many(conn: sqlite3.Connection, query: str, rows: list[tuple[Any, ...]]) -> None:
        conn.executemany(query, rows)

    def close(self) -> None:
        self.file.close()

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
        with self.file.read() as conn:
            if self._outdated(conn) is None:  # the usual case: no write lock taken
                return
        with self.file.transaction() as conn:
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


class _PostgresTables:
    """Hearth's PostgreSQL schema, through a `hearth.storage.postgres.PostgresDatabase`."""

    name = "postgres"

    def __init__(self, url: str) -> None:
        # lazy: SQLite users (the default) never load psycopg
        from hearth.storage.postgres import PostgresDatabase
        from hearth.traffic.migrations import MIGRATIONS

        self.database: PostgresDatabase = PostgresDatabase(
            url, name="prediction log", error=PredictionLogUnavailable, migrations=MIGRATIONS
        )

    def read(self) -> AbstractContextManager[Any]:
        return self.database.read()

    def transaction(self) -> AbstractContextManager[Any]:
        return self.database.transaction()

    @staticmethod
    def sql(query: str) -> str:
        return query.replace("{row}", "seq").replace("?", "%s")

    @staticmethod
    def insert_many(conn: Any, query: str, rows: list[tuple[Any, ...]]) -> None:
        with conn.cursor() as cursor:
            cursor.executemany(query, rows)  # pipelined: one round trip per batch

    def close(self) -> None:
        self.database.close()


class PredictionLog:
    """Append-only log of predictions and labels; safe to share between threads.

    In the SQLite file at `path`, or (`database_url`) in PostgreSQL: give one of the two.
    Each append is one transaction, so a batch of scoring attempts is logged whole or not
    at all; the backend's failures are `PredictionLogUnavailable`.
    """

    def __init__(self, path: Path | None = None, *, database_url: str | None = None) -> None:
        if (path is None) == (database_url is None):
            raise ValueError("a prediction log is a SQLite path or a database_url: give one")
        self.path = path
        self.database_url = database_url
        self._tables: _Tables = (
            _SQLiteTables(path) if path is not None else _PostgresTables(str(database_url))
        )

    @property
    def backend(self) -> str:
        """ "sqlite" or "postgres"."""
        return self._tables.name

    def record_entries(self, entries: Sequence[PredictionRecord]) -> None:
        """Append scoring attempts (answers, challenger failures, shadow scores)."""
        if not entries:
            return
        now = time.time()
        rows = [e.row(now) for e in entries]
        marks = ", ".join("?" * len(_COLUMNS))
        query = self._tables.sql(
            f"INSERT INTO predictions ({', '.join(_COLUMNS)}) VALUES ({marks})"
        )
        with self._tables.transaction() as conn:
            self._tables.insert_many(conn, query, rows)

    def feedback(self, transaction_id: str, is_fraud: bool) -> bool:
        """Store a label; True when a prediction for this transaction was logged."""
        sql = self._tables.sql
        with self._tables.transaction() as conn:
            conn.execute(
                sql("INSERT INTO feedback (transaction_id, is_fraud, at) VALUES (?, ?, ?)"),
                (transaction_id, int(is_fraud), time.time()),
            )
            found = conn.execute(
                sql("SELECT 1 FROM predictions WHERE transaction_id = ? LIMIT 1"),
                (transaction_id,),
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
            "ORDER BY p.at, p.{row}"
        )
        fetched = self._fetch(query, args)
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
            f"COUNT({_LABEL}), SUM(COALESCE({_LABEL}, 0)) "
            f"FROM predictions p {where} GROUP BY p.variant, p.shadow"
        )
        fetched = self._fetch(query, args)
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
        rows = self._fetch(
            # Answers only: challenger failures and shadow copies would count traffic twice.
            "SELECT features, score, model_version FROM predictions"
            " WHERE at >= ? AND features IS NOT NULL AND ok = 1 AND shadow = 0",
            [since],
        )
        return [(str(f), float(s), str(v)) for f, s, v in rows]

    def rollout_features(self, rollout_id: str, since: float) -> list[tuple[str, str, str, float]]:
        """(transaction id, variant, features JSON, at) of `rollout_id`'s answers logged at
        or after `since` (epoch seconds) with their feature row: what the paired rollout
        analysis scores with the model that did not answer (`hearth.rollout.counterfactual`)."""
        rows = self._fetch(
            "SELECT transaction_id, variant, features, at FROM predictions"
            " WHERE rollout_id = ? AND at >= ? AND features IS NOT NULL AND ok = 1"
            " AND shadow = 0",
            [rollout_id, since],
        )
        return [(str(t), str(v), str(f), float(a)) for t, v, f, a in rows]

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of `predictions` or `feedback` (tests, small analyses)."""
        columns = _TABLE_COLUMNS.get(table)
        if columns is None:
            raise ValueError(f"unknown table {table!r}")
        query = f"SELECT {', '.join(columns)} FROM {table} ORDER BY {{row}}"  # table checked
        return [dict(zip(columns, row, strict=True)) for row in self._fetch(query, [])]

    def _fetch(self, query: str, args: list[Any]) -> list[Any]:
        """Every row `query` (`?` parameters, `{row}`) answers, outside a transaction."""
        with self._tables.read() as conn:
            return list(conn.execute(self._tables.sql(query), args).fetchall())

    def close(self) -> None:
        self._tables.close()


def _epoch(at: datetime) -> float:
    """Seconds since the epoch; a naive datetime is taken as UTC (as Hearth writes them)."""
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()
