"""The rollout StateStore contract on a real Redis server, plus a Follower over it.

A throwaway, non-persistent `redis-server` runs on a free loopback port for this module
(tests/conftest.py's `redis_server`); the checks are the ones tests/unit/test_rollout_state.py
runs on SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from hearth.config import Settings
from hearth.params import RolloutParams
from hearth.traffic.rollout_state import StateUnavailable, new_rollout
from hearth.traffic.state_redis import REDIS_PREFIX, RedisStateStore
from hearth.traffic.state_store import StateStore
from hearth.traffic.stores import open_state_store
from tests.helpers import RedisServer, free_port, needs_redis
from tests.unit.test_rollout_state import (
    CHECKS,
    check_a_follower_of_another_store_object_sees_the_writes,
)

pytestmark = needs_redis


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisStateStore]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.set("someone-else:key", "kept")  # a shared database: only our keys are ours
    s = RedisStateStore(redis_server.url)
    yield s
    s.close()
    assert client.get("someone-else:key") == b"kept"
    client.close()


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_redis_store(store: RedisStateStore, check: Callable[[StateStore], None]) -> None:
    check(store)


def test_keys_live_under_the_rollout_prefix(
    store: RedisStateStore, redis_server: RedisServer
) -> None:
    store.start(new_rollout("1", "2", RolloutParams()), "test")
    keys = {k.decode() for k in redis.Redis.from_url(redis_server.url).keys("*")}
    assert keys - {"someone-else:key"} == {
        REDIS_PREFIX + "state",
        REDIS_PREFIX + "champion",
        REDIS_PREFIX + "revision",
        REDIS_PREFIX + "history",
    }


def test_two_store_objects_share_the_state_and_a_router_follows(
    store: RedisStateStore, redis_server: RedisServer
) -> None:
    other = RedisStateStore(redis_server.url)
    check_a_follower_of_another_store_object_sees_the_writes(store, other)
    other.close()


def test_open_state_store_picks_redis_from_settings(
    settings: Settings, redis_server: RedisServer
) -> None:
    redis_settings = settings.model_copy(
        update={"store_backend": "redis", "redis_url": redis_server.url}
    )
    s = open_state_store(redis_settings)
    try:
        assert s.backend == "redis" and s.ping()
    finally:
        s.close()


def test_a_dead_server_is_unavailable_not_a_hang(tmp_path: Path) -> None:
    s = RedisStateStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    started = time.monotonic()
    assert s.ping() is False
    with pytest.raises(StateUnavailable):
        s.current()
    assert time.monotonic() - started < 5
    s.close()
