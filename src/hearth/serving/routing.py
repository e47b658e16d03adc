"""Which model variant, and which model version, scores a transaction.

The gateway depends only on the `Router` protocol. `ChampionRouter` sends everything to the
pool's champion (no rollout state: unit tests, a bare model). `RolloutRouter` is the thin
adapter over `hearth.traffic.follower.Follower`, which holds the sticky assignment and the
shared rollout state (re-read at most every `refresh_interval`, so a rollback written by any
process reaches every gateway replica within a second).

The shared state names the champion's version too: every route of a `RolloutRouter` names
the version that answers (None only before the first champion is adopted).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hearth.config import CHAMPION
from hearth.features.online import Transaction
from hearth.traffic.assignment import route_for
from hearth.traffic.follower import Follower


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


class RolloutRouter:
    """Routes by the shared state: the champion's version, sticky canary/A-B split, shadow
    copies. The snapshot is in memory (re-read at most every `refresh_interval`)."""

    def __init__(self, router: Follower) -> None:
        self.router = router

    def route(self, txn: Transaction) -> Routed:
        served = self.router.served()
        state = served.running
        if state is None:
            version = served.champion_version
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
        self.router.refresh()
