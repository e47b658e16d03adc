"""The gateway's admin operations: `hearth.rollout.control` run off the event loop.

Control operations talk to MLflow and the state store (blocking, tens to hundreds of ms),
so each runs in a worker thread while the gateway keeps scoring. After a change, this
gateway re-reads the rollout state at once (`on_change`); the others within a second.
Failures of the registry or the state backend become `Unavailable` (503); a refused request
keeps its `RolloutError` (4xx with its message).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from hearth.config import HearthContext
from hearth.serving.errors import Unavailable
from hearth.serving.schemas import RolloutActionIn, RolloutStartIn, RolloutWeightIn
from hearth.traffic.rollout_state import RolloutError, StateUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
ACTOR = "admin-api"


class AdminUnavailable(Unavailable):
    """The model registry or the rollout state cannot be reached now."""


class Admin:
    """Rollout controls for the admin HTTP API of one gateway process."""

    def __init__(self, ctx: HearthContext, on_change: Callable[[], None] | None = None) -> None:
        self.ctx = ctx
        self.on_change = on_change

    async def _run(self, fn: Callable[[], T], changes: bool) -> T:
        try:
            result = await asyncio.to_thread(fn)
        except RolloutError:
            raise
        except StateUnavailable as exc:
            raise AdminUnavailable(f"rollout state unavailable: {exc}") from exc
        except Exception as exc:
            if type(exc).__module__.startswith("mlflow"):
                raise AdminUnavailable(f"model registry unavailable: {exc}") from exc
            raise
        if changes and self.on_change is not None:
            self.on_change()
        return result

    async def status(self) -> dict[str, Any]:
        from hearth.rollout import control

        return await self._run(lambda: control.status(self.ctx.settings, self.ctx.params), False)

    async def history(self, limit: int = 100) -> list[dict[str, Any]]:
        from hearth.rollout import control

        events = await self._run(lambda: control.history(self.ctx.settings, limit=limit), False)
        return [e.model_dump(mode="json") for e in events]

    async def start(self, body: RolloutStartIn) -> dict[str, Any]:
        from hearth.rollout import control

        state = await self._run(
            lambda: control.start(
                self.ctx.settings, self.ctx.params, body.challenger_version, mode=body.mode,
                steps=body.steps, actor=ACTOR, reason=body.reason,
            ),
            True,
        )  # fmt: skip
        return state.model_dump(mode="json")

    async def weight(self, body: RolloutWeightIn) -> dict[str, Any]:
        from hearth.rollout import control

        state = await self._run(
            lambda: control.set_weight(
                self.ctx.settings, self.ctx.params, body.challenger_percent, actor=ACTOR,
                reason=body.reason,
            ),
            True,
        )  # fmt: skip
        return state.model_dump(mode="json")

    async def promote(self, body: RolloutActionIn) -> dict[str, Any]:
        from hearth.rollout import control

        change = await self._run(
            lambda: control.promote(self.ctx.settings, self.ctx.params, ACTOR, body.reason), True
        )
        return change.to_dict()

    async def rollback(self, body: RolloutActionIn) -> dict[str, Any]:
        from hearth.rollout import control

        change = await self._run(
            lambda: control.rollback(self.ctx.settings, self.ctx.params, ACTOR, body.reason), True
        )
        return change.to_dict()
