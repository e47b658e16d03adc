"""Features service: the online store behind an internal API (microservices topology)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import bentoml
from bentoml.exceptions import BentoMLException

from bentos.hop import serve_internal_first
from bentos.images import cpu_image
from bentos.openapi30 import openapi30
from bentos.telemetry import service_tracing, start_telemetry
from hearth.features.online import InvalidTransaction
from hearth.features.store_base import StoreError
from hearth.serving import graph, limits
from hearth.serving.dependencies import OffLoop, observe_from_loop
from hearth.serving.errors import Unavailable
from hearth.serving.internal import features_app
from hearth.serving.schemas import FeatureRow

# The gateway's hop: /internal/observe and /internal/ready (hearth.serving.internal).
internal = features_app(
    lambda: bentoml.get_current_service().store.get(),
    lambda: bentoml.get_current_service().store.ready,
)


# An internal service: the gateway already logs every request, so no access-log line here
# (formatting one cost ~8% of this service's CPU in `hearth bench`'s profile). The gateway's
# hop answers ahead of BentoML's request stack (hearth.serving.internal).
@openapi30  # /docs.json as valid OpenAPI 3.0
@serve_internal_first(internal)
@bentoml.service(
    image=cpu_image(),
    traffic={"timeout": 30},
    logging={"access": {"enabled": False}},
    tracing=service_tracing(),
)
class Features:
    """Per-customer state: features of a transaction from the state before it."""

    def __init__(self) -> None:
        settings = graph.context().settings
        start_telemetry(settings, "features")
        self.store = graph.feature_store(settings)
        self.calls = OffLoop("feature-store")  # what may wait, in threads with a timeout

    def __is_ready__(self) -> bool:
        return self.store.ready

    # The same as /internal/observe, as a BentoML API for other clients, on the same path:
    # on the event loop as far as the store goes without waiting, the rest in a thread
    # (SQLite's busy timeout), Redis awaited on the loop (`observe_from_loop`).
    @bentoml.api
    async def observe(self, transactions: list[dict[str, Any]]) -> list[FeatureRow]:
        # Checked as the hop checks them (hearth.serving.limits): 413/422, never a 500.
        try:
            txns = limits.transactions(transactions, limits.default_limits())
            return await observe_from_loop(self.calls, Unavailable, self.store.get(), txns)
        except limits.Refused as exc:
            raise BentoMLException(exc.message(), error_code=HTTPStatus(exc.status)) from None
        except InvalidTransaction as exc:  # the store's own check
            raise BentoMLException(str(exc), error_code=HTTPStatus(422)) from None
        except (Unavailable, StoreError) as exc:  # the store's trouble, not the client's
            raise BentoMLException(str(exc), error_code=HTTPStatus(503)) from None

    @bentoml.api
    def ready(self) -> bool:
        return self.store.ready
