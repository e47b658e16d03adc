"""The online feature store on a real Redis server (Debian's redis-server on loopback).

The contract checks are the ones tests/unit/test_store.py runs on SQLite; here they run
against a throwaway `redis-server` started per module, plus what only Redis can do wrong:
being down, and sharing a database with other keys.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from hearth.config import Settings
from hearth.features import state_codec
from hearth.features.online import InvalidTransaction
from hearth.features.store import (
    StoreUnavailable,
    decode_state,
    materialize,
    open_store,
)
from hearth.features.store_redis import REDIS_KEY_PREFIX, RedisStore
from tests.helpers import RedisServer, free_port, needs_redis
from tests.unit.test_store import (
    T0,
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


def test_observe_async_answers_and_stores_as_observe_does(redis_server: RedisServer) -> None:
    # The event loop's path (GET, then a set-if-unchanged script) against the threads' one
    # (WATCH/MULTI/EXEC), on the same transactions: a new customer, a known one, a retry.
    sync, loop_side = RedisStore(redis_server.url, "sync:"), RedisStore(redis_server.url, "loop:")
    sequence = [txn("C9", T0 + timedelta(minutes=m), amount=10.0 + m) for m in (0, 3, 50, 51)]
    sequence.append(sequence[1])  # a retried transaction id: answered again, nothing written

    async def on_the_loop() -> list[tuple[dict[str, float | str], bool]]:
        return [await loop_side.observe_async(t) for t in sequence]

    try:
        assert asyncio.run(on_the_loop()) == [sync.observe(t) for t in sequence]
        assert loop_side.get("C9") == sync.get("C9")
        assert len(sync.get("C9").history) == 4  # type: ignore[union-attr]
    finally:
        for store in (sync, loop_side):
            store.clear()
            store.close()


def test_loop_and_thread_writers_of_one_customer_lose_nothing(
    store: RedisStore, redis_settings: Settings
) -> None:
    # Two processes' worth of writers on one key: coroutines on a loop (set-if-unchanged)
    # and threads of another client (WATCH) at once; every update kept, one saw it new.
    other = open_store(redis_settings)
    colds: list[bool] = []

    def threads_side(worker: int) -> None:
        for i in range(10):
            colds.append(other.observe(txn("HOT", T0 + timedelta(seconds=worker * 10 + i)))[1])

    async def loop_side() -> list[bool]:
        async def one(i: int) -> bool:
            return (await store.observe_async(txn("HOT", T0 + timedelta(hours=1, seconds=i))))[1]

        return list(await asyncio.gather(*(one(i) for i in range(60))))

    threads = [threading.Thread(target=threads_side, args=(w,)) for w in range(4)]
    try:
        for t in threads:
            t.start()
        colds += asyncio.run(loop_side())
        for t in threads:
            t.join()
        state = store.get("HOT")
        assert state is not None and len(state.history) == 100
        assert state.times == sorted(state.times)
        assert colds.count(True) == 1
    finally:
        other.close()


def test_more_observes_in_flight_than_connections_wait_for_one(store: RedisStore) -> None:
    # A loop with hundreds of requests in flight: each waits for one of the client's few
    # connections; none fails (redis-py's own pool refused the 101st: a 503 under load).
    async def many() -> list[tuple[dict[str, float | str], bool]]:
        return list(await asyncio.gather(*(store.observe_async(txn(f"C{i}")) for i in range(300))))

    assert [cold for _, cold in asyncio.run(many())] == [True] * 300
    assert store.count() == 300


def test_observe_async_refuses_what_observe_refuses_and_writes_nothing(store: RedisStore) -> None:
    bad = txn("C1", amount=1e308)
    with pytest.raises(InvalidTransaction, match="amount"):
        asyncio.run(store.observe_async(bad))
    assert store.get("C1") is None


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
        started = time.perf_counter()
        with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{server.port}"):
            asyncio.run(store.observe_async(txn()))  # the event loop's path fails as fast
        assert time.perf_counter() - started < 1.0
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
