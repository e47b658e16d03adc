"""Rollout controls (`hearth.rollout.control`) against a real tmp_path MLflow and state store,
and the gateway's failure semantics with a challenger that errors, hangs or is loading.

Model files are not needed here: the controls only write the state and the aliases (the
integration tests serve real models).
"""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from hearth.config import Settings
from hearth.params import Params
from hearth.rollout import control, registry_reads
from hearth.rollout.verdict import analyse
from hearth.serving.dependencies import Background
from hearth.serving.faults import Fault, FaultError
from hearth.serving.gateway import Gateway
from hearth.serving.routing import CHAMPION_ROUTE
from hearth.serving.schemas import FeatureRow, Score, ScoreItem, TransactionIn
from hearth.traffic.assignment import Route
from hearth.traffic.prediction_log import PredictionLog, PredictionRecord
from hearth.traffic.rollout_state import (
    Decision,
    InvalidRollout,
    NoActiveRollout,
    RolloutConflict,
    Served,
    UnknownVersion,
)
from hearth.traffic.state_sqlite import SQLiteStateStore
from hearth.traffic.stores import state_path
from tests.helpers import register_versions

PARAMS = Params()
NAME = PARAMS.registry.model_name


@pytest.fixture
def versions(settings: Settings, tmp_path: Path) -> list[str]:
    """Three registered versions (sources only), v1 the champion (in the state too)."""
    made = register_versions(settings, tmp_path, NAME)
    control.promotion.repair(settings, PARAMS)  # the state adopts v1, as `hearth serve` does
    return made


def _served(settings: Settings) -> Served:
    store = SQLiteStateStore(state_path(settings))
    try:
        return store.served()
    finally:
        store.close()


def _snapshot(settings: Settings) -> tuple[Any, ...]:
    store = SQLiteStateStore(state_path(settings))
    try:
        state, events = store.current(), store.history()
    finally:
        store.close()
    return state, len(events), registry_reads.aliases(NAME)


# -- refusals change nothing -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"challenger_version": "99"}, UnknownVersion),
        ({"challenger_version": "v2"}, UnknownVersion),
        ({"challenger_version": "2", "mode": "blue-green"}, InvalidRollout),
        ({"challenger_version": "2", "steps": [50, 25]}, InvalidRollout),
        ({"challenger_version": "2", "steps": [0, 50, 100]}, InvalidRollout),
        ({"challenger_version": "1"}, InvalidRollout),  # the champion itself
    ],
)
def test_a_refused_start_changes_nothing(
    settings: Settings,
    versions: list[str],
    kwargs: dict[str, Any],
    error: type[Exception],
) -> None:
    before = _snapshot(settings)
    with pytest.raises(error):
        control.start(settings, PARAMS, **kwargs)
    assert _snapshot(settings) == before


def test_start_names_the_challenger_in_the_state_and_a_second_start_conflicts(
    settings: Settings, versions: list[str]
) -> None:
    state = control.start(settings, PARAMS, "2", mode="canary", steps=[5, 50, 100], actor="t")
    assert (state.champion_version, state.challenger_version) == ("1", "2")
    assert state.challenger_percent == 5 and state.running
    assert _served(settings).versions() == {"champion": "1", "challenger": "2"}
    before = _snapshot(settings)
    with pytest.raises(RolloutConflict, match="still running"):
        control.start(settings, PARAMS, "3")
    assert _snapshot(settings) == before


@pytest.mark.parametrize("percent", [-1, 101, math.nan, math.inf])
def test_weights_outside_0_100_are_refused(
    settings: Settings, versions: list[str], percent: float
) -> None:
    control.start(settings, PARAMS, "2")
    before = _snapshot(settings)
    with pytest.raises(InvalidRollout):
        control.set_weight(settings, PARAMS, percent)
    assert _snapshot(settings) == before


def test_weight_moves_traffic_and_needs_a_running_non_shadow_rollout(
    settings: Settings, versions: list[str]
) -> None:
    with pytest.raises(NoActiveRollout):
        control.set_weight(settings, PARAMS, 30)
    control.start(settings, PARAMS, "2")
    assert control.set_weight(settings, PARAMS, 30, actor="op").challenger_percent == 30
    assert control.history(settings)[-1].action == "weight"
    control.rollback(settings, PARAMS)
    control.start(settings, PARAMS, "3", mode="shadow")
    with pytest.raises(InvalidRollout, match="shadow"):
        control.set_weight(settings, PARAMS, 10)


# -- serving follows promotions and rollbacks ---------------------------------------------------
def test_rollback_promote_and_rollback_again_move_the_served_champion(
    settings: Settings, versions: list[str]
) -> None:
    control.start(settings, PARAMS, "2")
    status = control.status(settings, PARAMS)
    assert status.served.model_dump() == {
        "champion": "1", "challenger": "2", "mode": "canary", "challenger_percent": 5.0
    }  # fmt: skip

    control.rollback(settings, PARAMS, Decision(reason="drill"))
    assert _served(settings).versions() == {"champion": "1"}
    ended = control.status(settings, PARAMS).rollout
    assert ended is not None and ended.status == "rolled_back"

    control.start(settings, PARAMS, "2")
    change = control.promote(settings, PARAMS, Decision(reason="better"))
    assert change.after["champion"] == "2"
    assert _served(settings).versions() == {"champion": "2"}
    status = control.status(settings, PARAMS)
    assert status.served.champion == "2" and status.aliases["previous"] == "1"

    # After a promotion a rollback changes nothing; reverting is its own, explicit action
    # that sets the state's champion back, then the aliases.
    assert not control.rollback(settings, PARAMS).changed
    assert _served(settings).versions() == {"champion": "2"}
    control.rollback_to_previous(settings, PARAMS, "2")
    assert _served(settings).versions() == {"champion": "1"}
    status = control.status(settings, PARAMS)
    assert status.served.champion == "1" and status.aliases["champion"] == "1"


# -- the prediction log contract ------------------------------------------------------------------
def _record(tx: str, variant: str, ok: bool = True, **kw: Any) -> PredictionRecord:
    base: dict[str, Any] = {
        "transaction_id": tx, "request_id": "r", "variant": variant,
        "model_version": "2" if variant == "challenger" else "1",
        "score": 0.2 if ok else None, "decision": "approve" if ok else None,
        "latency_ms": 3.0, "ok": ok, "rollout_id": "r1", "customer_id": "c",
    }  # fmt: skip
    return PredictionRecord(**(base | kw))


def test_analysis_rows_join_labels_and_feed_the_analysis(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "serving.sqlite")
    log.record_entries(
        [
            _record("t1", "champion"),
            _record("t2", "challenger", ok=False, latency_ms=501.0),
            _record("t2", "champion"),
            _record("t3", "challenger", shadow=True),
            _record("t4", "champion", rollout_id="other"),
        ]
    )
    log.feedback("t1", False)
    log.feedback("t1", True)  # a corrected label: the newest counts
    rows = log.analysis_rows("r1")
    assert [set(r) for r in rows] == [
        {
            "variant",
            "ok",
            "latency_ms",
            "score",
            "is_fraud",
            "model_version",
            "shadow",
            "customer_id",
            "transaction_id",
        }
    ] * 4
    assert rows[0] == {
        "variant": "champion", "ok": True, "latency_ms": 3.0, "score": 0.2,
        "is_fraud": True, "model_version": "1", "shadow": False, "customer_id": "c",
        "transaction_id": "t1",
    }  # fmt: skip
    assert rows[1]["ok"] is False and rows[1]["score"] is None and rows[1]["is_fraud"] is None
    assert rows[3]["shadow"] is True
    assert len(log.analysis_rows()) == 5
    from datetime import UTC, datetime, timedelta

    assert log.analysis_rows(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    assert log.counts("r1")["challenger"] == {
        "requests": 1, "errors": 1, "labelled": 0, "frauds": 0
    }  # fmt: skip
    verdict = analyse(rows, PARAMS.rollout, 0.5)
    assert verdict.decision in {"hold", "rollback"}


def test_an_old_log_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "serving.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE predictions (transaction_id TEXT NOT NULL, request_id TEXT NOT NULL, "
        "variant TEXT NOT NULL, model_version TEXT NOT NULL, score REAL NOT NULL, "
        "decision TEXT NOT NULL, at REAL NOT NULL)"
    )
    db.execute("INSERT INTO predictions VALUES ('t0', 'r', 'champion', '1', 0.1, 'approve', 1)")
    db.commit()
    db.close()
    log = PredictionLog(path)
    log.record_entries([_record("t1", "challenger", ok=False)])
    assert [r["transaction_id"] for r in log.rows("predictions")] == ["t0", "t1"]
    assert len(log.analysis_rows()) == 1  # t0 was never timed: not analysable


def test_fault_specs() -> None:
    assert Fault.parse('{"error_rate": 0.5}') == Fault(error_rate=0.5)
    assert Fault.parse({"extra_latency_ms": 300}) == Fault(extra_latency_ms=300)
    assert Fault.parse(None) is None and Fault.parse("{}") is None
    for bad in ('{"error_rate": 2}', '{"slow": 1}', "[1]", "nope"):
        with pytest.raises(FaultError):
            Fault.parse(bad)


# -- the gateway: a challenger never fails a client ----------------------------------------------
TXN = TransactionIn(
    transaction_id="t1", timestamp="2026-02-01T12:00:00", customer_id="c1", merchant_id="m1",
    merchant_category="grocery", amount=25.5, currency="EUR", channel="pos", device_id="d1",
    latitude=48.1, longitude=11.5,
)  # fmt: skip


class FakeFeatures:
    async def observe(self, txns: Any) -> list[FeatureRow]:
        return [FeatureRow(features={"x": 1.0}, cold_start=False) for _ in txns]

    async def ready(self) -> bool:
        return True


class FakeModel:
    """Version "1" answers 0.1; the challenger "2" behaves as `mode` says."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode

    async def score(self, items: list[ScoreItem]) -> list[Score]:
        out = []
        for item in items:
            version = item.model_version or "1"
            if version == "2" and self.mode == "hang":
                await asyncio.sleep(5)
            if version == "2" and self.mode in {"error", "unavailable"}:
                out.append(Score(variant=item.variant, model_version="2", data_version="d",
                                 status=self.mode, error=self.mode))  # fmt: skip
                continue
            p = 0.9 if version == "2" else 0.1
            out.append(Score(variant=item.variant, model_version=version, data_version="d",
                             probability=p, decision="approve"))  # fmt: skip
        return out

    async def ready(self) -> bool:
        return True


class FixedRouter:
    def __init__(self, route: Route) -> None:
        self.r = route

    def route(self, txn: Any) -> Route:
        return self.r


def _gateway(tmp_path: Path, route: Route, challenger_mode: str) -> Gateway:
    log: Background[PredictionLog] = Background("log", lambda: PredictionLog(tmp_path / "s.db"))
    log.join()
    return Gateway(
        FakeFeatures(), FakeModel(), log, router=FixedRouter(route),
        challenger_model=FakeModel(challenger_mode), challenger_timeout_s=0.2,
    )  # fmt: skip


TO_CHALLENGER = Route("challenger", "2", fallback_version="1", rollout_id="r1")


@pytest.mark.parametrize(
    ("mode", "variant", "failed"),
    [("ok", "challenger", False), ("error", "champion", True), ("hang", "champion", True),
     ("unavailable", "champion", False)],
)  # fmt: skip
def test_a_challenger_fault_is_answered_by_the_champion_and_logged(
    tmp_path: Path, mode: str, variant: str, failed: bool
) -> None:
    gateway = _gateway(tmp_path, TO_CHALLENGER, mode)
    (out,) = asyncio.run(gateway.predict([TXN]))
    assert out.variant == variant
    assert out.model_version == ("2" if variant == "challenger" else "1")
    rows = gateway.predictions.get().analysis_rows("r1")
    failures = [r for r in rows if not r["ok"]]
    assert len(failures) == int(failed)
    if mode == "hang":
        assert failures[0]["latency_ms"] >= 200  # the timeout, as the guard rails see it


def test_shadow_copies_are_logged_never_returned(tmp_path: Path) -> None:
    route = Route("champion", "1", fallback_version="1", shadow_version="2", rollout_id="r1")
    gateway = _gateway(tmp_path, route, "ok")

    async def run() -> Any:
        out = await gateway.predict([TXN])
        await gateway.drain_shadows()
        return out

    (out,) = asyncio.run(run())
    assert (out.variant, out.model_version, out.fraud_probability) == ("champion", "1", 0.1)
    rows = gateway.predictions.get().analysis_rows("r1")
    assert {(r["variant"], r["shadow"], r["score"]) for r in rows} == {
        ("champion", False, 0.1), ("challenger", True, 0.9)
    }  # fmt: skip


def test_the_default_route_is_the_pools_champion(tmp_path: Path) -> None:
    gateway = _gateway(tmp_path, CHAMPION_ROUTE, "ok")
    (out,) = asyncio.run(gateway.predict([TXN]))
    assert (out.variant, out.model_version) == ("champion", "1")


# -- status without the registry ---------------------------------------------------------------
def test_status_degrades_when_the_registry_does_not_answer(
    settings: Settings, versions: list[str]
) -> None:
    control.start(settings, PARAMS, "2")
    fast = control.status(settings, PARAMS)  # a SQLite registry: read without MLflow's client
    assert fast.aliases == registry_reads.aliases(NAME) == {"champion": "1", "challenger": "2"}
    down = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"})
    status = control.status(down, PARAMS)
    assert status.aliases == {} and status.aliases_error is not None
    assert "unavailable" in status.aliases_error
    assert status.served.challenger == "2" and status.rollout is not None  # the state still


def test_the_admin_controls_answer_a_repeated_rollback_with_changed_false(
    settings: Settings, versions: list[str]
) -> None:
    ops = control.Controls(settings, PARAMS, actor="admin-test")
    control.start(settings, PARAMS, "2")
    first, second = ops.rollback("drill"), ops.rollback("drill again")
    assert (first["changed"], first["status"]) == (True, "rolled_back")
    assert (second["changed"], second["aliases"]) == (False, "unchanged")
    assert "nothing changed" in second["message"]
    with pytest.raises(RolloutConflict, match="nothing to revert"):
        ops.rollback_to_previous("1", "no promotion yet")
