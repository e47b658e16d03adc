"""The rollout state in PostgreSQL (``HEARTH_DATABASE_URL``): tables of the ``hearth`` schema.

One row (``rollout_served``) holds the champion, the latest rollout's JSON document, the
store's revision and the pending registry change; the history is a table of events. A write
is one transaction that first locks that row (``SELECT … FOR UPDATE``): a second writer waits
for the first to commit and then reads what it wrote, so a read-modify-write is atomic across
threads, processes and machines, and the history never disagrees with the state. The tables
are created by `hearth.traffic.migrations`.
"""

from __future__ import annotations

from collections.abc import Callable

from hearth.storage.postgres import Conn, PostgresDatabase
from hearth.traffic.migrations import MIGRATIONS
from hearth.traffic.rollout_state import Served, StateUnavailable
from hearth.traffic.state_sql import SQLStateStore
from hearth.traffic.state_store import Plan, StoredServed, Write, decode_intent

_SERVED = "SELECT state, champion, revision, intent FROM rollout_served WHERE id = 1"


class PostgresStateStore(SQLStateStore[PostgresDatabase]):
    """The state in a PostgreSQL database, through a small pool of connections.

    `timeout_s` bounds the wait for a connection (and to connect): with the server down, a
    call fails (StateUnavailable) after it, as Redis's fail-fast client does, rather than
    keeping a follower's refresh or an admin request waiting.
    """

    backend = "postgres"
    marker = "%s"

    def __init__(self, url: str, timeout_s: float = 2.0, max_connections: int = 4) -> None:
        self.url = url
        super().__init__(
            PostgresDatabase(
                url,
                name="rollout state",
                error=StateUnavailable,
                migrations=MIGRATIONS,
                max_size=max_connections,
                timeout_s=timeout_s,
            )
        )

    @property
    def database(self) -> PostgresDatabase:
        return self._db

    @staticmethod
    def _read(conn: Conn, lock: bool = False) -> tuple[StoredServed, str | None]:
        row = conn.execute(_SERVED + (" FOR UPDATE" if lock else "")).fetchone()
        assert row is not None  # the migration inserts the one row
        state, champion, revision, intent = row
        return StoredServed(champion, state, revision), intent

    def _read_served(self) -> StoredServed:
        with self._db.read() as conn:
            return self._read(conn)[0]

    def _transact(self, plan: Plan) -> tuple[Served, Write]:
        with self._db.transaction() as conn:
            stored, intent = self._read(conn, lock=True)
            served = stored.decoded()
            write = plan(served, decode_intent(intent))
            if write.event is not None:
                _save(conn, write)
        return served, write

    def _read_intent(self) -> str | bytes | None:
        with self._db.read() as conn:
            return self._read(conn)[1]

    def _write_intent(
        self, document: str | None, check: Callable[[str | bytes | None], None]
    ) -> None:
        with self._db.transaction() as conn:
            check(self._read(conn, lock=True)[1])
            conn.execute("UPDATE rollout_served SET intent = %s WHERE id = 1", (document,))


def _save(conn: Conn, write: Write) -> None:
    assert write.event is not None
    conn.execute(
        "UPDATE rollout_served SET revision = %s, state = COALESCE(%s, state), "
        "champion = COALESCE(%s, champion), intent = COALESCE(%s, intent) WHERE id = 1",
        (
            write.revision,
            write.rollout.model_dump_json() if write.rollout is not None else None,
            write.champion,
            write.intent.model_dump_json() if write.intent is not None else None,
        ),
    )
    conn.execute(
        "INSERT INTO rollout_history (rollout_id, event) VALUES (%s, %s)",
        (write.event.rollout_id, write.event.model_dump_json()),
    )
