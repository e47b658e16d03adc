"""Rollout state: the models, and the StateStore contract (champion included) on SQLite.

The `check_*` functions take any `StateStore`; tests/integration/test_rollout_state_redis.py
runs the same checks against a real Redis server.
"""

from __future__ import annotations

import itertools
import multiprocessing
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from hearth.config import CHALLENGER, CHAMPION, Settings
from hearth.params import RolloutParams
from hearth.traffic.assignment import Route
from hearth.traffic.follower import Follower
from hearth.traffic.heartbeat import Heartbeat, LoadedVersion, process_key
from hearth.traffic.rollout_state import (
    HistoryEvent,
    InvalidRollout,
    NoActiveRollout,
    PromotionIntent,
    RolloutConflict,
    RolloutState,
    Served,
    StateUnavailable,
    new_rollout,
)
from hearth.traffic.state_sqlite import SQLiteStateStore
from hearth.traffic.state_store import StateStore
from hearth.traffic.stores import open_state_store, state_path

PARAMS = RolloutParams()


def rollout(**kwargs: object) -> RolloutState:
    return new_rollout("1", "2", PARAMS, **kwargs)  # type: ignore[arg-type]


# -- models --------------------------------------------------------------------------------
def test_state_and_history_round_trip_through_json() -> None:
    state = rollout()
    assert RolloutState.model_validate_json(state.model_dump_json()) == state
    event = HistoryEvent(
        rollout_id=state.rollout_id,
        actor="flow",
        action="advance",
        changes={"challenger_percent": (5.0, 25.0)},
        reason="step passed",
        test="two-proportion z-test",
        numbers={"psi": 0.01, "challenger_n": 512, "passed": True, "note": None},
    )
    assert HistoryEvent.model_validate_json(event.model_dump_json()) == event


def test_new_rollouts_per_mode() -> None:
    canary = rollout()
    assert (canary.challenger_percent, canary.steps, canary.status) == (
        5.0,
        PARAMS.steps,
        "running",
    )
    ab = rollout(mode="ab")
    assert (ab.challenger_percent, ab.steps) == (
        PARAMS.ab_split_percent,
        (PARAMS.ab_split_percent,),
    )
    assert rollout(mode="shadow").challenger_percent == 0
    assert rollout().salt != rollout().salt and rollout().rollout_id != rollout().rollout_id


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: new_rollout("3", "3", PARAMS), "same version"),
        (lambda: rollout(steps=[50, 25, 100]), "ascend"),
        (lambda: rollout(steps=[5, 250]), "ascend"),
        (lambda: rollout().with_percent(101), "0-100"),
        (lambda: rollout().with_percent(-1), "0-100"),
        (lambda: rollout(mode="shadow").with_percent(10), "shadow"),
        (lambda: rollout(steps=[100]).next_step(), "last step"),
        (lambda: rollout().ended("running"), "running again"),
    ],
)
def test_bad_values_are_typed_errors(make: object, match: str) -> None:
    with pytest.raises(InvalidRollout, match=match):
        make()  # type: ignore[operator]


def test_steps_advance_to_their_percent() -> None:
    state = rollout().next_step().next_step()
    assert (state.step_index, state.challenger_percent, state.last_step) == (2, 50.0, False)
    assert state.next_step().last_step


# -- the store contract (any backend) ------------------------------------------------------
def check_start_update_history(store: StateStore) -> None:
    assert store.current() is None and store.revision() == 0 and store.history() == []
    started = store.start(rollout(), "alice", "new model v2")
    assert started.revision == 1 and store.revision() == 1
    assert store.current() == started

    advanced = store.update(
        lambda s: s.next_step(), "flow", "advance", "step passed", {"psi": 0.01}, "psi"
    )
    assert (advanced.challenger_percent, advanced.revision) == (25.0, 2)
    assert advanced.updated_at >= started.updated_at and advanced.started_at == started.started_at

    # An unchanged state writes only the history event (a "hold" verdict).
    held = store.update(lambda s: s, "flow", "hold", "too few samples", {"challenger_n": 3})
    assert held == advanced and store.revision() == 2

    events = store.history(started.rollout_id)
    assert [e.action for e in events] == ["start", "advance", "hold"]
    assert events[0].actor == "alice" and events[0].reason == "new model v2"
    assert events[1].changes == {"challenger_percent": (5.0, 25.0), "step_index": (0, 1)}
    assert (events[1].numbers, events[1].test) == ({"psi": 0.01}, "psi")
    assert events[2].changes == {} and events[2].numbers == {"challenger_n": 3}
    assert [e.action for e in store.history(limit=2)] == ["advance", "hold"]


def check_refusals_change_nothing(store: StateStore) -> None:
    with pytest.raises(NoActiveRollout):
        store.update(lambda s: s.with_percent(50), "bob", "weight")
    first = store.start(rollout(), "alice")
    before = (store.current(), store.revision(), store.history())

    with pytest.raises(RolloutConflict, match="still running"):
        store.start(rollout(), "bob")
    with pytest.raises(InvalidRollout, match="0-100"):
        store.update(lambda s: s.with_percent(150), "bob", "weight")
    with pytest.raises(RolloutConflict, match="not the running one"):
        store.update(lambda s: s.with_percent(50), "bob", "weight", rollout_id="r-other")
    with pytest.raises(InvalidRollout, match="salt"):
        store.update(lambda s: s.evolve(salt="reshuffle"), "bob", "weight")
    with pytest.raises(InvalidRollout, match="versions"):
        store.update(lambda s: s.evolve(challenger_version="7"), "bob", "swap")
    assert (store.current(), store.revision(), store.history()) == before

    store.update(lambda s: s.ended("rolled_back"), "bob", "rollback", "errors")
    ended = store.current()
    assert ended is not None and ended.status == "rolled_back" and ended.challenger_percent == 0
    with pytest.raises(NoActiveRollout):
        store.update(lambda s: s.with_percent(50), "bob", "weight")
    second = store.start(rollout(), "alice")  # an ended rollout no longer blocks a new one
    assert second.rollout_id != first.rollout_id and second.revision == ended.revision + 1
    assert [e.action for e in store.history(first.rollout_id)] == ["start", "rollback"]


def check_concurrent_updates_lose_nothing(
    store: StateStore, threads: int = 8, each: int = 25
) -> None:
    """`threads` writers each add `each` to a counter kept in the percent: none may be lost."""
    store.start(rollout(steps=[100]).with_percent(0), "test")

    def bump(s: RolloutState) -> RolloutState:
        return s.with_percent(s.challenger_percent + 0.01)

    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(each):
                store.update(bump, threading.current_thread().name, "bump")
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, name=f"w{i}") for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    final = store.current()
    assert final is not None
    assert final.challenger_percent == pytest.approx(threads * each * 0.01)
    assert final.revision == 1 + threads * each
    history = store.history(final.rollout_id, limit=10_000)
    assert len(history) == 1 + threads * each
    # Each event's "before" is the previous event's "after": a serial history, no lost write.
    percents = [e.changes["challenger_percent"] for e in history[1:]]
    for (_, after), (before, _) in itertools.pairwise(percents):
        assert before == after


def check_intent_round_trip(store: StateStore) -> None:
    assert store.intent() is None
    intent = PromotionIntent(
        action="promote",
        model_name="fraud-detector",
        before={"previous": None, "champion": "1", "challenger": "2"},
        after={"previous": "1", "champion": "2", "challenger": None},
        rollout_id="r1",
        rollout_status="promoted",
        numbers={"psi": 0.1},
    )
    store.set_intent(intent)
    assert store.intent() == intent
    assert list(store.intent().after) == ["previous", "champion", "challenger"]  # type: ignore[union-attr]
    store.set_intent(None)
    assert store.intent() is None


def check_champion_compare_and_set(store: StateStore) -> None:
    assert store.served() == Served()  # nothing serves before the first champion
    adopted = store.set_champion("1", "reconcile", "adopt", "registry champion", expected=None)
    assert adopted == Served(champion_version="1", revision=1) == store.served()

    before = (store.served(), store.history())
    with pytest.raises(RolloutConflict, match="champion is v1, not none"):
        store.set_champion("1", "reconcile", "adopt", expected=None)
    with pytest.raises(RolloutConflict, match="champion is v1, not v2"):
        store.set_champion("3", "admin", "rollback", expected="2")
    with pytest.raises(InvalidRollout, match="empty"):
        store.set_champion("", "admin", "rollback")
    assert store.set_champion("1", "admin", "promote") == before[0]  # already: no write
    assert (store.served(), store.history()) == before

    rolled = store.set_champion("2", "admin", "rollback", "v1 is bad", expected="1")
    assert rolled == Served(champion_version="2", revision=2) == store.served()
    event = store.history()[-1]
    assert (event.rollout_id, event.actor, event.action, event.reason) == (
        "",
        "admin",
        "rollback",
        "v1 is bad",
    )
    assert event.changes == {"champion_version": ("1", "2")}

    with pytest.raises(RolloutConflict, match="v2 is the champion"):
        store.start(rollout(), "alice")  # compares v2 with v1, but v2 serves
    started = store.start(new_rollout("2", "3", PARAMS), "alice")
    with pytest.raises(RolloutConflict, match="running"):
        store.set_champion("3", "admin", "promote")
    served = store.served()
    assert (served.running, served.champion_version, served.revision) == (started, "2", 3)
    assert served.versions() == {"champion": "2", "challenger": "3"}


def check_promotion_ends_the_rollout_and_moves_the_champion_in_one_write(
    store: StateStore,
) -> None:
    started = store.start(rollout(), "alice")  # no champion yet: the rollout's is adopted
    assert store.served() == Served(champion_version="1", rollout=started, revision=1)
    store.update(lambda s: s.ended("promoted"), "flow", "promote", "all checks passed")
    served = store.served()
    assert served.rollout is not None and served.rollout.status == "promoted"
    assert (served.champion_version, served.revision, served.rollout.revision) == ("2", 2, 2)
    assert served.running is None and served.versions() == {"champion": "2"}

    store.start(new_rollout("2", "3", PARAMS), "alice")
    store.update(lambda s: s.ended("rolled_back"), "flow", "rollback", "errors")
    assert store.served().champion_version == "2"  # a rollback keeps the champion
    assert store.served().versions() == {"champion": "2"}


def check_an_intent_is_recorded_in_the_write_it_follows_and_compared_on(
    store: StateStore,
) -> None:
    store.set_champion("1", "t", "adopt", expected=None)
    running = store.start(rollout(), "t")
    drop = PromotionIntent(
        action="rollback", model_name="m", before={}, after={"challenger": None},
        only_if={"challenger": "2"}, rollout_id=running.rollout_id, rollout_status="rolled_back",
    )  # fmt: skip
    # A refused write records no intent either.
    with pytest.raises(RolloutConflict):
        store.update(lambda s: s.ended("rolled_back"), "t", "rollback", rollout_id="other",
                     intent=drop)  # fmt: skip
    assert store.intent() is None
    store.update(lambda s: s.ended("rolled_back"), "t", "rollback",
                 rollout_id=running.rollout_id, intent=drop)  # fmt: skip
    assert store.intent() == drop and store.served().versions() == {"champion": "1"}
    # Compare-and-set on the pending intent.
    with pytest.raises(RolloutConflict, match="pending registry change"):
        store.set_intent(None, expected=None)
    revert = drop.model_copy(update={"after": {"champion": "1"}, "only_if": {}})
    with pytest.raises(RolloutConflict):
        store.set_intent(revert, expected=None)
    assert store.intent() == drop
    # A champion change recorded over the pending intent makes both's alias writes.
    store.set_champion("3", "t", "rollback", expected="1", intent=revert)
    merged = store.intent()
    assert merged is not None
    assert merged.after == {"challenger": None, "champion": "1"}
    assert merged.only_if == {"challenger": "2"}
    store.set_intent(None, expected=merged)
    assert store.intent() is None


def check_heartbeats_replace_their_process_and_old_ones_are_forgotten(store: StateStore) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)

    def beat(host: str, pid: int, at_s: float, version: str = "1") -> Heartbeat:
        hb = Heartbeat(
            process=process_key(host, pid), host=host, pid=pid, home=f"/h/{host}",
            role="monolith", versions={"champion": LoadedVersion(version=version, loaded=True)},
            started_at=start, seen_at=start + timedelta(seconds=at_s),
        )  # fmt: skip
        store.beat(hb, forget_before=hb.seen_at - timedelta(seconds=100))
        return hb

    assert store.heartbeats() == []
    a = beat("a", 1, 0)
    b = beat("b", 7, 5)
    assert store.heartbeats() == [b, a]  # most recently seen first
    a2 = beat("a", 1, 10, version="2")  # the same process: replaced, not added
    assert store.heartbeats() == [a2, b]
    assert a2.versions["champion"].version == "2"
    c = beat("c", 3, 106)  # b (seen at 5) is forgotten; a (seen at 10) is kept
    assert [h.process for h in store.heartbeats()] == [c.process, a2.process]
    assert store.served().revision == 0  # heartbeats are not rollout state


CHECKS = [
    check_heartbeats_replace_their_process_and_old_ones_are_forgotten,
    check_start_update_history,
    check_refusals_change_nothing,
    check_concurrent_updates_lose_nothing,
    check_intent_round_trip,
    check_champion_compare_and_set,
    check_promotion_ends_the_rollout_and_moves_the_champion_in_one_write,
    check_an_intent_is_recorded_in_the_write_it_follows_and_compared_on,
]


def check_a_follower_of_another_store_object_sees_the_writes(
    store: StateStore, other: StateStore
) -> None:
    """`store` and `other` open one state (as two processes or machines do): a Follower
    reading `other` routes by what `store` writes, within its refresh interval."""
    router = Follower(other, refresh_interval=0.1)
    assert router.route("c1") == Route(CHAMPION, None)
    store.start(new_rollout("1", "2", PARAMS).with_percent(100), "admin")
    time.sleep(0.15)
    assert router.route("c1").variant == CHALLENGER
    store.update(lambda s: s.ended("rolled_back"), "admin", "rollback")
    time.sleep(0.15)
    assert router.route("c1") == Route(CHAMPION, "1")
    assert [e.action for e in other.history()] == ["start", "rollback"]


# -- SQLite --------------------------------------------------------------------------------
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_sqlite_store(state_store: SQLiteStateStore, check: object) -> None:
    check(state_store)  # type: ignore[operator]


def test_a_follower_of_another_sqlite_store_object_follows(state_store: SQLiteStateStore) -> None:
    other = SQLiteStateStore(state_store.path)
    check_a_follower_of_another_store_object_sees_the_writes(state_store, other)
    other.close()


def test_sqlite_is_shared_between_store_objects_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "rollout.sqlite"
    a, b = SQLiteStateStore(path), SQLiteStateStore(path)
    started = a.start(rollout(), "a")
    assert b.current() == started
    b.update(lambda s: s.next_step(), "b", "advance")
    a.close()
    b.close()
    reopened = SQLiteStateStore(path)
    assert reopened.current() is not None and reopened.current().challenger_percent == 25  # type: ignore[union-attr]
    assert reopened.history()[-1].actor == "b"
    with reopened._db.read() as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    reopened.close()


def _bump_in_process(path: str, times: int) -> None:
    store = SQLiteStateStore(Path(path))
    for _ in range(times):
        store.update(lambda s: s.with_percent(s.challenger_percent + 1), "proc", "bump")
    store.close()


def test_sqlite_compare_and_set_holds_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "rollout.sqlite"
    store = SQLiteStateStore(path)
    store.start(rollout(steps=[100]).with_percent(0), "test")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_bump_in_process, args=(str(path), 15)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert store.current().challenger_percent == 45  # type: ignore[union-attr]
    store.close()


def test_closed_store_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    store = SQLiteStateStore(tmp_path / "rollout.sqlite")
    store.close()
    assert store.ping() is False
    with pytest.raises(StateUnavailable, match="closed"):
        store.current()


def test_open_state_store_follows_settings(settings: Settings) -> None:
    store = open_state_store(settings)
    try:
        assert store.backend == "sqlite"
        assert state_path(settings) == settings.home_abs / "rollout.sqlite"
        assert state_path(settings).exists() and store.ping()
    finally:
        store.close()
