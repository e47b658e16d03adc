"""Which model variant scores a transaction.

For now every transaction goes to the champion. The rollout issue replaces `ChampionRouter`
with a sticky A/B router (hash of the customer id and a salt against the rollout weights);
the gateway only depends on the `Router` protocol.
"""

from __future__ import annotations

from typing import Protocol

from hearth.features.online import Transaction

CHAMPION, CHALLENGER = "champion", "challenger"


class Router(Protocol):
    def route(self, txn: Transaction) -> str:
        """The variant (a name the model pool serves) that scores `txn`."""
        ...


class ChampionRouter:
    """Every transaction to the champion."""

    def route(self, txn: Transaction) -> str:
        return CHAMPION
