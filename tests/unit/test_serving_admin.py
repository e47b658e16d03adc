"""The admin API's operations are injected: errors keep their status, the ops load lazily,
and a change makes this gateway re-read the state at once."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from mlflow.exceptions import MlflowException

from hearth.config import HearthContext, Settings
from hearth.launch.launcher import free_port
from hearth.serving.admin import Admin, AdminUnavailable, RollbackToPreviousIn
from hearth.serving.schemas import RolloutActionIn, RolloutStartIn, RolloutWeightIn
from hearth.traffic.rollout_state import NoActiveRollout, RolloutConflict, StateUnavailable


class FakeOps:
    """Records the calls; `fail` is raised by the next call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail: BaseException | None = None

    def _call(self, *call: Any) -> dict[str, Any]:
        self.calls.append(call)
        if self.fail is not None:
            raise self.fail
        return {"call": call[0]}

    def status(self) -> dict[str, Any]:
        return self._call("status")

    def history(self, limit: int) -> list[dict[str, Any]]:
        return [self._call("history", limit)]

    def start(
        self, challenger_version: str | int, mode: str | None, steps: list[float] | None,
        reason: str,
    ) -> dict[str, Any]:  # fmt: skip
        return self._call("start", challenger_version, mode, steps, reason)

    def weight(self, challenger_percent: float, reason: str) -> dict[str, Any]:
        return self._call("weight", challenger_percent, reason)

    def promote(self, reason: str) -> dict[str, Any]:
        return self._call("promote", reason)

    def rollback(self, reason: str) -> dict[str, Any]:
        return self._call("rollback", reason)

    def rollback_to_previous(self, expect_champion: str, reason: str) -> dict[str, Any]:
        return self._call("rollback_to_previous", expect_champion, reason)


def test_ops_are_made_once_on_first_use_and_changes_refresh_the_router() -> None:
    ops, made, refreshed = FakeOps(), [], []

    def make() -> FakeOps:
        made.append(1)
        return ops

    admin = Admin(make, on_change=lambda: refreshed.append(1))
    assert made == []  # nothing loaded until an admin call
    asyncio.run(admin.status())
    asyncio.run(admin.history(5))
    assert refreshed == []  # reads change nothing
    start = RolloutStartIn(challenger_version="2", mode="shadow", steps=None, reason="r")
    asyncio.run(admin.start(start))
    asyncio.run(admin.weight(RolloutWeightIn(challenger_percent=30, reason="w")))
    asyncio.run(admin.promote(RolloutActionIn(reason="p")))
    asyncio.run(admin.rollback(RolloutActionIn(reason="b")))
    asyncio.run(admin.rollback_to_previous(RollbackToPreviousIn(expect_champion=2, reason="v")))
    assert made == [1] and len(refreshed) == 5
    assert ops.calls == [
        ("status",), ("history", 5), ("start", "2", "shadow", None, "r"), ("weight", 30.0, "w"),
        ("promote", "p"), ("rollback", "b"), ("rollback_to_previous", "2", "v"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (NoActiveRollout("nothing runs"), NoActiveRollout),  # a refusal keeps its 409
        (StateUnavailable("locked"), AdminUnavailable),  # 503
        (MlflowException("registry down"), AdminUnavailable),  # 503
        (KeyError("a bug"), KeyError),  # a bug stays a bug (500)
    ],
)
def test_failures_keep_or_get_their_status(error: BaseException, raised: type) -> None:
    ops, refreshed = FakeOps(), []
    ops.fail = error
    admin = Admin(lambda: ops, on_change=lambda: refreshed.append(1))
    with pytest.raises(raised):
        asyncio.run(admin.promote(RolloutActionIn(reason="p")))
    assert refreshed == []  # nothing changed: no re-read


# -- over HTTP: a rollback that did not take effect is never a 2xx -------------------------------
ADMIN = "admin-test-token"


@pytest.fixture
def http() -> Iterator[tuple[TestClient, FakeOps]]:
    from hearth.serving.http import HttpPolicy, create_app

    ops = FakeOps()
    admin = Admin(lambda: ops)
    policy = HttpPolicy("api-key", max_payload_bytes=4096, admin_token=ADMIN)
    app = create_app(lambda: None, lambda: policy, lambda: admin)  # type: ignore[arg-type,return-value]
    with TestClient(app) as client:
        client.headers["X-Admin-Token"] = ADMIN
        yield client, ops


@pytest.mark.parametrize(
    ("path", "body"),
    [("/admin/rollback", {"reason": "r"}),
     ("/admin/rollback-to-previous", {"expect_champion": "2", "reason": "r"})],
)  # fmt: skip
def test_a_state_write_that_failed_answers_503(
    http: tuple[TestClient, FakeOps], path: str, body: dict[str, Any]
) -> None:
    client, ops = http
    ops.fail = StateUnavailable("rollout state on Redis: connection refused")
    r = client.post(path, json=body)
    assert r.status_code == 503, r.text
    assert "rollout state unavailable" in r.json()["error"]


def test_rollback_routes_answer_what_happened(http: tuple[TestClient, FakeOps]) -> None:
    client, ops = http
    r = client.post("/admin/rollback", json={})
    assert r.status_code == 200 and r.json() == {"call": "rollback"}
    ops.fail = RolloutConflict("v2 is not the champion (v1 is): nothing reverted")
    r = client.post("/admin/rollback-to-previous", json={"expect_champion": 2})
    assert r.status_code == 409 and "not the champion" in r.json()["error"]
    ops.fail = None
    for bad in ({}, {"expect_champion": "2", "extra": 1}, {"expect_champion": 2.5}):
        assert client.post("/admin/rollback-to-previous", json=bad).status_code in {400, 422}
    assert ops.calls[-1] == ("rollback_to_previous", "2", "")


def test_a_change_re_reads_the_state_off_the_event_loop_and_status_shows_this_process() -> None:
    loop_threads, refresh_threads = [], []
    serving = {"pid": 1, "versions": {"champion": {"version": "1", "loaded": True}}}
    admin = Admin(
        FakeOps, on_change=lambda: refresh_threads.append(threading.get_ident()),
        serving=lambda: serving,
    )  # fmt: skip

    async def go() -> dict[str, Any]:
        loop_threads.append(threading.get_ident())
        await admin.rollback(RolloutActionIn(reason="b"))
        return await admin.status()

    status = asyncio.run(go())
    # The re-read (a store read, maybe slow) ran in the worker thread, not on the loop.
    assert len(refresh_threads) == 1 and refresh_threads != loop_threads
    assert status == {"call": "status", "serving_process": serving}


def test_an_admin_call_with_the_registry_down_is_a_503_not_minutes_of_retries(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real controls against a tracking server that is not there: MLflow's defaults
    would retry for minutes; the serving process fails fast and answers 503 (the bound
    below is for liveness only: minutes would fail it, seconds pass)."""
    from bentos.rollout_admin import MLFLOW_FAIL_FAST, controls

    for name in MLFLOW_FAIL_FAST:
        monkeypatch.delenv(name, raising=False)
    down = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})
    admin = Admin(controls(HearthContext(down)))
    with pytest.raises(AdminUnavailable, match="model registry unavailable"):
        asyncio.run(asyncio.wait_for(admin.promote(RolloutActionIn(reason="p")), 90))
    assert {name: os.environ[name] for name in MLFLOW_FAIL_FAST} == MLFLOW_FAIL_FAST
