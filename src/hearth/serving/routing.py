"""Which model variant, and which model version, scores a transaction.

The gateway depends only on the `Router` protocol. `ChampionRouter` sends everything to the
pool's champion (no rollout state: unit tests, a bare model). `RolloutRouter` is the thin
adapter over `hearth.traffic.follower.Follower`, which holds the sticky assignment and the
shared rollout state (re-read at most every `refresh_interval`, so a rollback written by any
process reaches every gateway replica within a second).

When no rollout runs, the champion's version comes from the newer of two writes: the
serving-state file (written by `hearth serve` and by the rollout commands) and the last
rollout's end (a promotion made by a flow names the new champion there). See
`champion_version`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from hearth.features.online import Transaction
from hearth.traffic.assignment import route_for
from hearth.traffic.follower import Follower
from hearth.traffic.rollout_state import RolloutState

if TYPE_CHECKING:
    from hearth.serving.state import ServingState

CHAMPION, CHALLENGER = "champion", "challenger"


@dataclass(frozen=True)
class Routed:
    """Where one transaction goes.

    `variant` answers; `model_version` is the registry version behind it (None: whatever
    the pool serves as that variant). `fallback_version` answers instead when a challenger
    fails (the champion's version, or None for the pool's champion). `shadow_version` also
    scores a copy, logged and never returned (shadow mode). `rollout_id` ties the answer
    to a rollout in the prediction log.
    """

    variant: str
    model_version: str | None = None
    fallback_version: str | None = None
    shadow_version: str | None = None
    rollout_id: str | None = None


CHAMPION_ROUTE = Routed(CHAMPION)


class Router(Protocol):
    def route(self, txn: Transaction) -> Routed:
        """Where `txn` goes."""
        ...


class ChampionRouter:
    """Every transaction to the pool's champion."""

    def route(self, txn: Transaction) -> Routed:
        return CHAMPION_ROUTE


def champion_version(state: RolloutState | None, file_revision: int | None) -> str | None:
    """The champion's version when no rollout runs; None: the pool's own champion.

    A rollout that ended after the serving-state file was last written decides (promoted:
    its challenger; rolled back or aborted: its champion). Otherwise the file does, and the
    pool already serves the file's champion.
    """
    if state is None or state.running:
        return None
    if file_revision is not None and state.revision <= file_revision:
        return None
    return state.challenger_version if state.status == "promoted" else state.champion_version


class _FileRevision:
    """The serving-state file's rollout revision, re-read when its mtime changes."""

    def __init__(self, state: ServingState | None, interval_s: float) -> None:
        self.state, self.interval_s = state, interval_s
        self._lock = threading.Lock()
        self._next = 0.0
        self._mtime: float | None = None
        self._revision: int | None = None

    def get(self) -> int | None:
        if self.state is None:
            return None
        now = time.monotonic()
        if now >= self._next and self._lock.acquire(blocking=False):
            try:
                self._next = now + self.interval_s
                mtime = self.state.mtime()
                if mtime != self._mtime:
                    self._mtime = mtime
                    variants, revision = self.state.read_all()
                    self._revision = None if variants is None else revision
            except (OSError, ValueError):
                pass  # keep the last value; the file is rewritten atomically anyway
            finally:
                self._lock.release()
        return self._revision

    def refresh(self) -> None:
        self._next = 0.0


class RolloutRouter:
    """Routes by the shared rollout state: sticky canary/A-B split, shadow copies."""

    def __init__(self, router: Follower, serving_state: ServingState | None = None) -> None:
        self.router = router
        self._file = _FileRevision(serving_state, router.refresh_interval)

    def route(self, txn: Transaction) -> Routed:
        served = self.router.served()
        state = served.running
        if state is None:
            version = champion_version(served.rollout, self._file.get())
            return Routed(CHAMPION, version, version) if version else CHAMPION_ROUTE
        r = route_for(served, txn.customer_id, self.router.buckets)
        return Routed(
            variant=r.variant,
            model_version=r.model_version,
            fallback_version=state.champion_version,
            shadow_version=r.shadow_version,
            rollout_id=r.rollout_id,
        )

    def refresh(self) -> None:
        """Re-read the state now (after this process changed it)."""
        self._file.refresh()
        self.router.refresh()
