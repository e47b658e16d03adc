"""Sticky assignment (hypothesis properties) and the Router's view of the shared state."""

from __future__ import annotations

import math
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hearth.params import RolloutParams
from hearth.traffic.assignment import (
    CHALLENGER,
    CHAMPION,
    Route,
    assign,
    bucket,
    in_challenger,
    route_for,
)
from hearth.traffic.follower import Follower
from hearth.traffic.rollout_state import RolloutState, Served, StateUnavailable, new_rollout
from hearth.traffic.state_sqlite import SQLiteStateStore

salts = st.text(min_size=1, max_size=24)
customers = st.text(max_size=40)
percents = st.floats(min_value=0, max_value=100, allow_nan=False)
IDS = [f"cust-{i}" for i in range(20_000)]


def _binomial_ok(hits: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """`hits` out of `n` is within `sigmas` standard deviations of Binomial(n, p)."""
    return abs(hits - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1


# -- the hash ------------------------------------------------------------------------------
def test_bucket_is_pinned_across_processes_and_versions() -> None:
    # Fixed values: a change of hash would reshuffle the customers of a running rollout
    # between replicas running different code, and Python's hash() would differ per process.
    assert bucket("abc", "C123") == 9263
    assert bucket("salt", "customer-1") == 155
    # The salt's length is hashed too: ("ab", "c") and ("a", "bc") are different inputs.
    assert (bucket("ab", "c"), bucket("a", "bc")) == (1050, 6731)


@given(salts, customers, st.integers(min_value=1, max_value=100_000))
def test_bucket_is_in_range(salt: str, customer: str, buckets: int) -> None:
    assert 0 <= bucket(salt, customer, buckets) < buckets


@given(salts, customers, percents)
def test_assignment_is_sticky(salt: str, customer: str, percent: float) -> None:
    assert assign(salt, customer, percent) == assign(salt, customer, percent)


@given(salts, customers, percents, percents)
def test_raising_the_weight_never_moves_a_challenger_customer_back(
    salt: str, customer: str, a: float, b: float
) -> None:
    low, high = sorted((a, b))
    if assign(salt, customer, low) == CHALLENGER:
        assert assign(salt, customer, high) == CHALLENGER


@given(salts, customers)
def test_zero_and_hundred_percent_are_absolute(salt: str, customer: str) -> None:
    assert assign(salt, customer, 0) == CHAMPION
    assert assign(salt, customer, 100) == CHALLENGER


@settings(max_examples=25, deadline=None)
@given(salts, st.sampled_from([1.0, 5.0, 25.0, 50.0, 73.3, 99.0]))
def test_challenger_share_matches_the_weight(salt: str, percent: float) -> None:
    hits = sum(assign(salt, c, percent) == CHALLENGER for c in IDS)
    # The share is set in whole buckets: percent * 100 buckets out of 10 000.
    p = math.ceil(percent * 100) / 10_000
    assert _binomial_ok(hits, len(IDS), p), (hits, len(IDS) * p)


@settings(max_examples=15, deadline=None)
@given(salts, salts, st.sampled_from([10.0, 50.0]), st.sampled_from([20.0, 50.0]))
def test_different_salts_pick_independent_customers(
    salt_a: str, salt_b: str, pa: float, pb: float
) -> None:
    if salt_a == salt_b:
        return
    a = {c for c in IDS if assign(salt_a, c, pa) == CHALLENGER}
    b = {c for c in IDS if assign(salt_b, c, pb) == CHALLENGER}
    # Independent assignments overlap in pa * pb of the customers, not in min(pa, pb).
    assert _binomial_ok(len(a & b), len(IDS), pa * pb / 10_000)


def test_in_challenger_uses_whole_buckets() -> None:
    assert [in_challenger(b, 5, 10_000) for b in (0, 499, 500)] == [True, True, False]
    assert in_challenger(0, 0.01, 10_000) and not in_challenger(1, 0.01, 10_000)


# -- routes --------------------------------------------------------------------------------
def _state(**changes: object) -> RolloutState:
    return new_rollout("1", "2", RolloutParams()).evolve(**changes)


def test_no_rollout_or_an_ended_one_sends_everything_to_the_champions_version() -> None:
    ended = _state().ended("rolled_back")
    promoted = _state(status="promoted", challenger_percent=0.0)
    for rollout, champion in ((None, "1"), (ended, "1"), (promoted, "2")):
        served = Served(champion_version=champion, rollout=rollout, revision=3)
        assert {route_for(served, c) for c in IDS[:500]} == {Route(CHAMPION, champion)}


def test_before_the_first_champion_no_version_is_named() -> None:
    assert route_for(Served(), "c1") == Route(CHAMPION, None)


def test_canary_routes_name_the_version_and_rollout() -> None:
    state = _state(challenger_percent=50.0)
    routes = {route_for(Served(champion_version="1", rollout=state), c) for c in IDS[:200]}
    assert routes == {
        Route(CHAMPION, "1", None, state.rollout_id),
        Route(CHALLENGER, "2", None, state.rollout_id),
    }


def test_shadow_answers_with_the_champion_and_copies_to_the_challenger() -> None:
    state = new_rollout("1", "2", RolloutParams(), mode="shadow")
    assert state.challenger_percent == 0
    served = Served(champion_version="1", rollout=state)
    assert {route_for(served, c) for c in IDS[:200]} == {
        Route(CHAMPION, "1", "2", state.rollout_id)
    }


# -- the Follower over a store ---------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_router_sees_a_rollback_within_the_refresh_interval(state_store: SQLiteStateStore) -> None:
    clock = Clock()
    router = Follower(state_store, refresh_interval=0.5, clock=clock)
    assert router.route("c1") == Route(CHAMPION, None)  # no champion adopted yet

    state_store.set_champion("1", "test", "adopt")
    clock.now = 0.5
    assert router.route("c1") == Route(CHAMPION, "1")

    started = state_store.start(new_rollout("1", "2", RolloutParams()).with_percent(100), "test")
    clock.now = 0.9
    assert router.route("c1").variant == CHAMPION  # the snapshot is younger than 0.5 s
    clock.now = 1.0
    assert router.route("c1") == Route(CHALLENGER, "2", None, started.rollout_id)

    state_store.update(lambda s: s.ended("rolled_back"), "test", "rollback")
    clock.now = 1.4
    assert router.route("c1").variant == CHALLENGER
    clock.now = 1.5
    assert router.route("c1") == Route(CHAMPION, "1")


def test_router_follows_a_promotion_to_the_new_champion(state_store: SQLiteStateStore) -> None:
    clock = Clock()
    router = Follower(state_store, refresh_interval=0.5, clock=clock)
    state_store.start(new_rollout("1", "2", RolloutParams()).with_percent(0), "test")
    assert router.route("c1") == Route(CHAMPION, "1", None, router.served().rollout.rollout_id)  # type: ignore[union-attr]
    state_store.update(lambda s: s.ended("promoted"), "test", "promote")
    clock.now = 0.5
    assert router.route("c1") == Route(CHAMPION, "2")
    assert router.served().versions() == {"champion": "2"}


def test_router_keeps_its_snapshot_when_the_store_fails(state_store: SQLiteStateStore) -> None:
    clock = Clock()
    state_store.start(new_rollout("1", "2", RolloutParams()).with_percent(100), "test")
    router = Follower(state_store, refresh_interval=0.2, clock=clock)
    assert router.route("c1").variant == CHALLENGER

    def broken() -> Served:
        raise StateUnavailable("down")

    state_store.served = broken  # type: ignore[method-assign]
    clock.now = 5.0
    assert router.route("c1").variant == CHALLENGER


def test_router_refuses_a_refresh_interval_over_one_second(state_store: SQLiteStateStore) -> None:
    with pytest.raises(ValueError, match="within a second"):
        Follower(state_store, refresh_interval=2.0)


def test_router_is_thread_safe_and_reads_the_store_once_per_interval(
    state_store: SQLiteStateStore,
) -> None:
    state_store.start(new_rollout("1", "2", RolloutParams()).with_percent(30), "test")
    reads = 0
    real = state_store.served

    def counting() -> Served:
        nonlocal reads
        reads += 1
        return real()

    state_store.served = counting  # type: ignore[method-assign]
    clock = Clock()
    router = Follower(state_store, refresh_interval=1.0, clock=clock)
    results: list[str] = []

    def work() -> None:
        results.extend(router.route(c).variant for c in IDS[:2000])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert reads == 1
    expected = [assign(state_store.current().salt, c, 30) for c in IDS[:2000]]  # type: ignore[union-attr]
    assert sorted(results) == sorted(expected * 4)
