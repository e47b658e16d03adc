"""Features service: the online store behind two internal APIs (microservices topology)."""

from __future__ import annotations

from typing import Any

import bentoml

from bentos.images import cpu_image
from hearth.features.online import Transaction
from hearth.serving import graph
from hearth.serving.gateway import observe_rows
from hearth.serving.schemas import FeatureRow


@bentoml.service(image=cpu_image(), traffic={"timeout": 30})
class Features:
    """Per-customer state: features of a transaction from the state before it."""

    def __init__(self) -> None:
        self.store = graph.feature_store(graph.context().settings)

    def __is_ready__(self) -> bool:
        return self.store.ready

    @bentoml.api
    def observe(self, transactions: list[dict[str, Any]]) -> list[FeatureRow]:
        txns = [Transaction.from_mapping(t) for t in transactions]
        return observe_rows(self.store.get(), txns)

    @bentoml.api
    def ready(self) -> bool:
        return self.store.ready
