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

Serving writes through a `PredictionLogWriter`: a bounded in-memory buffer drained by one
thread, so a log that fails (disk full, database locked, read-only file) never fails or
stalls a scored request. Failed writes are retried with backoff; entries that still do not
fit are dropped oldest first, counted (``hearth_prediction_log_dropped_total``) and named
in a log line, never silently.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from hearth.observability.prometheus import (
    record_log_dropped,
    record_log_write_failure,
    set_log_pending,
)
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


# -- the serving side's writer ------------------------------------------------------------
MAX_PENDING = 100_000  # entries buffered while the log cannot be written (~0.5 KB each)
MAX_BATCH = 2_000  # entries per write transaction
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 5.0
REPORT_EVERY_S = 5.0  # at most one "cannot write" / "dropped" line per interval
_IDS_IN_REPORT = 20


class PredictionLogWriter:
    """Appends entries to a `PredictionLog` from one thread; `submit` never blocks or raises.

    Entries wait in a buffer of at most `max_pending`; the thread writes whatever is
    buffered in one transaction (so a burst costs one commit). A failed write keeps its
    entries at the front of the buffer and is retried with exponential backoff
    (`retry_first_s` doubling up to `retry_max_s`); when the buffer is full the oldest
    entries are dropped, counted and their transaction ids logged. `open_log` is called
    before each write (a `Background.get`: a log still opening counts as a failed write).
    """

    def __init__(
        self,
        open_log: Callable[[], PredictionLog],
        max_pending: int = MAX_PENDING,
        max_batch: int = MAX_BATCH,
        retry_first_s: float = RETRY_FIRST_S,
        retry_max_s: float = RETRY_MAX_S,
    ) -> None:
        self._open_log = open_log
        self.max_pending, self.max_batch = max_pending, max_batch
        self.retry_first_s, self.retry_max_s = retry_first_s, retry_max_s
        self._queue: deque[PredictionRecord] = deque()
        self._head = 0  # sequence number of _queue[0]; entries are numbered as submitted
        self._waiters: deque[tuple[int, Future[bool]]] = deque()  # (end sequence, future)
        self._cond = threading.Condition()
        self._writing = 0  # entries taken by the thread, not yet written or put back
        self._failures = 0  # consecutive failed writes
        self._last_error = ""
        self.written = 0
        self.dropped = 0
        self._unreported_drops: list[str] = []
        self._unreported_count = 0
        self._reported_at = 0.0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """False while writes fail: then callers should not wait for a write."""
        return self._failures == 0

    @property
    def pending(self) -> int:
        """Entries not written yet (buffered or being written)."""
        return len(self._queue) + self._writing

    def submit(self, entries: Sequence[PredictionRecord]) -> Future[bool] | None:
        """Buffer `entries` for writing. The future says (True) once they are written, or
        (False) that the write failed or they were dropped; None when the log is failing or
        there is nothing to write (do not wait)."""
        if not entries:
            return None
        future: Future[bool] | None = None
        with self._cond:
            self._queue.extend(entries)
            if self.healthy:
                future = Future()
                self._waiters.append((self._head + len(self._queue), future))
            self._drop_overflow()
            self._cond.notify()
        return future

    def flush(self, timeout_s: float) -> bool:
        """Block until everything submitted so far is written; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._head + len(self._queue)
            # Entries before head - writing are written (or dropped); in flight are not.
            while self._head - self._writing < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is buffered (up to `timeout_s`), then stop the thread; what is still
        unwritten then is counted as dropped and logged."""
        self.flush(timeout_s)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            lost = list(self._queue)
            self._queue.clear()
            self._head += len(lost)
        if lost:
            self.dropped += len(lost)
            record_log_dropped(len(lost))
            ids = ", ".join(e.transaction_id for e in lost[:_IDS_IN_REPORT])
            log.error(
                "prediction log: %d entries not written at shutdown (last error: %s); "
                "transaction ids: %s%s", len(lost), self._last_error, ids,
                " …" if len(lost) > _IDS_IN_REPORT else "",
            )  # fmt: skip
        set_log_pending(0)

    # -- the writer thread ------------------------------------------------------------------
    def _drop_overflow(self) -> None:
        """Drop the oldest buffered entries beyond max_pending (under the lock)."""
        over = len(self._queue) - self.max_pending
        if over <= 0:
            return
        for _ in range(over):
            entry = self._queue.popleft()
            if len(self._unreported_drops) < _IDS_IN_REPORT:
                self._unreported_drops.append(entry.transaction_id)
        self._head += over
        self.dropped += over
        self._unreported_count += over
        record_log_dropped(over)
        self._resolve(ok=False)

    def _resolve(self, ok: bool, everyone: bool = False) -> None:
        """Answer the waiters whose entries have left the buffer (all of them: `everyone`)."""
        done_upto = self._head - self._writing
        while self._waiters and (everyone or self._waiters[0][0] <= done_upto):
            _, future = self._waiters.popleft()
            with contextlib.suppress(InvalidStateError):  # the waiter gave up (cancelled)
                future.set_result(ok)

    def _take(self) -> list[PredictionRecord] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            n = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            self._head += n
            self._writing = n
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._open_log().record_entries(batch)
            except Exception as exc:  # disk full, locked, read-only, not open yet: retry
                self._failed(batch, exc)
                self._report()
                if self._stopping:  # closing: close() counts and logs what is left
                    return
                delay = min(self.retry_max_s, self.retry_first_s * 2 ** (self._failures - 1))
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(delay)
                continue
            with self._cond:
                self._writing = 0
                self.written += len(batch)
                if self._failures:
                    log.warning(
                        "prediction log writable again after %d failed writes; %d entries "
                        "pending", self._failures, len(self._queue),
                    )  # fmt: skip
                self._failures = 0
                self._resolve(ok=True)
                self._cond.notify_all()
            self._report()

    def _failed(self, batch: list[PredictionRecord], exc: Exception) -> None:
        record_log_write_failure()
        with self._cond:
            self._writing = 0
            self._queue.extendleft(reversed(batch))
            self._head -= len(batch)
            self._failures += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._resolve(ok=False, everyone=True)  # nobody waits for a retry
            self._drop_overflow()
            self._cond.notify_all()

    def _report(self) -> None:
        """The pending gauge, and (at most every REPORT_EVERY_S) a line on failures/drops."""
        set_log_pending(self.pending)
        now = time.monotonic()
        if now - self._reported_at < REPORT_EVERY_S:
            return
        with self._cond:
            count, ids = self._unreported_count, self._unreported_drops
            self._unreported_count, self._unreported_drops = 0, []
            failing, error, pending = self._failures, self._last_error, len(self._queue)
        if count:
            shown = ", ".join(ids) + (" …" if count > len(ids) else "")
            log.error(
                "prediction log: dropped %d entries (buffer of %d full; last error: %s); "
                "transaction ids: %s", count, self.max_pending, error, shown,
            )  # fmt: skip
            self._reported_at = now
        elif failing:
            log.warning(
                "prediction log cannot be written (%d failed writes, %d entries buffered, "
                "retrying): %s", failing, pending, error,
            )  # fmt: skip
            self._reported_at = now
