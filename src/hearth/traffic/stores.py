"""Opening the stores of shared traffic state that `Settings` chooses: the rollout state and
the prediction log (SQLite files under HEARTH_HOME, or PostgreSQL / Redis servers)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hearth.config import Settings
from hearth.traffic.prediction_log import DB_FILE, PredictionLog
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
    if backend == "postgres":
        # lazy: SQLite users (the default) never load psycopg
        from hearth.traffic.state_postgres import PostgresStateStore

        assert settings.database_url is not None  # Settings refuse postgres without it
        return PostgresStateStore(settings.database_url)
    if backend == "redis":
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


def prediction_log_path(settings: Settings) -> Path:
    """Where the SQLite prediction log is kept (without HEARTH_DATABASE_URL)."""
    return settings.serving_dir / DB_FILE


def open_prediction_log(settings: Settings) -> PredictionLog:
    """The prediction log: in PostgreSQL when HEARTH_DATABASE_URL is set, else the SQLite
    file under the serving folder (created if missing); close it when done."""
    if settings.database_url is not None:
        return PredictionLog(database_url=settings.database_url)
    return PredictionLog(prediction_log_path(settings))


def has_prediction_log(settings: Settings) -> bool:
    """Whether anything may have been logged: a database is always there, a SQLite file
    only once a server created it (readers then skip opening, and creating, one)."""
    return settings.database_url is not None or prediction_log_path(settings).exists()


@contextmanager
def using_prediction_log(settings: Settings) -> Iterator[PredictionLog]:
    """`open_prediction_log(settings)`, closed when the block ends."""
    log = open_prediction_log(settings)
    try:
        yield log
    finally:
        log.close()
