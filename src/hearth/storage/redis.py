"""Redis for Hearth's state stores: a client that fails fast, and compare-and-set.

`connect` builds a client whose failures cost milliseconds, not seconds: short connect and
socket timeouts, and none of redis-py's default retries (a plain ``redis.Redis(...)`` retries
ten times with up to a second of backoff). What it keeps is an explicit budget of one quick
retry on a *connection* error, for a pooled connection that went stale when Redis restarted;
a timeout is never retried, so a hung server costs one timeout. Options in the URL
(``?socket_timeout=…``) still win over these defaults.

`compare_and_set` is optimistic concurrency on a few keys: WATCH them, read, compute the
result and the writes, then MULTI/EXEC; if another client changed a watched key in between,
EXEC fails (WatchError) and the attempt starts again from the new values after a short
jittered sleep, up to a bound. Every `redis.RedisError` is raised as the caller's error type.

`compare_and_set_async` is the same on one key for an event loop (`connect_async`'s
client): GET, compute, then a server-side script sets the new value only if the key still
holds the bytes read, so an attempt is two round trips and never blocks the loop. Both kinds
of writer may share a key: either fails when the other changed it first.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import ExponentialBackoff
from redis.client import Pipeline
from redis.retry import Retry

T = TypeVar("T")


def _fail_fast(timeout_s: float) -> dict[str, Any]:
    """Connection options shared by both clients (their retry policy is their own class)."""
    return {
        "socket_connect_timeout": timeout_s,
        "socket_timeout": timeout_s,
        "retry_on_timeout": False,
    }


def _backoff() -> ExponentialBackoff:
    return ExponentialBackoff(cap=0.05, base=0.005)


def connect(url: str, *, timeout_s: float = 0.5, retries: int = 1) -> redis.Redis:
    """A client for `url` that fails fast: `timeout_s` to connect and per reply, at most
    `retries` quick reconnects after a connection error (5-50 ms apart), none on timeout."""
    policy = Retry(_backoff(), retries, supported_errors=(redis.ConnectionError,))
    return redis.Redis.from_url(url, retry=policy, **_fail_fast(timeout_s))


# Connections of one event loop's client. Commands beyond them wait for one to come free
# (for `timeout_s` at most) instead of failing: redis-py's asyncio pool otherwise refuses the
# 101st concurrent command ("Too many connections"), a 503 at 128 requests in flight.
ASYNC_CONNECTIONS = 16


def connect_async(url: str, *, timeout_s: float = 0.5, retries: int = 1) -> redis.asyncio.Redis:
    """`connect`'s client for an event loop (the loop that first uses it, only), on at most
    `ASYNC_CONNECTIONS` connections."""
    policy = redis.asyncio.retry.Retry(
        _backoff(), retries, supported_errors=(redis.ConnectionError,)
    )
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=ASYNC_CONNECTIONS, timeout=timeout_s, retry=policy,
        **_fail_fast(timeout_s),
    )  # fmt: skip
    return redis.asyncio.Redis(connection_pool=pool)


@contextmanager
def translate_errors(error: type[Exception], where: str) -> Iterator[None]:
    """Raise any `redis.RedisError` of the block as ``error(f"{where}: {cause}")``."""
    try:
        yield
    except redis.RedisError as exc:
        raise error(f"{where}: {exc}") from exc


def ping(client: redis.Redis) -> bool:
    """True when the server answers PING; False (never an exception) when it does not."""
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


@dataclass(frozen=True)
class Update(Generic[T]):
    """What one compare-and-set attempt decided.

    `result` is returned to the caller once the writes are committed; `write` queues the
    writes on the pipeline inside MULTI (None: nothing to write, the read alone answers).
    """

    result: T
    write: Callable[[Pipeline], object] | None = None


def compare_and_set(
    client: redis.Redis,
    keys: Sequence[str],
    compute: Callable[[Pipeline], Update[T]],
    *,
    error: type[Exception],
    where: str,
    max_attempts: int = 100,
    backoff_base_s: float = 0.0002,
    backoff_cap_s: float = 0.01,
) -> T:
    """Read `keys`, compute, and write atomically unless another client changed them first.

    `compute` gets the pipeline in immediate mode (``pipe.get(key)`` answers at once) with
    `keys` watched, and returns an `Update`. Its own exceptions propagate unchanged and
    nothing is written. A conflict recomputes after a jittered sleep, ``uniform(0,
    min(cap, base * 2**attempt))``, so contending writers spread out; after `max_attempts`
    conflicts in a row, and on any `redis.RedisError`, ``error`` is raised.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    with translate_errors(error, where):
        for attempt in range(max_attempts):
            with client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(*keys)
                    update = compute(pipe)
                    if update.write is not None:
                        pipe.multi()
                        update.write(pipe)
                        pipe.execute()
                    return update.result
                except redis.WatchError:
                    pass
            if attempt + 1 < max_attempts:
                time.sleep(_pause_s(attempt, backoff_base_s, backoff_cap_s))
    raise _gave_up(error, where, max_attempts, keys)


def _pause_s(attempt: int, base_s: float, cap_s: float) -> float:
    """How long a writer that lost `attempt` times waits: jittered, so contenders spread."""
    return random.uniform(0, min(cap_s, base_s * 2**attempt))


def _gave_up(error: type[Exception], where: str, attempts: int, keys: Sequence[str]) -> Exception:
    return error(
        f"{where}: gave up after {attempts} conflicting writes in a row to "
        f"{', '.join(keys)} (too much contention)"
    )


# KEYS[1] := ARGV[2] if it still holds ARGV[1] (ARGV[3] = "1"), or is missing (ARGV[3] = "0").
_SET_IF_UNCHANGED = """
local now = redis.call('GET', KEYS[1])
if (ARGV[3] == '1' and now == ARGV[1]) or (ARGV[3] == '0' and not now) then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


async def compare_and_set_async(
    client: redis.asyncio.Redis,
    key: str,
    compute: Callable[[bytes | str | None], tuple[T, bytes | None]],
    *,
    error: type[Exception],
    where: str,
    max_attempts: int = 100,
    backoff_base_s: float = 0.0002,
    backoff_cap_s: float = 0.01,
) -> T:
    """`compare_and_set` on one key, from an event loop: `compute` gets the key's bytes
    (None: missing) and returns the result and the bytes to write (None: write nothing).
    The write happens only if the key still holds what was read; otherwise the attempt
    starts again, as `compare_and_set`'s do."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    script = client.register_script(_SET_IF_UNCHANGED)  # EVALSHA; loads it when missing
    with translate_errors(error, where):
        for attempt in range(max_attempts):
            raw = await client.get(key)
            result, new = compute(raw)
            if new is None:
                return result
            args = [raw or b"", new, "0" if raw is None else "1"]
            if await script(keys=[key], args=args):
                return result
            if attempt + 1 < max_attempts:
                await asyncio.sleep(_pause_s(attempt, backoff_base_s, backoff_cap_s))
    raise _gave_up(error, where, max_attempts, [key])
