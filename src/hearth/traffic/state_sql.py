"""What the rollout state's two SQL backends share: history, heartbeats, ping and close.

`hearth.traffic.state_sqlite` and `hearth.traffic.state_postgres` keep the history and the
serving processes' heartbeats in the same tables (``rollout_history``,
``serving_heartbeats``), so the SQL that reads and writes them is written once, here, over
either `hearth.storage.database.Database`. It marks parameters as sqlite3 does (``?``); a
backend whose driver marks them otherwise says how (`marker`). Where the two differ (how the
served state and the intent are stored), each backend has its own SQL.
"""

from __future__ import annotations

from typing import Any, ClassVar, Generic, TypeVar

from hearth.storage.database import Database
from hearth.traffic.state_store import StateStore

D = TypeVar("D", bound=Database[Any])


class SQLStateStore(StateStore, Generic[D]):
    """A `StateStore` in a SQL database (`_db`): the half the SQL backends share."""

    marker: ClassVar[str] = "?"  # how the driver marks a parameter: psycopg's is "%s"

    def __init__(self, db: D) -> None:
        self._db = db

    def _sql(self, query: str) -> str:
        return query.replace("?", self.marker)

    def revision(self) -> int:
        return self.served().revision

    def _read_history(self, rollout_id: str | None, limit: int) -> list[str | bytes]:
        where, args = ("WHERE rollout_id = ?", [rollout_id]) if rollout_id else ("", [])
        query = f"SELECT event FROM rollout_history {where} ORDER BY seq DESC LIMIT ?"
        with self._db.read() as conn:
            rows = conn.execute(self._sql(query), [*args, limit]).fetchall()
        return [r[0] for r in reversed(rows)]

    def _write_heartbeat(
        self, process: str, document: str, seen_at: float, forget_before: float
    ) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                self._sql("DELETE FROM serving_heartbeats WHERE seen_at < ?"), (forget_before,)
            )
            conn.execute(
                self._sql(
                    "INSERT INTO serving_heartbeats (process, seen_at, heartbeat) "
                    "VALUES (?, ?, ?) ON CONFLICT (process) DO UPDATE "
                    "SET seen_at = excluded.seen_at, heartbeat = excluded.heartbeat"
                ),
                (process, seen_at, document),
            )

    def _read_heartbeats(self) -> list[str | bytes]:
        with self._db.read() as conn:
            rows = conn.execute("SELECT heartbeat FROM serving_heartbeats").fetchall()
        return [r[0] for r in rows]

    def ping(self) -> bool:
        return self._db.ping()

    def close(self) -> None:
        self._db.close()
