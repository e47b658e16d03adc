"""The admin API's operations are injected: errors keep their status, the ops load lazily,
and a change makes this gateway re-read the state at once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mlflow.exceptions import MlflowException

from hearth.serving.admin import Admin, AdminUnavailable
from hearth.serving.schemas import RolloutActionIn, RolloutStartIn, RolloutWeightIn
from hearth.traffic.rollout_state import NoActiveRollout, StateUnavailable


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
    assert made == [1] and len(refreshed) == 4
    assert ops.calls == [
        ("status",), ("history", 5), ("start", "2", "shadow", None, "r"), ("weight", 30.0, "w"),
        ("promote", "p"), ("rollback", "b"),
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
