"""The online store in Redis: one value (`encode_state`'s bytes) per customer, shared by
every serving process of a fleet (`HEARTH_STORE_BACKEND=redis`, `HEARTH_REDIS_URL`).

Threads observe with WATCH/MULTI/EXEC (`hearth.storage.redis.compare_and_set`); an event
loop awaits `observe_async` (a GET, then a script that writes only if the value is still the
one read), so that serving never hands an observe to a thread. Both may share a key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from functools import partial
from typing import TYPE_CHECKING, Any

from hearth.features.online import InputDomain, Transaction, answer, observe_state
from hearth.features.store_base import (
    CustomerState,
    Features,
    StoreUnavailable,
    check_states,
    decode_state,
    encode_state,
    redacted_url,
)

if TYPE_CHECKING:
    from redis.client import Pipeline

    from hearth.storage.redis import Update

REDIS_KEY_PREFIX = "hearth:cust:"


class RedisStore:
    """One value (`encode_state`'s bytes) per customer under `prefix`; the client's pool is
    thread-safe.

    The client is `hearth.storage.redis.connect`'s: short timeouts and one quick reconnect
    (a pooled connection may be stale after a Redis restart), so a dead server costs a
    request milliseconds. `observe` is `hearth.storage.redis.compare_and_set` on the
    customer's key; `observe_async`, for an event loop, `compare_and_set_async` on a client
    of that loop's own (`connect_async`: a bounded pool requests wait for).
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = REDIS_KEY_PREFIX,
        max_attempts: int = 100,
        timeout_s: float = 0.5,
        domain: InputDomain | None = None,
    ) -> None:
        # lazy: SQLite users (the default) never pay for loading redis-py.
        from hearth.storage import redis as redis_storage

        self._storage = redis_storage
        self.url = url
        self.prefix = prefix
        self.max_attempts = max_attempts
        self.domain = domain or InputDomain()
        self._where = f"Redis online store {redacted_url(url)}"
        self._timeout_s = timeout_s
        self._client = redis_storage.connect(url, timeout_s=timeout_s)
        self._async: tuple[asyncio.AbstractEventLoop, Any] | None = None  # observe_async's

    def _key(self, customer_id: str) -> str:
        return self.prefix + customer_id

    def _translate(self) -> AbstractContextManager[None]:
        return self._storage.translate_errors(StoreUnavailable, self._where)

    def _read(self, customer_id: str) -> CustomerState | None:
        with self._translate():
            raw = self._client.get(self._key(customer_id))
        return decode_state(raw, customer_id) if raw is not None else None

    def get(self, customer_id: str) -> CustomerState | None:
        return self._read(customer_id)

    def put_many(self, states: Mapping[str, CustomerState]) -> int:
        if not states:
            return 0
        check_states(states, self.domain)
        payload = {self._key(cid): encode_state(state) for cid, state in states.items()}
        with self._translate():
            self._client.mset(payload)
        return len(payload)

    def observe(self, txn: Transaction) -> tuple[Features, bool]:
        self.domain.check(txn)  # InvalidTransaction: nothing out of the domain is written
        key = self._key(txn.customer_id)
        return self._storage.compare_and_set(
            self._client,
            [key],
            partial(self._plan_observe, key, txn),
            error=StoreUnavailable,
            where=self._where,
            max_attempts=self.max_attempts,
        )

    async def observe_async(self, txn: Transaction) -> tuple[Features, bool]:
        """`observe` from an event loop, which it never blocks (`compare_and_set_async`)."""
        self.domain.check(txn)
        return await self._storage.compare_and_set_async(
            self._loop_client(),
            self._key(txn.customer_id),
            partial(self._plan, txn),
            error=StoreUnavailable,
            where=self._where,
            max_attempts=self.max_attempts,
        )

    def _loop_client(self) -> Any:
        """The asyncio client of the running loop (a new one when the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, self._storage.connect_async(self.url, timeout_s=self._timeout_s))
        return self._async[1]

    def _plan(
        self, txn: Transaction, raw: bytes | str | None
    ) -> tuple[tuple[Features, bool], bytes | None]:
        """The answer to `txn` on the stored bytes `raw`, and the bytes to store (None: none;
        a retry writes nothing: its answer came from one GET, a consistent read)."""
        seen = observe_state(decode_state(raw, txn.customer_id) if raw is not None else None, txn)
        after = None if seen.after is None else encode_state(seen.after)
        return (seen.features, seen.cold_start), after

    def _plan_observe(
        self, key: str, txn: Transaction, pipe: Pipeline
    ) -> Update[tuple[Features, bool]]:
        """One optimistic attempt, on the state read while `key` is watched."""
        reply, state = self._plan(txn, pipe.get(key))
        if state is None:
            return self._storage.Update(reply)
        return self._storage.Update(reply, lambda p: p.set(key, state))

    def peek(self, txn: Transaction) -> tuple[Features, bool]:
        return answer(txn, self._read(txn.customer_id))

    def _keys(self) -> Iterator[Any]:
        # SCAN, not KEYS: it never blocks the server, and only our prefix is touched.
        return self._client.scan_iter(match=self.prefix + "*", count=1000)

    def count(self) -> int:
        with self._translate():
            return sum(1 for _ in self._keys())

    def ping(self) -> bool:
        return self._storage.ping(self._client)

    def clear(self) -> None:
        with self._translate():
            batch: list[Any] = []
            for key in self._keys():
                batch.append(key)
                if len(batch) >= 500:
                    self._client.unlink(*batch)
                    batch.clear()
            if batch:
                self._client.unlink(*batch)

    def close(self) -> None:
        self._client.close()
        if self._async is not None:  # its sockets belong to its loop: closed there
            (loop, client), self._async = self._async, None
            if not loop.is_closed():
                loop.call_soon_threadsafe(lambda: loop.create_task(client.aclose()))
