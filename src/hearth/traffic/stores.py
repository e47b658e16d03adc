"""Opening the stores of shared traffic state that `Settings` chooses: the rollout state and
the prediction log (SQLite files under HEARTH_HOME, or PostgreSQL / Redis servers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hearth.config import Settings
from hearth.traffic.state_sqlite import STATE_FILE, SQLiteStateStore
from hearth.traffic.state_store import StateStore


def state_path(settings: Settings) -> Path:
    """Where the SQLite backend keeps the rollout state."""
    return settings.home_abs / STATE_FILE


def open_state_store(settings: Settings) -> StateStore:
    """The rollout state store `settings.rollout_state_backend` names (PostgreSQL when
    HEARTH_DATABASE_URL is set, Redis with the Redis online store, else SQLite); close it
    when done."""
    backend = settings.rollout_state_backend
    # lazy imports: SQLite users (the default) never load redis-py or psycopg
    if backend == "postgres":
        from hearth.traffic.state_postgres import PostgresStateStore

        assert settings.database_url is not None  # Settings refuse postgres without it
        return PostgresStateStore(settings.database_url)
    if backend == "redis":
        from hearth.traffic.state_redis import RedisStateStore

        return RedisStateStore(settings.redis_url)
    return SQLiteStateStore(state_path(settings))


@contextmanager
def using_state_store(settings: Settings, store: StateStore | None = None) -> Iterator[StateStore]:
    """`store` when given (left open), else the one `settings` chooses, closed afterwards."""
    if store is not None:
        yield store
        return
    opened = open_state_store(settings)
    try:
        yield opened
    finally:
        opened.close()
