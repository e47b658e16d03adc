"""The rollout state in one SQLite file (the default backend): ``<home>/rollout.sqlite``.

WAL mode; writes run in ``BEGIN IMMEDIATE`` transactions, so a read-modify-write across
processes is atomic.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hearth.traffic.rollout_state import (
    HISTORY_LIMIT,
    HistoryEvent,
    Mutator,
    PromotionIntent,
    RolloutState,
    Scalar,
    StateUnavailable,
    plan_start,
    plan_update,
)

STATE_FILE = "rollout.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollout_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL, state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, rollout_id TEXT NOT NULL, event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rollout_history_id ON rollout_history (rollout_id, seq);
CREATE TABLE IF NOT EXISTS rollout_intent (
    id INTEGER PRIMARY KEY CHECK (id = 1), intent TEXT NOT NULL
);
"""


class SQLiteStateStore:
    """The state in one SQLite file (WAL); one connection per object, serialised by a lock.

    Within a process the lock orders calls; across processes ``BEGIN IMMEDIATE`` takes the
    write lock before the read, so two writers can never both read the old state.
    """

    backend = "sqlite"

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; BEGIN IMMEDIATE is ours to issue.
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        with self._locked() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            # FULL: a rollback or promotion must survive a power cut, and writes are rare.
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StateUnavailable(f"rollout state {self.path} is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StateUnavailable(f"rollout state {self.path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _read(conn: sqlite3.Connection) -> tuple[RolloutState | None, int]:
        row = conn.execute("SELECT state, revision FROM rollout_state WHERE id = 1").fetchone()
        if row is None:
            return None, 0
        return RolloutState.model_validate_json(row[0]), int(row[1])

    @staticmethod
    def _save(conn: sqlite3.Connection, state: RolloutState | None, event: HistoryEvent) -> None:
        if state is not None:
            conn.execute(
                "INSERT OR REPLACE INTO rollout_state (id, revision, state) VALUES (1, ?, ?)",
                (state.revision, state.model_dump_json()),
            )
        conn.execute(
            "INSERT INTO rollout_history (rollout_id, event) VALUES (?, ?)",
            (event.rollout_id, event.model_dump_json()),
        )

    def current(self) -> RolloutState | None:
        with self._locked() as conn:
            return self._read(conn)[0]

    def revision(self) -> int:
        with self._locked() as conn:
            row = conn.execute("SELECT revision FROM rollout_state WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def start(self, state: RolloutState, actor: str, reason: str = "") -> RolloutState:
        with self._write() as conn:
            current, revision = self._read(conn)
            new, event = plan_start(current, state, revision, actor, reason)
            self._save(conn, new, event)
        return new

    def update(
        self,
        mutator: Mutator,
        actor: str,
        action: str,
        reason: str = "",
        numbers: dict[str, Scalar] | None = None,
        test: str | None = None,
        rollout_id: str | None = None,
    ) -> RolloutState:
        event = {
            "actor": actor,
            "action": action,
            "reason": reason,
            "numbers": numbers or {},
            "test": test,
        }
        with self._write() as conn:
            current, revision = self._read(conn)
            new, history = plan_update(current, revision, mutator, rollout_id, event)
            self._save(conn, new, history)
        result = new or current
        assert result is not None  # plan_update refuses a missing rollout
        return result

    def history(
        self, rollout_id: str | None = None, limit: int = HISTORY_LIMIT
    ) -> list[HistoryEvent]:
        where, args = ("WHERE rollout_id = ?", (rollout_id,)) if rollout_id else ("", ())
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT event FROM rollout_history {where} ORDER BY seq DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [HistoryEvent.model_validate_json(r[0]) for r in reversed(rows)]

    def intent(self) -> PromotionIntent | None:
        with self._locked() as conn:
            row = conn.execute("SELECT intent FROM rollout_intent WHERE id = 1").fetchone()
        return PromotionIntent.model_validate_json(row[0]) if row else None

    def set_intent(self, intent: PromotionIntent | None) -> None:
        with self._write() as conn:
            if intent is None:
                conn.execute("DELETE FROM rollout_intent")
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO rollout_intent (id, intent) VALUES (1, ?)",
                    (intent.model_dump_json(),),
                )

    def ping(self) -> bool:
        try:
            with self._locked() as conn:
                conn.execute("SELECT 1").fetchone()
        except StateUnavailable:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
