"""The online feature store on a real Redis server (Debian's redis-server on loopback).

The contract checks are the ones tests/unit/test_store.py runs on SQLite; here they run
against a throwaway `redis-server` started per module, plus what only Redis can do wrong:
being down, and sharing a database with other keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hearth.config import Settings
from hearth.features import state_codec
from hearth.features.store import (
    REDIS_KEY_PREFIX,
    RedisStore,
    StoreUnavailable,
    decode_state,
    materialize,
    open_store,
)
from tests.helpers import RedisServer, free_port, needs_redis
from tests.unit.test_store import (
    StoreContract,
    check_concurrent_observes_lose_nothing,
    txn,
    write_processed,
)

pytestmark = needs_redis


@pytest.fixture
def redis_settings(settings: Settings, redis_server: RedisServer) -> Settings:
    return settings.model_copy(update={"store_backend": "redis", "redis_url": redis_server.url})


@pytest.fixture
def store(redis_settings: Settings) -> Iterator[RedisStore]:
    s = open_store(redis_settings)
    assert isinstance(s, RedisStore)
    s.clear()  # the server is shared by the module's tests
    yield s
    s.clear()
    s.close()


def test_open_store_picks_redis(store: RedisStore, redis_server: RedisServer) -> None:
    assert store.backend == "redis" and store.url == redis_server.url
    assert store.ping() is True


class TestRedisStore(StoreContract):
    """The store contract on Redis."""


def test_concurrent_observes_lose_nothing(store: RedisStore, redis_settings: Settings) -> None:
    # Two clients (two pools) as two replicas would have; WATCH/MULTI must resolve conflicts.
    other = open_store(redis_settings)
    try:
        check_concurrent_observes_lose_nothing([store, other], threads=12)
    finally:
        other.close()


def test_states_are_stored_under_the_prefix(store: RedisStore, redis_server: RedisServer) -> None:
    store.observe(txn("C1"))
    raw = redis.Redis(port=redis_server.port).get(REDIS_KEY_PREFIX + "C1")
    assert raw is not None and raw.startswith(state_codec.MAGIC)
    assert decode_state(raw, "C1") == store.get("C1")


def test_clear_and_count_touch_only_customer_states(
    store: RedisStore, redis_server: RedisServer
) -> None:
    neighbour = redis.Redis(port=redis_server.port)
    neighbour.set("someone-else:key", "keep me")
    store.observe(txn("C1"))
    assert store.count() == 1
    store.clear()
    assert neighbour.get("someone-else:key") == b"keep me"
    neighbour.delete("someone-else:key")
    neighbour.close()


def test_materialize_into_redis(tmp_path: Path, store: RedisStore) -> None:
    processed = write_processed(tmp_path / "p", [("C1", 1.0, 2.0), ("C2", 3.0, 4.0)], [txn()])
    report = materialize(store, processed)
    assert (report.customers, report.transactions, report.backend) == (2, 1, "redis")
    assert store.count() == 2 and store.observe(txn("C2"))[1] is False


def test_ping_is_false_when_redis_goes_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "doomed")
    store = RedisStore(server.url)
    try:
        assert store.ping() is True
        store.observe(txn())
        server.stop()
        started = time.perf_counter()
        assert store.ping() is False
        assert time.perf_counter() - started < 1.0  # a health check must not hang
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{server.port}"):
            store.observe(txn())
    finally:
        server.stop()
        store.close()


def test_ping_is_false_when_nothing_listens() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0")
    try:
        assert store.ping() is False
        with pytest.raises(StoreUnavailable):
            store.get("C1")
    finally:
        store.close()
