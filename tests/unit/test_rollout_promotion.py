"""Promotion, rollback and crash repair against a real (tmp_path sqlite) MLflow registry."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from hearth.config import Settings
from hearth.params import Params
from hearth.rollout import registry_reads
from hearth.rollout.promotion import (
    promote,
    repair,
    rollback,
    rollback_to_previous,
    start_rollout,
)
from hearth.rollout.registry_client import MlflowRegistry
from hearth.rollout.registry_reads import aliases
from hearth.traffic.rollout_state import Decision, InvalidRollout, RolloutConflict, UnknownVersion
from hearth.traffic.state_sqlite import SQLiteStateStore
from hearth.traffic.stores import state_path
from tests.helpers import register_versions

PARAMS = Params()
NAME = PARAMS.registry.model_name


class Crash(BaseException):
    """The simulated process death between two registry writes (a BaseException, as
    SystemExit: no `except Exception` may survive it)."""


@pytest.fixture
def store(settings: Settings) -> Iterator[SQLiteStateStore]:
    s = SQLiteStateStore(state_path(settings))
    yield s
    s.close()


@pytest.fixture
def versions(settings: Settings, tmp_path: Path) -> list[str]:
    """Three registered versions (no training: the registry only needs a source), v1 champion,
    v2 challenger."""
    made = register_versions(settings, tmp_path, NAME)
    MlflowClient().set_registered_model_alias(NAME, "challenger", made[1])
    return made


@contextmanager
def crash_on_call(method: str, call: int) -> Iterator[None]:
    """Inside the block MlflowClient.`method` raises Crash on its `call`-th use, and the block
    must end in that Crash; the method is restored after it."""
    real = getattr(MlflowClient, method)
    calls = 0

    def wrapper(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == call:
            raise Crash(f"killed during {method} #{call}")
        return real(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(Crash):
        patch.setattr(MlflowClient, method, wrapper)
        yield


def _description(version: str) -> str:
    return MlflowClient().get_model_version(NAME, version).description or ""


# -- the happy paths -------------------------------------------------------------------------
def test_a_rollout_promoted_moves_champion_keeps_previous_and_ends_the_rollout(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    started = start_rollout(settings, PARAMS, store=store, actor="alice")
    assert (started.champion_version, started.challenger_version) == ("1", "2")

    change = promote(settings, PARAMS, Decision("flow", numbers={"psi": 0.02}), store=store)
    assert change.before == {"champion": "1", "challenger": "2"}
    assert change.after == aliases(NAME) == {"champion": "2", "previous": "1"}
    ended = store.current()
    assert ended is not None and ended.status == "promoted" and ended.challenger_percent == 0
    last = store.history(started.rollout_id)[-1]
    assert (last.action, last.actor, last.numbers) == ("promote", "flow", {"psi": 0.02})
    assert store.intent() is None
    # The versions' descriptions say when and why (a line each, after what was there).
    promoted, replaced = _description("2"), _description("1")
    assert f"promoted to champion over v1 in rollout {started.rollout_id} by flow" in promoted
    assert "UTC" in promoted and "replaced as champion by v2" in replaced


def test_rollback_during_a_rollout_only_drops_the_challenger(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    started = start_rollout(settings, PARAMS, store=store)
    decision = Decision(reason="errors", test="guard")
    end = rollback(settings, PARAMS, decision, store=store, sync_aliases=True)
    assert (end.changed, end.aliases, end.champion) == (True, "updated", "1")
    assert aliases(NAME) == {"champion": "1"}
    ended = store.current()
    assert ended is not None and (ended.status, ended.challenger_percent) == ("rolled_back", 0)
    last = store.history(started.rollout_id)[-1]
    assert (last.action, last.reason, last.test) == ("rollback", "errors", "guard")
    assert ": rolled back in rollout" in _description("2")
    assert _description("2").endswith("by hearth: errors (test: guard)")


def test_after_a_promotion_rollback_changes_nothing_and_to_previous_reverts_once(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    promote(settings, PARAMS, challenger_version="3", store=store)
    assert aliases(NAME) == {"champion": "3", "previous": "1", "challenger": "2"}
    events = len(store.history())
    # No rollout runs: a rollback (or its retry) must not demote the champion.
    for _ in range(2):
        end = rollback(settings, PARAMS, store=store)
        assert (end.changed, end.champion, end.aliases) == (False, "3", "unchanged")
        assert "nothing changed" in end.message
    assert store.served().champion_version == "3" and len(store.history()) == events

    with pytest.raises(RolloutConflict, match="v2 is not the champion"):
        rollback_to_previous(settings, PARAMS, "2", store=store)
    change = rollback_to_previous(settings, PARAMS, "3", store=store)
    assert change.after == aliases(NAME) == {"champion": "1", "challenger": "2"}
    assert "rolled back as champion, v1 restored" in _description("3")
    assert "champion again, in place of v3" in _description("1")
    assert store.served().champion_version == "1"
    # The same request again (a retry): v3 is no longer the champion, nothing changes.
    with pytest.raises(RolloutConflict, match="v3 is not the champion"):
        rollback_to_previous(settings, PARAMS, "3", store=store)
    assert store.served().champion_version == "1" and aliases(NAME)["champion"] == "1"


def test_bad_requests_are_typed_errors_and_change_nothing(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    before = aliases(NAME)
    with pytest.raises(UnknownVersion, match="99"):
        start_rollout(settings, PARAMS, "99", store=store)
    with pytest.raises(UnknownVersion):
        promote(settings, PARAMS, challenger_version="not-a-version", store=store)
    with pytest.raises(InvalidRollout, match="same version"):
        start_rollout(settings, PARAMS, "1", store=store)
    with pytest.raises(InvalidRollout, match="already the champion"):
        promote(settings, PARAMS, challenger_version="1", store=store)
    assert store.current() is None and aliases(NAME) == before

    running = start_rollout(settings, PARAMS, "2", store=store)
    with pytest.raises(RolloutConflict):
        start_rollout(settings, PARAMS, "3", store=store)
    assert store.current() == running and aliases(NAME) == before


def test_starting_a_rollout_of_another_version_points_the_challenger_alias_at_it(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    state = start_rollout(settings, PARAMS, 3, mode="canary", steps=[10, 100], store=store)
    assert (state.challenger_version, state.steps) == ("3", (10.0, 100.0))
    assert aliases(NAME)["challenger"] == "3"


def test_commands_open_the_store_from_settings_when_given_none(
    settings: Settings, versions: list[str]
) -> None:
    start_rollout(settings, PARAMS)
    assert promote(settings, PARAMS).after["champion"] == "2"
    assert state_path(settings).exists()


# -- crashes between writes ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("command", "crash", "status", "champion", "halfway", "repaired"),
    [
        pytest.param(
            promote, ("set_registered_model_alias", 2), "promoted", "2",
            {"champion": "1", "previous": "1", "challenger": "2"},  # champion not yet moved
            {"champion": "2", "previous": "1"},
            id="promote",
        ),
        pytest.param(
            rollback, ("delete_registered_model_alias", 1), "rolled_back", "1",
            {"champion": "1", "challenger": "2"},  # the challenger alias not yet dropped
            {"champion": "1"},
            id="rollback",
        ),
    ],
)  # fmt: skip
def test_a_crash_after_the_traffic_switch_is_repaired(
    settings: Settings,
    store: SQLiteStateStore,
    versions: list[str],
    command: Callable[..., object],
    crash: tuple[str, int],
    status: str,
    champion: str,
    halfway: dict[str, str],
    repaired: dict[str, str],
) -> None:
    start_rollout(settings, PARAMS, store=store)
    with crash_on_call(*crash):
        if command is rollback:
            rollback(settings, PARAMS, store=store, sync_aliases=True)
        else:
            command(settings, PARAMS, store=store)
    # The state is written first: the rollout has ended and `champion` serves (no replica
    # routes to the challenger any more). The aliases are half done.
    served = store.served()
    assert served.rollout is not None and served.rollout.status == status
    assert served.champion_version == champion
    assert aliases(NAME) == halfway
    assert store.intent() is not None

    change = repair(settings, PARAMS, store)
    action = command.__name__  # "promote" | "rollback", as the intent and history name it
    assert change is not None and change.action == f"repair: finished {action}"
    assert aliases(NAME) == repaired
    assert store.current().status == status  # type: ignore[union-attr]
    assert store.intent() is None
    assert [e.action for e in store.history()].count(action) == 1
    assert repair(settings, PARAMS, store) is None


def test_the_next_command_repairs_first(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    with crash_on_call("set_registered_model_alias", call=2):
        promote(settings, PARAMS, challenger_version="2", store=store)
    # The revert sees the finished promotion (v2 champion, v1 previous) and undoes it.
    change = rollback_to_previous(settings, PARAMS, "2", store=store)
    assert change.before == {"champion": "2", "previous": "1"}
    assert aliases(NAME) == {"champion": "1"}


def test_crash_between_the_two_rollback_writes_is_repaired(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    promote(settings, PARAMS, challenger_version="2", store=store)
    with crash_on_call("delete_registered_model_alias", call=1):
        rollback_to_previous(settings, PARAMS, "2", store=store)
    assert aliases(NAME) == {"champion": "1", "previous": "1"}  # already serving v1 again
    repair(settings, PARAMS, store)
    assert aliases(NAME) == {"champion": "1"}


def test_a_promotion_whose_version_vanished_is_undone(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    with crash_on_call("set_registered_model_alias", call=2):
        promote(settings, PARAMS, challenger_version="3", store=store)
    assert store.served().champion_version == "3"  # the state was written first
    MlflowClient().delete_model_version(NAME, "3")
    change = repair(settings, PARAMS, store)
    assert change is not None and change.action == "repair: undid promote"
    assert aliases(NAME) == {"champion": "1", "challenger": "2"}
    assert store.served().champion_version == "1"  # serving the version that still exists
    assert store.intent() is None


def test_repair_module_uses_no_intent_when_none_was_left(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    assert repair(settings, PARAMS, store).action == "adopt"  # type: ignore[union-attr]
    assert repair(settings, PARAMS, store) is None
    registry = MlflowRegistry(settings)
    assert registry_reads.check_version(registry, NAME, 2) == "2"
    with pytest.raises(UnknownVersion):
        registry_reads.check_version(registry, NAME, 9)


# -- the state is the authority ---------------------------------------------------------------
def test_the_first_command_adopts_the_registry_champion(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    assert store.served().champion_version is None
    change = repair(settings, PARAMS, store)
    assert change is not None and change.action == "adopt"
    assert change.before == change.after == {"champion": "1", "challenger": "2"}
    assert store.served().champion_version == "1"
    assert store.history()[-1].action == "adopt"
    assert repair(settings, PARAMS, store) is None  # adopted once


def test_nothing_is_adopted_before_a_champion_is_registered(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    MlflowClient().delete_registered_model_alias(NAME, "champion")
    assert repair(settings, PARAMS, store) is None
    assert store.served().champion_version is None


def test_aliases_that_disagree_with_the_state_follow_the_state(
    settings: Settings,
    store: SQLiteStateStore,
    versions: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    repair(settings, PARAMS, store)  # adopts v1
    MlflowClient().set_registered_model_alias(NAME, "champion", "3")  # by hand, behind our back
    change = repair(settings, PARAMS, store)
    assert change is not None and change.action == "reconcile"
    assert aliases(NAME) == {"champion": "1", "challenger": "2"}
    assert store.served().champion_version == "1"
    assert "disagree with the rollout state" in caplog.text


def test_promotion_and_rollback_move_the_states_champion(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    start_rollout(settings, PARAMS, store=store)
    with pytest.raises(RolloutConflict, match="running"):
        # another version while v2 rolls out
        promote(settings, PARAMS, challenger_version="3", store=store)
    promote(settings, PARAMS, store=store)
    assert store.served().champion_version == "2"
    rollback_to_previous(settings, PARAMS, "2", store=store)
    assert store.served().champion_version == "1" and aliases(NAME)["champion"] == "1"
    # no rollout running: a direct promotion
    promote(settings, PARAMS, challenger_version="3", store=store)
    served = store.served()
    assert (served.champion_version, served.running) == ("3", None)
    assert aliases(NAME) == {"champion": "3", "previous": "1"}
    assert store.history()[-1].changes == {"champion_version": ("1", "3")}


# -- rollback without MLflow; compare-and-set on the rollout id (issue #11) -------------------
def _registry_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every MLflow client call fails as with the tracking server stopped."""

    def refused(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError("MLflow is down")

    for method in ("get_registered_model", "set_registered_model_alias",
                   "delete_registered_model_alias", "get_model_version"):  # fmt: skip
        monkeypatch.setattr(MlflowClient, method, refused)


def test_a_rollback_takes_effect_with_mlflow_down_and_the_aliases_follow_later(
    settings: Settings,
    store: SQLiteStateStore,
    versions: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started = start_rollout(settings, PARAMS, store=store)
    with pytest.MonkeyPatch.context() as down:
        _registry_down(down)
        end = rollback(settings, PARAMS, Decision("ops", "bad canary"), store=store,
                       sync_aliases=True)  # fmt: skip
        assert (end.changed, end.status, end.aliases) == (True, "rolled_back", "pending")
        assert store.served().versions() == {"champion": "1"}  # serving follows now
        pending = store.intent()
        assert pending is not None and pending.rollout_id == started.rollout_id
        assert (pending.after, pending.only_if) == ({"challenger": None}, {"challenger": "2"})
        with pytest.raises(ConnectionRefusedError):
            repair(settings, PARAMS, store)  # still down: the intent stays
        assert store.intent() == pending
    assert aliases(NAME) == {"champion": "1", "challenger": "2"}  # not yet followed
    assert "rolled back" not in _description("2")
    change = repair(settings, PARAMS, store)  # MLflow is back
    assert change is not None and change.action == "repair: finished rollback"
    assert "rolled back" in _description("2") and "bad canary" in _description("2")
    repair(settings, PARAMS, store)  # nothing left to do: the line is not written twice
    assert _description("2").count("bad canary") == 1
    assert aliases(NAME) == {"champion": "1"} and store.intent() is None
    last = store.history(started.rollout_id)[-1]
    assert (last.actor, last.action, last.reason) == ("ops", "rollback", "bad canary")


def test_a_rollback_never_drops_a_challenger_alias_that_moved_on(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    start_rollout(settings, PARAMS, store=store)
    rollback(settings, PARAMS, store=store)  # aliases left for repair
    MlflowClient().set_registered_model_alias(NAME, "challenger", "3")  # the next candidate
    repair(settings, PARAMS, store)
    assert aliases(NAME) == {"champion": "1", "challenger": "3"} and store.intent() is None


def test_a_stale_promote_after_a_human_rollback_is_refused(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    judged = start_rollout(settings, PARAMS, store=store)  # the flow judges this one …
    rollback(settings, PARAMS, Decision("cli:alice", "looks wrong"), store=store)  # … a human
    events = len(store.history())
    with pytest.raises(RolloutConflict, match="already ended as rolled_back"):
        promote(settings, PARAMS, Decision("rollout-flow"), rollout_id=judged.rollout_id,
                store=store)  # fmt: skip
    served = store.served()
    assert (served.champion_version, served.rollout.status) == ("1", "rolled_back")  # type: ignore[union-attr]
    assert len(store.history()) == events
    assert aliases(NAME)["champion"] == "1"


def test_a_stale_rollback_after_a_human_promote_is_refused(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    judged = start_rollout(settings, PARAMS, store=store)
    promote(settings, PARAMS, Decision("cli:alice"), store=store)
    events = len(store.history())
    with pytest.raises(RolloutConflict, match="already ended as promoted"):
        rollback(settings, PARAMS, Decision("rollout-flow"), rollout_id=judged.rollout_id,
                 store=store)  # fmt: skip
    assert store.served().champion_version == "2" and len(store.history()) == events
    # A human rollback without a rollout id is a no-op that says what happened.
    end = rollback(settings, PARAMS, store=store)
    assert not end.changed and "already ended as promoted" in end.message
    assert store.served().champion_version == "2" and aliases(NAME)["champion"] == "2"


def test_a_decision_on_the_rollout_it_judged_applies_and_repeats_are_no_ops(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    judged = start_rollout(settings, PARAMS, store=store)
    end = rollback(settings, PARAMS, rollout_id=judged.rollout_id, store=store)
    assert end.changed and end.rollout_id == judged.rollout_id
    again = rollback(settings, PARAMS, rollout_id=judged.rollout_id, store=store)
    assert not again.changed and "already ended as rolled_back" in again.message
    with pytest.raises(RolloutConflict, match="not the running one"):
        rollback(settings, PARAMS, rollout_id="r-unknown", store=store)


def test_rollback_to_previous_is_refused_while_a_rollout_runs(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    promote(settings, PARAMS, challenger_version="2", store=store)
    start_rollout(settings, PARAMS, "3", store=store)
    with pytest.raises(RolloutConflict, match="is running"):
        rollback_to_previous(settings, PARAMS, "2", store=store)
    assert store.served().running is not None and store.served().champion_version == "2"


def test_a_pending_intent_is_never_overwritten_blindly(
    settings: Settings, store: SQLiteStateStore, versions: list[str]
) -> None:
    promote(settings, PARAMS, challenger_version="2", store=store)  # aliases done
    start_rollout(settings, PARAMS, "3", store=store)
    rollback(settings, PARAMS, store=store)  # drop challenger v3: pending (no sync)
    pending = store.intent()
    assert pending is not None
    with pytest.raises(RolloutConflict, match="pending registry change"):
        store.set_intent(pending.model_copy(update={"after": {"champion": "1"}}), expected=None)
    # A second change recorded over a pending one keeps both's alias writes.
    start_rollout(settings, PARAMS, "1", store=store)
    rollback(settings, PARAMS, store=store)
    merged = store.intent()
    assert merged is not None and merged.before == pending.before
    assert merged.only_if == {"challenger": "1"}  # the newer write of the same alias wins
    # A repair that read the older intent never clears the newer one.
    with pytest.raises(RolloutConflict):
        store.set_intent(None, expected=pending)
    assert store.intent() == merged


@pytest.mark.parametrize(
    ("human", "verdict", "status", "champion"),
    [("rollback", "promote", "rolled_back", "1"), ("promote", "rollback", "promoted", "2")],
)
def test_the_flow_drops_a_verdict_on_a_rollout_an_operator_already_ended(
    settings: Settings,
    store: SQLiteStateStore,
    versions: list[str],
    human: str,
    verdict: str,
    status: str,
    champion: str,
) -> None:
    from hearth.config import HearthContext
    from hearth.rollout import flow_steps
    from hearth.rollout.verdict import Verdict

    judged = start_rollout(settings, PARAMS, store=store)
    if human == "rollback":
        rollback(settings, PARAMS, Decision("cli:alice"), store=store)
    else:
        promote(settings, PARAMS, Decision("cli:alice"), store=store)
    events = len(store.history())
    ctx = HearthContext(settings, PARAMS)
    stale = Verdict(verdict, "judged on the traffic so far", "test")  # type: ignore[arg-type]
    action, state = flow_steps.act(ctx, store, judged, stale, round_no=3)
    assert (action, state.status) == ("superseded", status)
    assert store.served().champion_version == champion and len(store.history()) == events
    assert aliases(NAME)["champion"] == champion
