"""The rollout StateStore contract on a real PostgreSQL server, CAS across pools, a restart.

A throwaway cluster runs for the session (tests/conftest.py's `postgres_server`), each test
gets a fresh database (`postgres_url`); the checks are the ones
tests/unit/test_rollout_state.py runs on SQLite.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from hearth.config import Settings
from hearth.traffic.prediction_log import PredictionLog
from hearth.traffic.prediction_log_writer import PredictionLogWriter
from hearth.traffic.rollout_state import StateUnavailable
from hearth.traffic.state_postgres import PostgresStateStore
from hearth.traffic.state_store import StateStore
from hearth.traffic.stores import open_state_store
from tests.helpers import free_port
from tests.integration.test_prediction_log_postgres import entries
from tests.postgres_server import start_postgres
from tests.unit.test_rollout_state import (
    CHECKS,
    check_a_follower_of_another_store_object_sees_the_writes,
    rollout,
)


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStateStore]:
    s = PostgresStateStore(postgres_url)
    yield s
    s.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_postgres_store(store: PostgresStateStore, check: Callable[[StateStore], None]) -> None:
    check(store)


def test_two_store_objects_share_the_state_and_a_router_follows(
    store: PostgresStateStore,
) -> None:
    other = PostgresStateStore(store.url)
    check_a_follower_of_another_store_object_sees_the_writes(store, other)
    other.close()


def test_compare_and_set_holds_across_store_objects(store: PostgresStateStore) -> None:
    """Three store objects (three pools, as three machines would have) bump one counter
    from three threads each: the row lock orders them, nothing is lost."""
    store.start(rollout(steps=[100]).with_percent(0), "test")
    others = [PostgresStateStore(store.url) for _ in range(3)]
    errors: list[BaseException] = []

    def bump(other: PostgresStateStore) -> None:
        try:
            for _ in range(10):
                other.update(lambda s: s.with_percent(s.challenger_percent + 1), "t", "bump")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=bump, args=(o,)) for o in others for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for other in others:
        other.close()
    assert errors == []
    final = store.current()
    assert final is not None and final.challenger_percent == 90 and final.revision == 91
    assert len(store.history(final.rollout_id, limit=1000)) == 91


def test_open_state_store_follows_settings(settings: Settings, postgres_url: str) -> None:
    shared = settings.model_copy(update={"database_url": postgres_url})
    for chosen, backend in [
        (shared, "postgres"),
        (shared.model_copy(update={"store_backend": "redis"}), "postgres"),
        (shared.model_copy(update={"state_backend": "redis"}), "redis"),
        (shared.model_copy(update={"state_backend": "sqlite"}), "sqlite"),
    ]:
        s = open_state_store(chosen)
        try:
            assert s.backend == backend
            if backend == "postgres":
                assert s.ping()
        finally:
            s.close()


def test_a_dead_server_is_unavailable_not_a_hang() -> None:
    s = PostgresStateStore(f"postgresql://postgres@127.0.0.1:{free_port()}/none", timeout_s=1.0)
    started = time.monotonic()
    assert s.ping() is False
    with pytest.raises(StateUnavailable, match="rollout state"):
        s.current()
    assert time.monotonic() - started < 10
    s.close()
    with pytest.raises(StateUnavailable, match="closed"):
        s.current()


def test_a_restarted_server_keeps_the_state_and_the_log_catches_up() -> None:
    """PostgreSQL restarted under a store and a writer: the state is intact, the pools get
    fresh connections, what was buffered meanwhile is written once the server is back."""
    server = start_postgres()  # its own server: the session's keeps running for the others
    try:
        url = server.create_database()
        store, log = PostgresStateStore(url, timeout_s=1.0), PredictionLog(database_url=url)
        writer = PredictionLogWriter(lambda: log, retry_first_s=0.05, retry_max_s=0.2)
        started = store.start(rollout(), "test")
        writer.submit(entries()[:4])
        assert writer.flush(10)

        server.stop(remove=False, mode="fast")
        with pytest.raises(StateUnavailable):
            store.current()
        writer.submit(entries()[4:10])  # buffered while the log cannot be written
        server.start()

        # The pool reconnects with backoff after failed attempts: the store answers again
        # within seconds of the server, not at once.
        deadline = time.monotonic() + 30
        while True:
            try:
                current = store.current()
                break
            except StateUnavailable:
                assert time.monotonic() < deadline, "the state store never came back"
                time.sleep(0.2)
        assert current == started
        store.update(lambda s: s.next_step(), "test", "advance")
        assert writer.flush(20) and writer.dropped == 0
        assert len(log.rows("predictions")) == 10
        writer.close()
        store.close()
        log.close()
    finally:
        server.stop()
