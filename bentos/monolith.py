"""Monolith: one service with the store, the router and the model pool in-process."""

from __future__ import annotations

import bentoml

from bentos.http_service import HttpService, serves_http_api
from bentos.images import cuda_image
from bentos.telemetry import service_tracing, start_telemetry
from hearth.serving import graph
from hearth.serving.workers import configured_workers


@serves_http_api  # at /, POST /predict… ahead of BentoML's stack, /docs.json in OpenAPI 3.0
@bentoml.service(
    image=cuda_image(),
    resources={"gpu": 1},
    traffic={"timeout": 30},
    tracing=service_tracing(),
    workers=configured_workers(),  # `hearth serve --workers N`
)
class Monolith(HttpService):
    """POST /predict, /predict_batch, /feedback, /admin/…; /readyz once store and model load."""

    def __init__(self) -> None:
        ctx = graph.context()
        start_telemetry(ctx.settings, "monolith")
        gateway, _, _ = graph.monolith(ctx)
        self._serve(ctx, "monolith", gateway)
