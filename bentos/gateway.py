"""Gateway service (microservices topology): the HTTP API, calling Features and Model.

Both run as their own processes under `bentoml serve`, or elsewhere when
HEARTH_FEATURES_URL / HEARTH_MODEL_URL name them (then `bentoml serve` starts neither).
"""

from __future__ import annotations

import sys
from typing import Any

import bentoml

from bentos.features import Features
from bentos.images import cpu_image
from bentos.model import Model
from bentos.telemetry import service_tracing, start_telemetry
from hearth.serving import graph
from hearth.serving.http import HttpPolicy, create_app

app = create_app(
    lambda: bentoml.get_current_service().gateway,
    lambda: bentoml.get_current_service().policy,
    lambda: bentoml.get_current_service().admin,
)
_urls = graph.remote_urls()


def _refresh_sessions_by_age_only(proxy: Any) -> None:
    """Work around BentoML 1.4.40: its async client closes its HTTP session every 100
    requests while others are still in flight on it, failing them (a 503 here) under
    concurrency. Sessions are then renewed by age only (every 5 minutes)."""
    manager = getattr(getattr(proxy, "to_async", None), "_session_manager", None)
    if manager is not None and hasattr(manager, "max_requests"):
        manager.max_requests = sys.maxsize


@bentoml.asgi_app(app, path="/")
@bentoml.service(image=cpu_image(), traffic={"timeout": 30}, tracing=service_tracing())
class Gateway:
    """POST /predict, /predict_batch, /feedback, /admin/…; /readyz once store and model load."""

    features = bentoml.depends(Features, url=_urls.get("features"))
    model = bentoml.depends(Model, url=_urls.get("model"))

    def __init__(self) -> None:
        ctx = graph.context()
        start_telemetry(ctx.settings, "gateway")
        self.policy = HttpPolicy.from_settings(ctx.settings)
        self.gateway = graph.microservices_gateway(ctx, self.features, self.model)
        self.admin = graph.admin(ctx, self.gateway)
        for proxy in (self.features, self.model):
            _refresh_sessions_by_age_only(proxy)

    async def __is_ready__(self) -> bool:
        return await self.gateway.ready()
