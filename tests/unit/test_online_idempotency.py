"""A retried transaction (same transaction_id) is counted once by the per-customer state.

These test the state logic alone (`observe_state`, `answer`, `update_state`, the JSON form);
tests/integration/test_store_idempotency.py runs the same promise through both store
backends, concurrently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from hearth.features.batch_states import build_states
from hearth.features.definitions import HISTORY_HORIZON
from hearth.features.online import (
    CustomerState,
    Transaction,
    answer,
    epoch_seconds,
    observe_state,
    online_features,
    update_state,
)
from hearth.features.store import StoreError, decode_state, encode_state
from tests.unit.test_store import T0
from tests.unit.test_store import txn as store_txn

Answer = tuple[dict[str, float | str], bool]


def txn(tid: str, at: datetime, **fields: Any) -> Transaction:
    """tests.unit.test_store's transaction, named by its id first (ids matter here)."""
    return store_txn(at=at, tid=tid, **fields)


def stored(state: CustomerState) -> CustomerState:
    """`state` as the store gives it back: through its stored form."""
    return decode_state(encode_state(state), "C1")


class Customer:
    """One customer's state as a store keeps it: encoded between observes, None until the
    first."""

    def __init__(self, state: CustomerState | None = None) -> None:
        self.state = state
        self.writes = 0

    def observe(self, t: Transaction) -> Answer:
        seen = observe_state(self.state, t)
        if seen.after is not None:
            self.state = stored(seen.after)
            self.writes += 1
        return seen.features, seen.cold_start

    def observe_all(self, txns: Iterable[Transaction]) -> list[Answer]:
        return [self.observe(t) for t in txns]

    def encoded(self) -> bytes:
        assert self.state is not None
        return encode_state(self.state)


def burst(
    n: int = 5, start: datetime = T0, step: timedelta = timedelta(minutes=3)
) -> list[Transaction]:
    return [
        txn(f"B{i}", start + i * step, amount=10.0 + i, device=f"D{i % 2}", merchant=f"M{i}")
        for i in range(n)
    ]


# -- the promise ---------------------------------------------------------------------------
def test_update_state_applies_an_id_once() -> None:
    a, b = txn("A", T0), txn("B", T0 + timedelta(minutes=1))
    twice = update_state(update_state(update_state(CustomerState(), a), b), a)
    once = update_state(update_state(CustomerState(), a), b)
    assert twice == once and twice.ids == ["A", "B"] and len(twice.times) == 2


def test_a_retry_gets_its_first_answer_and_changes_nothing() -> None:
    customer = Customer()
    txns = burst()
    first = customer.observe_all(txns)
    assert [cold for _, cold in first] == [True, False, False, False, False]
    assert [f["n_tx_1h"] for f, _ in first] == [0, 1, 2, 3, 4]
    before, writes = customer.encoded(), customer.writes

    # Every transaction retried after all of them (the worst case for a velocity count),
    # newest first and oldest first: same answers, cold start included, and no write.
    assert customer.observe_all(reversed(txns)) == first[::-1]
    assert customer.observe_all(txns) == first
    assert customer.encoded() == before and customer.writes == writes

    nxt, _ = customer.observe(txn("NEXT", T0 + timedelta(minutes=15)))
    assert nxt["n_tx_1h"] == 5 and nxt["amount_sum_1h"] == sum(10.0 + i for i in range(5))


def test_a_retry_of_a_same_second_tie_gets_its_first_answer() -> None:
    customer = Customer(CustomerState(home=(48.85, 2.35)))
    ties = [txn("T1", T0, device="NEW"), txn("T2", T0, amount=99.0, device="NEW")]
    first = customer.observe_all([txn("OLD", T0 - timedelta(minutes=5)), *ties])
    before = customer.encoded()
    assert customer.observe_all(ties[::-1]) == first[:0:-1]
    assert first[2][0]["is_new_device"] == 1  # a tie does not see its twin's device either
    assert customer.encoded() == before


def test_retries_in_one_replay_match_a_replay_without_them() -> None:
    """A client that retries each transaction once sees what a client that never retries sees."""
    txns = burst(12, step=timedelta(minutes=7))
    clean = Customer().observe_all(txns)
    retried = Customer()
    answers = []
    for t in txns:
        answers.append(retried.observe(t))
        assert retried.observe(t) == answers[-1]
    assert answers == clean


def test_peek_of_a_retry_is_the_retry_answer() -> None:
    customer = Customer()
    first = customer.observe_all(burst(3))
    assert customer.state is not None
    assert answer(burst(3)[1], customer.state) == first[1]
    assert answer(burst(3)[0], customer.state) == first[0]  # the cold start, remembered


def test_a_materialised_customer_is_never_a_cold_start_on_retry() -> None:
    customer = Customer(CustomerState(home=(1.0, 2.0)))
    first = customer.observe(txn("A", T0))
    assert first[1] is False and customer.observe(txn("A", T0)) == first


# -- the documented exceptions -------------------------------------------------------------
def test_a_retry_with_another_timestamp_is_not_counted_and_does_not_see_itself() -> None:
    customer = Customer()
    customer.observe_all([txn("A", T0), txn("B", T0 + timedelta(minutes=1))])
    before = customer.encoded()
    features, cold = customer.observe(txn("B", T0 + timedelta(minutes=10)))
    assert customer.encoded() == before
    assert features["n_tx_1h"] == 1 and features["seconds_since_last"] == 600  # A only
    assert cold is False


def test_a_late_earlier_transaction_is_seen_by_a_later_retry() -> None:
    """Exception (a) of `answer`: the retry counts what arrived late, as offline does."""
    customer = Customer()
    a, x = txn("A", T0), txn("X", T0 + timedelta(hours=1))
    late = txn("LATE", T0 + timedelta(minutes=30))
    first, _ = customer.observe_all([a, x, late])[1]
    before = customer.encoded()
    retry, cold = customer.observe(x)
    assert (first["n_tx_1h"], retry["n_tx_1h"], cold) == (1, 2, False)
    assert customer.encoded() == before
    assert retry == online_features(x, update_state(update_state(CustomerState(), a), late))


def test_a_retry_older_than_the_kept_history_is_not_recognised_but_changes_nothing() -> None:
    customer = Customer()
    old = txn("OLD", T0, device="OLD-DEVICE")
    customer.observe_all([old, txn("NEW", T0 + HISTORY_HORIZON + timedelta(seconds=1))])
    assert customer.state is not None and customer.state.ids == ["NEW"]  # OLD pruned
    before = customer.encoded()
    features, cold = customer.observe(old)
    # Answered from what is left: no history in its windows, its device first used then ...
    assert (features["n_tx_7d"], features["is_new_device"], cold) == (0, 1, False)
    # ... and applying it changed nothing: it fell behind the horizon as it was inserted.
    assert customer.encoded() == before


# -- the stored form -----------------------------------------------------------------------
def test_ids_and_the_cold_start_are_extra_keys_an_older_reader_ignores() -> None:
    """In the JSON form (`to_dict`, version 1), which the store still reads."""
    customer = Customer()
    customer.observe_all(burst(2))
    assert customer.state is not None
    data = customer.state.to_dict()
    assert data["version"] == 1 and data["ids"] == ["B0", "B1"] and data["cold_start_id"] == "B0"
    # The history entries stay [time, amount, merchant]: what older code unpacks.
    assert all(len(entry) == 3 for entry in data["history"])


def legacy_state() -> dict[str, Any]:
    """A state as stored before transaction ids (no ``ids`` key): two purchases in the hour
    before T0, on device D1."""
    t = epoch_seconds(T0)
    return {
        "version": 1,
        "home": [48.85, 2.35],
        "history": [[t - 60, 5.0, "M0"], [t - 30, 7.5, "M1"]],
        "devices": {"D1": t - 60},
        "last_timestamp": t - 30,
    }


def test_a_state_stored_without_ids_still_loads_and_learns_new_ids() -> None:
    legacy = legacy_state()
    state = decode_state(json.dumps(legacy), "C1")
    assert state.ids == ["", ""] and state.cold_start_id is None
    assert state.to_dict() == legacy  # no new keys until an id is known
    assert stored(state) == state

    customer = Customer(state)
    first = customer.observe(txn("A", T0))
    assert first[0]["n_tx_1h"] == 2 and first[1] is False
    assert customer.state is not None and customer.state.ids == ["", "", "A"]
    before = customer.encoded()
    assert customer.observe(txn("A", T0)) == first and customer.encoded() == before


def test_ids_that_do_not_match_the_history_are_unreadable() -> None:
    bad = {"version": 1, "home": None, "history": [[1, 1.0, "M"]], "ids": ["a", "b"]}
    with pytest.raises(StoreError, match="2 ids for 1 history entries"):
        decode_state(json.dumps(bad), "C1")
    with pytest.raises(ValueError, match="differ in length"):
        CustomerState(times=[1], amounts=[1.0], merchants=["M"], ids=["a", "b"])


def test_encode_state_prunes_ids_with_the_history() -> None:
    new = epoch_seconds(T0)
    horizon = int(HISTORY_HORIZON.total_seconds())
    unpruned = CustomerState(
        times=[new - horizon - 1, new - horizon, new],
        amounts=[1.0, 2.0, 3.0],
        merchants=["M1", "M2", "M3"],
        ids=["gone", "kept", "newest"],
        last_timestamp=new,
    )
    assert stored(unpruned).ids == ["kept", "newest"]
    assert unpruned.ids == ["gone", "kept", "newest"]  # the input is left alone


def test_build_states_keeps_ids_so_serving_recognises_batch_transactions() -> None:
    a, b = txn("A", T0), txn("B", T0 + timedelta(minutes=1))
    frame = pd.DataFrame([{f: getattr(t, f) for f in t.__dataclass_fields__} for t in (a, b)])
    customers = pd.DataFrame(columns=["customer_id", "home_latitude", "home_longitude"])
    state = build_states(frame, customers)["C1"]
    assert state.ids == ["A", "B"]
    customer = Customer(state)
    before = customer.encoded()
    features, cold = customer.observe(b)
    assert customer.encoded() == before and customer.writes == 0
    assert (features["n_tx_1h"], cold) == (1, False)
