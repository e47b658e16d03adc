"""One SQLite state file: a locked connection, immediate transactions, errors in your type.

Every SQLite-backed store of Hearth (the online feature store, the rollout state, the
prediction log) keeps a small file that several threads and processes share. `SQLiteFile`
is the one place that opens such a file the same way each time:

- WAL journal, so readers never block the writer and several processes may share the file;
- a busy timeout, so a writer waits for another process's write lock instead of failing;
- ``isolation_level=None``: no implicit transactions, the store issues its own;
- ``check_same_thread=False`` and one lock per object: one connection, calls serialised
  (each is tens of microseconds, so a pool would buy little);
- ``synchronous`` chosen by the caller (NORMAL: a crash loses nothing, a power cut may lose
  the last commits; FULL: every commit survives a power cut).

`transaction()` is ``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any error): it takes the
write lock before its first read, so a read-modify-write is atomic across processes (a
DEFERRED transaction would fail one of two concurrent writers with SQLITE_BUSY). `read()`
runs statements outside a transaction, each seeing the latest commit. Every
`sqlite3.Error`, and any use after `close()`, is raised as ``error(message)``, an exception
type the caller chooses, with the file's name and the cause in the message.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


class SQLiteFile:
    """One SQLite file: one connection, serialised by a lock; safe to share between threads.

    `name` names the file in error messages (e.g. ``"SQLite online store /x/online.sqlite"``);
    `error` is the exception type raised, with a message, for every SQLite failure. The lock
    is not reentrant: do not open `read()` or `transaction()` inside another on one object.
    """

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        error: type[Exception],
        synchronous: Synchronous = "NORMAL",
        timeout_s: float = 5.0,
    ) -> None:
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"unknown synchronous level {synchronous!r}")
        self.path = path
        self.name = name
        self._error = error
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._translate():
            conn = sqlite3.connect(
                str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
                conn.execute(f"PRAGMA synchronous={synchronous}")
            except BaseException:
                conn.close()
                raise
        self._conn = conn

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._error(f"{self.name}: {exc}") from exc

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """The connection, under the lock, outside any transaction (each statement commits
        on its own): for reads, and for single statements that need no transaction."""
        with self._lock, self._translate():
            if self._conn is None:
                raise self._error(f"{self.name} is closed")
            yield self._conn

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding SQLite's write lock from its first statement.

        Commits when the block ends, rolls back when it raises (and re-raises: the caller's
        own exceptions pass unchanged, SQLite's become ``error``).
        """
        with self.read() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back on its own
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def script(self, sql: str) -> None:
        """Run a multi-statement script (schema: ``CREATE … IF NOT EXISTS``) outside a
        transaction; `sqlite3.Connection.executescript` would commit an open one."""
        with self.read() as conn:
            conn.executescript(sql)

    def ping(self) -> bool:
        """True when the file answers a trivial query; False (never an exception) if not."""
        try:
            with self.read() as conn:
                conn.execute("SELECT 1").fetchone()
        except self._error:
            return False
        return True

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        """Close the connection; later calls raise ``error``. Closing twice is harmless."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
