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
  the last commits; FULL: every commit survives a power cut);
- WAL checkpoints, on a hot file, off the callers' threads (``checkpoint_every_s``): see
  `Checkpointer`.

`transaction()` is ``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any error): it takes the
write lock before its first read, so a read-modify-write is atomic across processes (a
DEFERRED transaction would fail one of two concurrent writers with SQLITE_BUSY). `read()`
runs statements outside a transaction, each seeing the latest commit. `nowait()` is
`read()` for an event loop: a connection of its own with no busy timeout, which raises
`WouldBlock` where `read()` would wait (its lock taken, the file's write lock held by
another connection), so the caller can hand the call to a thread instead. Every
`sqlite3.Error`, and any use after `close()`, is raised as ``error(message)``, an exception
type the caller chooses, with the file's name and the cause in the message.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from hearth.storage.database import Database

log = logging.getLogger(__name__)

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]

_BUSY = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class WouldBlock(Exception):
    """`SQLiteFile.nowait()` could not go on without waiting; nothing was changed by the
    statement that raised it. Try again where waiting is allowed (a thread)."""


# A WAL this long (in pages) after a passive checkpoint is restarted by a RESTART one: it
# waits for the writers of the moment, then the next commit writes the WAL from its start.
RESTART_FRAMES = 2000


class Checkpointer:
    """WAL checkpoints of one file in a thread of their own, on a connection of their own.

    SQLite's automatic checkpoint (every 1000 WAL pages) runs inside the COMMIT that crosses
    the mark: that caller copies the WAL into the database and fsyncs it, holding its
    file's lock meanwhile. Traced under `hearth soak`: one commit in ~300 of the online
    store and of the prediction log, 5-47 ms each (0.14 ms for the others), and every
    request queued behind the lock waited with it. Here the file's own connection has
    ``wal_autocheckpoint=0`` and this thread runs a PASSIVE checkpoint every `every_s`
    (it never blocks a writer). A PASSIVE one cannot restart the WAL while commits keep
    coming, so when the WAL still holds more than `restart_frames` pages, a RESTART one
    follows: it waits for the commit in progress (the rest is already copied, so briefly)
    and the next commit writes the WAL from its start again, keeping it bounded.

    `checkpoints` counts the checkpoints run; `run()` runs one now (tests, shutdown).
    Failures (another process checkpointing, a locked file) are logged and retried on the
    next tick: a checkpoint is housekeeping, never an error for a caller.
    """

    def __init__(self, path: Path, every_s: float, restart_frames: int = RESTART_FRAMES) -> None:
        self.path, self.every_s, self.restart_frames = path, every_s, restart_frames
        self.checkpoints = 0
        self.restarts = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # A short busy timeout: a RESTART that cannot get its turn tries again next tick.
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(path), timeout=0.1, isolation_level=None, check_same_thread=False
        )
        self._thread = threading.Thread(
            target=self._loop, name=f"checkpoint-{path.name}", daemon=True
        )
        self._thread.start()

    def run(self) -> tuple[int, int]:
        """One checkpoint now: (pages in the WAL, pages copied to the database)."""
        with self._lock:
            if self._conn is None:
                return 0, 0
            _, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
            if frames > self.restart_frames:
                _, frames, copied = self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                self.restarts += 1
            return frames, copied

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.run()
            except sqlite3.Error as exc:
                log.debug("checkpoint of %s failed (retried): %s", self.path, exc)

    def close(self) -> None:
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(5.0)
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class SQLiteFile(Database[sqlite3.Connection]):
    """One SQLite file: one connection, serialised by a lock; safe to share between threads.

    `name` names the file in error messages (e.g. ``"SQLite online store /x/online.sqlite"``);
    `error` is the exception type raised, with a message, for every SQLite failure. The lock
    is not reentrant: do not open `read()` or `transaction()` inside another on one object.
    `checkpoint_every_s`: checkpoint in a `Checkpointer` thread at that interval instead of
    inside commits (for files written on a request path); None: SQLite's automatic ones.
    """

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        error: type[Exception],
        synchronous: Synchronous = "NORMAL",
        timeout_s: float = 5.0,
        checkpoint_every_s: float | None = None,
    ) -> None:
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"unknown synchronous level {synchronous!r}")
        self.path = path
        self.name = name
        self._error = error
        self._synchronous = synchronous
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._nowait_lock = threading.Lock()
        self._nowait_conn: sqlite3.Connection | None = None  # opened on first use
        self.checkpointer: Checkpointer | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._translate():
            conn = self._connect(timeout_s, checkpoint_every_s is not None)
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                if checkpoint_every_s is not None:
                    self.checkpointer = Checkpointer(path, checkpoint_every_s)
            except BaseException:
                conn.close()
                raise
        self._conn = conn

    def _connect(self, timeout_s: float, own_checkpoints: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            if own_checkpoints:
                conn.execute("PRAGMA wal_autocheckpoint=0")
        except BaseException:
            conn.close()
            raise
        return conn

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
    def nowait(self) -> Iterator[sqlite3.Connection]:
        """Like `read()`, for a caller that must not wait (an event loop): `WouldBlock` at
        once instead of waiting for this object's no-wait connection (in use by another
        thread) or for the file's write lock (SQLITE_BUSY: another connection writes)."""
        if not self._nowait_lock.acquire(blocking=False):
            raise WouldBlock(f"{self.name}: its no-wait connection is in use")
        try:
            with self._translate():
                if self.closed:
                    raise self._error(f"{self.name} is closed")
                if self._nowait_conn is None:
                    self._nowait_conn = self._connect(0.0, self.checkpointer is not None)
                try:
                    yield self._nowait_conn
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode & 0xFF in _BUSY:
                        raise WouldBlock(f"{self.name}: {exc}") from exc
                    raise
        finally:
            self._nowait_lock.release()

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

    @property
    def closed(self) -> bool:
        return self._conn is None

    def close(self) -> None:
        """Close the connection; later calls raise ``error``. Closing twice is harmless."""
        if self.checkpointer is not None:
            self.checkpointer.close()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        with self._nowait_lock:
            if self._nowait_conn is not None:
                self._nowait_conn.close()
                self._nowait_conn = None
