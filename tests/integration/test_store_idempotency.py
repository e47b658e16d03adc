"""A client retrying a transaction (same transaction_id) is counted once, on both backends.

Each test runs on SQLite and on a real Redis server (skipped where redis-server is not
installed), and compares what a backend *stores*, byte for byte, before and after a retry.
The state logic itself is tested in tests/unit/test_online_idempotency.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from hearth.config import Settings
from hearth.features import state_codec
from hearth.features.online import CustomerState, Transaction
from hearth.features.store import (
    OnlineStore,
    SQLiteStore,
    decode_state,
    materialize,
)
from hearth.features.store_redis import REDIS_KEY_PREFIX, RedisStore
from hearth.serving.dependencies import observe_rows
from tests.helpers import RedisServer, run_together
from tests.unit.test_online_idempotency import legacy_state
from tests.unit.test_store import T0, txn, write_processed


@dataclass
class Backend:
    """A store under test, a way to open a second client (another replica), and raw access."""

    store: OnlineStore
    another: Callable[[], OnlineStore]
    raw: Callable[[str], bytes | str | None]
    write_raw: Callable[[str, str], None]


def _sqlite(settings: Settings) -> Iterator[Backend]:
    path = settings.online_store_path

    def raw(cid: str) -> bytes | str | None:
        with sqlite3.connect(path) as conn:
            row = conn.execute(
                "SELECT state FROM customer_state WHERE customer_id = ?", (cid,)
            ).fetchone()
        return row[0] if row else None

    def write_raw(cid: str, text: str) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute("INSERT OR REPLACE INTO customer_state VALUES (?, ?)", (cid, text))

    store = SQLiteStore(path)
    yield Backend(store, lambda: SQLiteStore(path), raw, write_raw)
    store.close()


def _redis(server: RedisServer) -> Iterator[Backend]:
    client = redis.Redis(port=server.port)  # bytes: states are binary

    def raw(cid: str) -> bytes | str | None:
        return client.get(REDIS_KEY_PREFIX + cid)  # type: ignore[return-value]

    def write_raw(cid: str, text: str) -> None:
        client.set(REDIS_KEY_PREFIX + cid, text)

    store = RedisStore(server.url)
    store.clear()  # the server is shared by the module's tests
    yield Backend(store, lambda: RedisStore(server.url), raw, write_raw)
    store.clear()
    store.close()
    client.close()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield from _sqlite(settings)
    else:
        yield from _redis(request.getfixturevalue("redis_server"))


def burst(customer: str, n: int = 4) -> list[Transaction]:
    return [
        txn(customer, T0 + timedelta(minutes=i), amount=10.0 + i, device=f"D{i % 2}")
        for i in range(n)
    ]


# -- sequential retries --------------------------------------------------------------------
def test_a_retry_leaves_the_stored_state_and_the_answer_unchanged(backend: Backend) -> None:
    store, txns = backend.store, burst("NEW")
    first = [store.observe(t) for t in txns]
    assert [cold for _, cold in first] == [True, False, False, False]
    stored = backend.raw("NEW")

    for t, want in zip(reversed(txns), reversed(first), strict=True):
        assert store.observe(t) == want  # the unknown customer's first one: still cold
        assert store.peek(t) == want
    assert backend.raw("NEW") == stored

    features, _ = store.observe(txn("NEW", T0 + timedelta(minutes=10)))
    assert features["n_tx_1h"] == 4 and features["amount_sum_1h"] == 10 + 11 + 12 + 13


def test_a_known_customer_retry_is_not_a_cold_start(backend: Backend) -> None:
    backend.store.put_many({"KNOWN": CustomerState(home=(48.85, 2.35))})
    first = backend.store.observe(txn("KNOWN", T0))
    stored = backend.raw("KNOWN")
    assert first[1] is False and backend.store.observe(txn("KNOWN", T0)) == first
    assert backend.raw("KNOWN") == stored


def test_a_resent_batch_is_counted_once_through_observe_rows(backend: Backend) -> None:
    """The serving path both topologies share: a client resending its whole batch."""
    batch = burst("BATCH", 3)
    first = observe_rows(backend.store, batch)
    stored = backend.raw("BATCH")
    assert observe_rows(backend.store, [*batch, batch[1]]) == [*first, first[1]]
    assert backend.raw("BATCH") == stored


def test_transactions_of_the_batch_data_are_not_counted_again(
    backend: Backend, tmp_path: Path
) -> None:
    txns = burst("C1", 3)
    materialize(backend.store, write_processed(tmp_path / "p", [("C1", 48.85, 2.35)], txns))
    stored = backend.raw("C1")
    features, cold = backend.store.observe(txns[-1])
    assert (features["n_tx_1h"], cold) == (2, False)  # what offline gave it: two before it
    assert backend.raw("C1") == stored


def test_a_state_stored_without_ids_loads_and_learns_them(backend: Backend) -> None:
    """A version 1 (JSON) state, as the store wrote it before version 2 and before ids: read
    as it is (no re-materialisation), written back as version 2 by the next observe."""
    backend.write_raw("OLD", json.dumps(legacy_state(), separators=(",", ":")))
    first = backend.store.observe(txn("OLD", T0, tid="A"))
    assert first[0]["n_tx_1h"] == 2 and first[1] is False
    stored = backend.raw("OLD")
    assert isinstance(stored, bytes) and stored.startswith(state_codec.MAGIC)
    assert decode_state(stored, "OLD").ids == ["", "", "A"]
    assert backend.store.observe(txn("OLD", T0, tid="A")) == first
    assert backend.raw("OLD") == stored


# -- concurrent retries --------------------------------------------------------------------
def test_concurrent_retries_of_one_transaction_count_it_once(backend: Backend) -> None:
    other = backend.another()  # a second replica: only the backend's atomicity can help
    stores = [backend.store, other]
    t = txn("HOT", T0)
    try:
        answers = run_together(lambda i: [stores[i % 2].observe(t)], threads=8)
    finally:
        other.close()
    assert all(a == answers[0] for a in answers)
    assert answers[0][0][1] is True  # every copy says what the first said: unknown customer
    state = backend.store.get("HOT")
    assert state is not None and state.ids == [t.transaction_id] and len(state.times) == 1


def test_concurrent_clients_replaying_one_sequence_count_each_once(backend: Backend) -> None:
    """8 clients each send the same transactions in order (each one a retry of the others):
    every client gets the answers one client alone gets, and each is stored once."""
    txns = burst("SEQ", 10)
    alone = [backend.store.observe(t) for t in burst("REF", 10)]
    other = backend.another()
    stores = [backend.store, other]
    try:
        answers = run_together(lambda i: [stores[i % 2].observe(t) for t in txns], threads=8)
    finally:
        other.close()
    assert all(a == alone for a in answers)
    state = backend.store.get("SEQ")
    assert state is not None and state.ids == [t.transaction_id for t in txns]
