"""The rollout state in one SQLite file (the default backend): ``<home>/rollout.sqlite``.

WAL mode; writes run in ``BEGIN IMMEDIATE`` transactions (`hearth.storage.sqlite`), so a
read-modify-write across processes is atomic. The champion has its own one-row table; the
store's revision is the highest revision either row carries.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

from hearth.storage.sqlite import SQLiteFile
from hearth.traffic.rollout_state import Served, StateUnavailable
from hearth.traffic.state_sql import SQLStateStore
from hearth.traffic.state_store import Plan, StoredServed, Write, decode_intent

STATE_FILE = "rollout.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollout_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL, state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_champion (
    id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL, version TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, rollout_id TEXT NOT NULL, event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rollout_history_id ON rollout_history (rollout_id, seq);
CREATE TABLE IF NOT EXISTS rollout_intent (
    id INTEGER PRIMARY KEY CHECK (id = 1), intent TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS serving_heartbeats (
    process TEXT PRIMARY KEY, seen_at REAL NOT NULL, heartbeat TEXT NOT NULL
);
"""
# One statement, so one snapshot: the rollout and the champion can never come from two commits.
_SERVED = """
SELECT (SELECT state FROM rollout_state WHERE id = 1),
       (SELECT version FROM rollout_champion WHERE id = 1),
       MAX(COALESCE((SELECT revision FROM rollout_state WHERE id = 1), 0),
           COALESCE((SELECT revision FROM rollout_champion WHERE id = 1), 0))
"""


class SQLiteStateStore(SQLStateStore[SQLiteFile]):
    """The state in one SQLite file (WAL); one connection per object, serialised by a lock.

    Within a process the lock orders calls; across processes ``BEGIN IMMEDIATE`` takes the
    write lock before the read, so two writers can never both read the old state.
    """

    backend = "sqlite"

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self.path = path
        # FULL: a rollback or promotion must survive a power cut, and writes are rare.
        super().__init__(
            SQLiteFile(
                path,
                name=f"rollout state {path}",
                error=StateUnavailable,
                synchronous="FULL",
                timeout_s=timeout_s,
            )
        )
        self._db.script(_SCHEMA)

    @staticmethod
    def _stored(conn: sqlite3.Connection) -> StoredServed:
        rollout, champion, revision = conn.execute(_SERVED).fetchone()
        return StoredServed(champion, rollout, revision)

    @staticmethod
    def _save(conn: sqlite3.Connection, write: Write) -> None:
        if write.event is None:
            return
        if write.rollout is not None:
            conn.execute(
                "INSERT OR REPLACE INTO rollout_state (id, revision, state) VALUES (1, ?, ?)",
                (write.revision, write.rollout.model_dump_json()),
            )
        if write.champion is not None:
            conn.execute(
                "INSERT OR REPLACE INTO rollout_champion (id, revision, version) VALUES (1, ?, ?)",
                (write.revision, write.champion),
            )
        conn.execute(
            "INSERT INTO rollout_history (rollout_id, event) VALUES (?, ?)",
            (write.event.rollout_id, write.event.model_dump_json()),
        )
        if write.intent is not None:
            _store_intent(conn, write.intent.model_dump_json())

    def _read_served(self) -> StoredServed:
        with self._db.read() as conn:
            return self._stored(conn)

    def _transact(self, plan: Plan) -> tuple[Served, Write]:
        with self._db.transaction() as conn:
            served = self._stored(conn).decoded()
            write = plan(served, decode_intent(_stored_intent(conn)))
            self._save(conn, write)
        return served, write

    def _read_intent(self) -> str | bytes | None:
        with self._db.read() as conn:
            return _stored_intent(conn)

    def _write_intent(
        self, document: str | None, check: Callable[[str | bytes | None], None]
    ) -> None:
        with self._db.transaction() as conn:
            check(_stored_intent(conn))
            if document is None:
                conn.execute("DELETE FROM rollout_intent")
            else:
                _store_intent(conn, document)


def _stored_intent(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT intent FROM rollout_intent WHERE id = 1").fetchone()
    return str(row[0]) if row else None


def _store_intent(conn: sqlite3.Connection, document: str) -> None:
    conn.execute("INSERT OR REPLACE INTO rollout_intent (id, intent) VALUES (1, ?)", (document,))
