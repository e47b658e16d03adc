"""The gateway's admin operations, run off the event loop.

Serving does not know how a rollout is controlled: it defines the operations it needs
(`AdminOps`) and the orchestration layer (``bentos/``) injects an implementation, the
rollout controls (`hearth.rollout.control.Controls`). Each operation talks to MLflow and
the state store (blocking, tens to hundreds of ms), so it runs in a worker thread while the
gateway keeps scoring. After a change, this gateway re-reads the rollout state at once
(`on_change`); the others within a second. Failures of the registry or the state backend
become `Unavailable` (503): a change that could not be written never answers 2xx. A refused
request keeps its `RolloutError` (4xx with its message).

`POST /admin/rollback` ends the running rollout and is idempotent: with none running it
answers 200 with ``"changed": false`` and a message saying so. Undoing a promotion is its
own route, `POST /admin/rollback-to-previous`, whose body names the champion it expects to
replace (409 when that is no longer the champion).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from hearth.serving.errors import Unavailable
from hearth.serving.schemas import RolloutActionIn, RolloutStartIn, RolloutWeightIn
from hearth.traffic.rollout_state import RegistryError, RolloutError, StateUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class RollbackToPreviousIn(BaseModel):
    """Undo the last promotion: `previous` becomes the champion again, if `expect_champion`
    is still the champion (else 409: a retry or a stale request never demotes a newer one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    expect_champion: StrictStr | int = Field(
        description="The champion version this request means to replace."
    )
    reason: str = ""


class AdminOps(Protocol):
    """The rollout controls an admin API calls; each returns a JSON-ready answer and raises
    a `RolloutError` for a refused request (nothing changed)."""

    def status(self) -> dict[str, Any]: ...

    def history(self, limit: int) -> list[dict[str, Any]]: ...

    def start(
        self, challenger_version: str | int, mode: str | None, steps: list[float] | None,
        reason: str,
    ) -> dict[str, Any]: ...  # fmt: skip

    def weight(self, challenger_percent: float, reason: str) -> dict[str, Any]: ...

    def promote(self, reason: str) -> dict[str, Any]: ...

    def rollback(self, reason: str) -> dict[str, Any]: ...

    def rollback_to_previous(self, expect_champion: str, reason: str) -> dict[str, Any]: ...


class AdminUnavailable(Unavailable):
    """The model registry or the rollout state cannot be reached now."""


class Admin:
    """Rollout controls for the admin HTTP API of one gateway process.

    `ops` makes the operations on first use: a gateway that never sees an admin call need
    not import the rollout controls (nor, with an embedded registry, MLflow).
    """

    def __init__(
        self,
        ops: Callable[[], AdminOps],
        on_change: Callable[[], None] | None = None,
        serving: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self._make_ops = ops
        self.serving = serving
        self._ops: AdminOps | None = None
        self._lock = threading.Lock()
        self.on_change = on_change

    def ops(self) -> AdminOps:
        with self._lock:
            if self._ops is None:
                self._ops = self._make_ops()
            return self._ops

    def _call(self, fn: Callable[[AdminOps], T], changes: bool) -> T:
        result = fn(self.ops())
        if changes and self.on_change is not None:
            self.on_change()  # a re-read of the state: here, off the event loop too
        return result

    async def _run(self, fn: Callable[[AdminOps], T], changes: bool) -> T:
        try:
            return await asyncio.to_thread(self._call, fn, changes)
        except RolloutError:
            raise
        except StateUnavailable as exc:
            raise AdminUnavailable(f"rollout state unavailable: {exc}") from exc
        except RegistryError as exc:  # MLflow's REST API (a tracking server)
            raise AdminUnavailable(f"model registry unavailable: {exc}") from exc
        except Exception as exc:  # MLflow's client (an embedded registry)
            if type(exc).__module__.startswith("mlflow"):
                raise AdminUnavailable(f"model registry unavailable: {exc}") from exc
            raise

    async def status(self) -> dict[str, Any]:
        """The rollout state, aliases, served versions, history tail and live counts; and
        `serving_process`: the versions the process that answers has loaded (its pid, each
        variant's version and whether it is loaded there: a challenger takes a process's
        customers only once it is)."""
        status = await self._run(lambda ops: ops.status(), False)
        if self.serving is not None:
            status = {**status, "serving_process": self.serving()}
        return status

    async def history(self, limit: int = 100) -> list[dict[str, Any]]:
        """Every change of every rollout: who, when, why, with the analysis numbers."""
        return await self._run(lambda ops: ops.history(limit), False)

    async def start(self, body: RolloutStartIn) -> dict[str, Any]:
        """Start a canary, A/B or shadow rollout of a registered version."""
        return await self._run(
            lambda ops: ops.start(body.challenger_version, body.mode, body.steps, body.reason),
            True,
        )

    async def weight(self, body: RolloutWeightIn) -> dict[str, Any]:
        """Set the challenger's share of customers (0-100 %)."""
        return await self._run(lambda ops: ops.weight(body.challenger_percent, body.reason), True)

    async def promote(self, body: RolloutActionIn) -> dict[str, Any]:
        """Make the challenger the champion (the old one stays as `previous`)."""
        return await self._run(lambda ops: ops.promote(body.reason), True)

    async def rollback(self, body: RolloutActionIn) -> dict[str, Any]:
        """End the running rollout: all traffic to the champion within a second, MLflow not
        needed (its aliases follow when it answers). Idempotent: with no rollout running,
        200 with `"changed": false` and a message; nothing changes."""
        return await self._run(lambda ops: ops.rollback(body.reason), True)

    async def rollback_to_previous(self, body: RollbackToPreviousIn) -> dict[str, Any]:
        """Undo the last promotion: the `previous` version becomes the champion again, if
        `expect_champion` is still the champion (409 otherwise, or while a rollout runs)."""
        expected = str(body.expect_champion)
        return await self._run(lambda ops: ops.rollback_to_previous(expected, body.reason), True)
