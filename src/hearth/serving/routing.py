"""Which model variant, and which model version, scores a transaction.

The gateway depends only on the `Router` protocol. `ChampionRouter` sends everything to the
pool's champion (no rollout state: unit tests, a bare model). `RolloutRouter` is the thin
adapter over `hearth.traffic.follower.Follower`, which holds the sticky assignment and the
shared rollout state (re-read at most every `refresh_interval`, so a rollback written by any
process reaches every gateway replica within a second).

The shared state names the champion's version too: every route of a `RolloutRouter` names
the version that answers (None only before the first champion is adopted).

With `loaded` (the monolith: its own model pool), a rollout's challenger takes effect in this
process only once this process has loaded it: until then its customers stay on the champion
(and shadow copies wait), so no customer is answered by the champion *because* the challenger
is still loading and then by the challenger a moment later, within one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from hearth.config import CHALLENGER, CHAMPION
from hearth.features.online import Transaction
from hearth.traffic.assignment import Route, route_for
from hearth.traffic.follower import Follower

CHAMPION_ROUTE = Route(CHAMPION)


class Router(Protocol):
    def route(self, txn: Transaction) -> Route:
        """Where `txn` goes."""
        ...


class ChampionRouter:
    """Every transaction to the pool's champion."""

    def route(self, txn: Transaction) -> Route:
        return CHAMPION_ROUTE


class RolloutRouter:
    """Routes by the shared state: the champion's version, sticky canary/A-B split, shadow
    copies. The snapshot is in memory (re-read at most every `refresh_interval`)."""

    def __init__(self, router: Follower, loaded: Callable[[str], bool] | None = None) -> None:
        self.router = router
        self.loaded = loaded

    def route(self, txn: Transaction) -> Route:
        served = self.router.served()
        route = route_for(served, txn.customer_id, self.router.buckets)
        running = served.running
        champion = running.champion_version if running else served.champion_version
        if not champion:
            return CHAMPION_ROUTE
        if self.loaded is not None and running is not None:
            route = self._ready_only(route, champion)
        return replace(route, fallback_version=champion)

    def _ready_only(self, route: Route, champion: str) -> Route:
        """`route` without the challenger this process has not loaded yet."""
        assert self.loaded is not None
        if (
            route.variant == CHALLENGER
            and route.model_version
            and not self.loaded(route.model_version)
        ):
            return Route(CHAMPION, champion, None, route.rollout_id)
        if route.shadow_version and not self.loaded(route.shadow_version):
            return replace(route, shadow_version=None)
        return route

    def refresh(self) -> None:
        """Re-read the state now (after this process changed it)."""
        self.router.refresh()

    def readiness(self) -> dict[str, Any]:
        """What this process serves: each version the state names, and whether this process
        has it loaded (``loaded``: None when this router does not know, without `loaded`).
        A challenger takes this process's customers only once it is loaded here. From
        memory: no store or model call."""
        versions = self.router.served().versions()
        return {
            "pid": os.getpid(),
            "versions": {
                variant: {
                    "version": version,
                    "loaded": self.loaded(version) if self.loaded is not None else None,
                }
                for variant, version in versions.items()
            },
        }
