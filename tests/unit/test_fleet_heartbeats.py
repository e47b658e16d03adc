"""Heartbeats of serving processes: the reporter, the fleet status, `hearth rollout status`.

The store contract (a process's beat replaces its last one, old ones are forgotten) is in
tests/unit/test_rollout_state.py's checks, run on SQLite and Redis.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime, timedelta

import pytest
from typer.testing import CliRunner

from hearth.config import Settings
from hearth.params import Params
from hearth.traffic.fleet import HeartbeatReporter, fleet_status
from hearth.traffic.heartbeat import LoadedVersion
from hearth.traffic.rollout_state import StateUnavailable, new_rollout
from hearth.traffic.state_sqlite import SQLiteStateStore
from hearth.traffic.state_store import StateStore
from hearth.traffic.stores import state_path

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def _versions() -> dict[str, LoadedVersion]:
    return {
        "champion": LoadedVersion(version="1", loaded=True),
        "challenger": LoadedVersion(version="2", loaded=False),
    }


def test_a_reporter_says_who_it_is_and_what_it_serves(state_store: SQLiteStateStore) -> None:
    clock = Clock()
    reporter = HeartbeatReporter(state_store, _versions, "monolith", "/homes/a", 10, clock=clock)
    written = reporter.beat()
    assert written.pid == os.getpid() and written.process.endswith(f":{os.getpid()}")
    assert (written.home, written.role, written.seen_at) == ("/homes/a", "monolith", T0)
    assert state_store.heartbeats() == [written]
    assert state_store.heartbeats()[0].versions["challenger"] == LoadedVersion(
        version="2", loaded=False
    )


def test_the_fleet_names_the_processes_that_went_quiet(state_store: SQLiteStateStore) -> None:
    a_clock, b_clock = Clock(), Clock()
    a = HeartbeatReporter(state_store, _versions, "monolith", "/homes/a", 10, clock=a_clock)
    b = HeartbeatReporter(state_store, _versions, "gateway", "/homes/b", 10, clock=b_clock)
    b.host = "other-machine"  # two machines: the same pid is another process there
    a.beat()
    b.beat()
    both = fleet_status(state_store, window_s=60, now=T0 + timedelta(seconds=5))
    assert len(both.live) == 2 and both.quiet == () and both.error is None
    a_clock.now = T0 + timedelta(seconds=70)  # a keeps beating, b went quiet at T0
    a.beat()
    fleet = fleet_status(state_store, window_s=60, now=T0 + timedelta(seconds=75))
    assert [p.home for p in fleet.live] == ["/homes/a"]
    assert [(p.process, p.age_s) for p in fleet.quiet] == [(f"other-machine:{os.getpid()}", 75)]


def test_a_backend_without_heartbeats_or_down_degrades_the_status(
    state_store: SQLiteStateStore,
) -> None:
    class Without(SQLiteStateStore):
        backend = "future"
        _read_heartbeats = StateStore._read_heartbeats  # the base's: not implemented

    without = Without(state_store.path)
    try:
        fleet = fleet_status(without, window_s=60)
    finally:
        without.close()
    assert fleet.error is not None and "keeps no heartbeats" in fleet.error
    state_store.close()
    down = fleet_status(state_store, window_s=60)
    assert down.error is not None and down.live == ()


def test_the_reporter_beats_on_and_survives_a_store_that_fails(
    state_store: SQLiteStateStore,
) -> None:
    calls: list[str] = []
    written = threading.Event()

    class Flaky(SQLiteStateStore):
        def _write_heartbeat(self, *args: object) -> None:
            calls.append("beat")
            if len(calls) == 1:
                raise StateUnavailable("down for a moment")
            super()._write_heartbeat(*args)  # type: ignore[arg-type]
            written.set()

    flaky = Flaky(state_store.path)
    reporter = HeartbeatReporter(flaky, _versions, "monolith", "/h", interval_s=0.05).start()
    try:
        assert written.wait(10), calls
    finally:
        reporter.stop()
        flaky.close()
    assert len(state_store.heartbeats()) == 1


def test_rollout_status_says_how_many_report_and_names_the_quiet_ones(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hearth.cli import rollout

    store = SQLiteStateStore(state_path(settings))
    now = datetime.now(UTC)
    try:
        store.set_champion("1", "test", "adopt", expected=None)
        store.start(new_rollout("1", "2", Params().rollout), "test")
        live = HeartbeatReporter(store, _versions, "monolith", "/homes/live", 10)
        live.beat()
        quiet = HeartbeatReporter(
            store,
            _versions,
            "gateway",
            "/homes/quiet",
            10,
            clock=lambda: now - timedelta(minutes=5),
        )
        quiet.host = "box-2"
        quiet.beat()
    finally:
        store.close()
    monkeypatch.setenv("COLUMNS", "300")
    monkeypatch.setenv("HEARTH_MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # not needed
    result = CliRunner().invoke(rollout.rollout_app, ["status"])
    assert result.exit_code == 0, result.output
    assert "serving processes: 1 reported in the last 60 s, 1 quiet" in result.output
    assert "/homes/live" in result.output and "challenger v2 (loading)" in result.output
    assert f"quiet box-2:{os.getpid()} (gateway, home /homes/quiet): not heard from" in (
        result.output
    )
    as_json = CliRunner().invoke(rollout.rollout_app, ["status", "--json"])
    assert '"quiet"' in as_json.output and "box-2" in as_json.output
