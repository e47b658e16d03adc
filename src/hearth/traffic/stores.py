"""Opening the rollout state store that `Settings` chooses."""

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
    """The rollout state store chosen by `settings.store_backend`; close it when done."""
    if settings.store_backend == "redis":
        # lazy: SQLite users (the default) never load redis-py
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
