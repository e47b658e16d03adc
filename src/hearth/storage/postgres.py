"""One PostgreSQL database: a connection pool, transactions, versioned migrations, errors in
your type.

When ``HEARTH_DATABASE_URL`` is set, Hearth's shared state (the rollout state, the prediction
log and its labels) lives in PostgreSQL instead of SQLite files. `PostgresDatabase` is the one
place that talks to it, the PostgreSQL counterpart of `hearth.storage.sqlite.SQLiteFile`:

- a psycopg 3 connection pool (`psycopg_pool.ConnectionPool`), opened in the background: a
  store can be built while the server is down, and a call then fails after `timeout_s`
  instead of hanging; connections are checked when taken, so a server restart costs the
  stale ones, not a failed call; and the pool gives up reconnecting after `timeout_s` too
  (the next call starts again at once), so a server back after a long outage is used again
  within a second or two, not after psycopg_pool's backoff has grown to minutes;
- autocommit connections whose ``search_path`` is Hearth's schema (``hearth`` by default), so
  Hearth's tables never mix with another application's in a shared database;
- `transaction()`: one transaction on one connection (commit at the end of the block,
  rollback when it raises); `read()`: a connection outside any transaction;
- explicit, numbered `Migration`\\ s, applied once per object before its first statement, in
  one transaction under an advisory lock (two processes opening a new database at once
  apply each migration once), recorded in ``hearth_migrations``;
- every `psycopg.Error` (the pool's timeouts included) is raised as ``error(message)``, an
  exception type the caller chooses, with the database (password hidden) and the cause.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from hearth.storage.database import Database

log = logging.getLogger(__name__)

SCHEMA = "hearth"
MIGRATIONS_TABLE = "hearth_migrations"
# pg_advisory_xact_lock's key for "migrating Hearth's schema": any fixed 64-bit number that
# no other application of the database uses ("hearth" in ASCII).
MIGRATION_LOCK = 0x686561727468

Conn = psycopg.Connection[tuple]


@dataclass(frozen=True)
class Migration:
    """One numbered change of Hearth's tables: `sql` (one or more statements) runs once."""

    version: int
    name: str
    sql: str


class MigrationError(RuntimeError):
    """The database's recorded migrations disagree with this Hearth's."""


def redacted(url: str) -> str:
    """`url` with any password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


def is_postgres_url(url: str) -> bool:
    return urlsplit(url).scheme in ("postgresql", "postgres")


class PostgresDatabase(Database[Conn]):
    """A pool of connections to one database; safe to share between threads.

    `name` names the store in error messages; `error` is the exception type raised for every
    failure to reach or use the database; `migrations` are applied (those not applied yet)
    before the first statement this object runs. Close it when done.
    """

    def __init__(
        self,
        url: str,
        *,
        name: str,
        error: type[Exception],
        migrations: Sequence[Migration] = (),
        schema: str = SCHEMA,
        min_size: int = 1,
        max_size: int = 4,
        timeout_s: float = 5.0,
    ) -> None:
        versions = [m.version for m in migrations]
        if versions != sorted(set(versions)):
            raise ValueError(f"migrations must have increasing, distinct versions: {versions}")
        self.url = url
        self.name = f"{name} ({redacted(url)})"
        self.schema = schema
        self._error = error
        self._migrations = tuple(migrations)
        self._migrated = False
        self._migrate_lock = threading.Lock()
        self._closed = False
        with self._translate():
            self._pool = ConnectionPool(
                url,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout_s,
                # psycopg_pool retries a failed connection with a delay that doubles (1 s,
                # 2 s, 4 s, …) for up to 5 minutes by default: after a 2-minute outage the
                # next attempt could come 2 minutes after the server is back, and meanwhile
                # no call may start another one. Giving up after timeout_s lets the next
                # call (a follower refresh every second) try at once.
                reconnect_timeout=timeout_s,
                kwargs={
                    "autocommit": True,
                    "connect_timeout": max(1, round(timeout_s)),
                    "application_name": "hearth",
                },
                configure=self._configure,
                check=ConnectionPool.check_connection,
                name=f"hearth-{name.replace(' ', '-')}",
                open=True,
            )

    def _configure(self, conn: Conn) -> None:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise self._error(f"{self.name}: {exc}".rstrip()) from exc

    @contextmanager
    def _connection(self) -> Iterator[Conn]:
        if self._closed:
            raise self._error(f"{self.name} is closed")
        with self._translate(), self._pool.connection() as conn:
            if not self._migrated:
                self._migrate(conn)
            yield conn

    @contextmanager
    def read(self) -> Iterator[Conn]:
        """A connection outside any transaction (each statement commits on its own)."""
        with self._connection() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[Conn]:
        """One transaction: committed when the block ends, rolled back when it raises (the
        caller's own exceptions pass unchanged, psycopg's become ``error``)."""
        with self._connection() as conn, conn.transaction():
            yield conn

    # -- migrations ------------------------------------------------------------------------
    def _migrate(self, conn: Conn) -> None:
        with self._migrate_lock:
            if self._migrated:
                return
            applied = migrate(conn, self._migrations, self.schema)
            if applied:
                log.info("%s: applied migrations %s", self.name, applied)
            self._migrated = True

    def applied_migrations(self) -> list[tuple[int, str]]:
        """(version, name) of every migration recorded in the database, oldest first."""
        with self.read() as conn:
            rows = conn.execute(
                sql.SQL("SELECT version, name FROM {} ORDER BY version").format(
                    sql.Identifier(self.schema, MIGRATIONS_TABLE)
                )
            ).fetchall()
        return [(int(v), str(n)) for v, n in rows]

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Close the pool; later calls raise ``error``. Closing twice is harmless."""
        if not self._closed:
            self._closed = True
            self._pool.close()


def migrate(conn: Conn, migrations: Sequence[Migration], schema: str = SCHEMA) -> list[int]:
    """Apply the `migrations` not yet recorded in `schema`'s ``hearth_migrations``, in one
    transaction under an advisory lock; the versions applied (empty: none was missing).

    Idempotent, and safe when several processes open a new database at once: the second
    waits for the first's lock, then finds every migration recorded. MigrationError when a
    recorded version has another name than this Hearth's (two Hearths disagree on what the
    version means); versions recorded beyond the known ones (a newer Hearth migrated) are
    left alone: migrations only add, so an older Hearth still finds what it uses.
    """
    table = sql.Identifier(schema, MIGRATIONS_TABLE)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ).format(table)
        )
        recorded = dict(conn.execute(sql.SQL("SELECT version, name FROM {}").format(table)))
        applied: list[int] = []
        for migration in migrations:
            name = recorded.get(migration.version)
            if name is not None:
                if name != migration.name:
                    raise MigrationError(
                        f"migration {migration.version} of schema {schema} is {name!r} in the "
                        f"database but {migration.name!r} in this Hearth"
                    )
                continue
            conn.execute(migration.sql)  # Hearth's own DDL, no parameters
            conn.execute(
                sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(table),
                (migration.version, migration.name),
            )
            applied.append(migration.version)
    return applied
