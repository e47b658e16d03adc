"""hearth.storage.postgres on a real server: versioned, idempotent migrations (concurrent
openers included), Hearth's own schema, errors in the caller's type."""

from __future__ import annotations

import threading

import psycopg
import pytest

from hearth.storage.postgres import Migration, MigrationError, PostgresDatabase, redacted
from hearth.traffic.migrations import MIGRATIONS


class Broken(RuntimeError):
    pass


def open_db(url: str, migrations: tuple[Migration, ...] = MIGRATIONS) -> PostgresDatabase:
    return PostgresDatabase(url, name="test", error=Broken, migrations=migrations)


def test_migrations_are_recorded_once_and_a_new_one_is_applied_on_reopening(
    postgres_url: str,
) -> None:
    db = open_db(postgres_url)
    known = [(m.version, m.name) for m in MIGRATIONS]
    assert db.applied_migrations() == known
    db.close()
    again = open_db(postgres_url)  # idempotent: nothing applied twice
    assert again.applied_migrations() == known
    again.close()

    extra = Migration(len(MIGRATIONS) + 1, "extra table", "CREATE TABLE extra (x INTEGER)")
    newer = open_db(postgres_url, (*MIGRATIONS, extra))
    assert newer.applied_migrations() == [*known, (extra.version, extra.name)]
    with newer.read() as conn:
        assert conn.execute("SELECT count(*) FROM extra").fetchone() == (0,)
    newer.close()
    older = open_db(postgres_url)  # an older Hearth works on a newer schema
    assert older.ping()
    older.close()

    renamed = Migration(extra.version, "another meaning", "SELECT 1")
    clash = open_db(postgres_url, (*MIGRATIONS, renamed))
    with pytest.raises(MigrationError, match="another meaning"):
        clash.ping()  # ping swallows only the store's error type: a clash is not "down"
    clash.close()


def test_concurrent_openers_apply_each_migration_once(postgres_url: str) -> None:
    dbs = [open_db(postgres_url) for _ in range(6)]
    barrier = threading.Barrier(len(dbs))
    answers: list[bool] = []

    def first_use(db: PostgresDatabase) -> None:
        barrier.wait()
        answers.append(db.ping())

    threads = [threading.Thread(target=first_use, args=(db,)) for db in dbs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == [True] * len(dbs)
    assert dbs[0].applied_migrations() == [(m.version, m.name) for m in MIGRATIONS]
    for db in dbs:
        db.close()


def test_tables_live_in_hearths_schema(postgres_url: str) -> None:
    open_db(postgres_url).close()  # never used: nothing is created
    db = open_db(postgres_url)
    assert db.ping()
    db.close()
    with psycopg.connect(postgres_url) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    assert {schema for schema, _ in tables} == {"hearth"}
    assert {"hearth_migrations", "rollout_served", "rollout_history", "predictions"} <= {
        name for _, name in tables
    }


def test_errors_come_in_the_callers_type_and_hide_the_password(postgres_url: str) -> None:
    db = open_db(postgres_url)
    with pytest.raises(Broken, match="no_such_table"), db.read() as conn:
        conn.execute("SELECT * FROM no_such_table")
    with pytest.raises(ValueError, match="mine"), db.transaction() as conn:
        conn.execute("CREATE TABLE rolled_back (x INTEGER)")
        raise ValueError("mine")  # the caller's own exception passes unchanged, rolled back
    with pytest.raises(Broken, match="rolled_back"), db.read() as conn:
        conn.execute("SELECT * FROM rolled_back")
    db.close()
    with pytest.raises(Broken, match="closed"), db.read():
        pass
    assert db.ping() is False
    assert redacted("postgresql://u:secret@h:5432/d") == "postgresql://u:***@h:5432/d"
