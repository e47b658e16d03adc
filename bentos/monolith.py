"""Monolith: one service with the store, the router and the model pool in-process."""

from __future__ import annotations

import bentoml

from bentos.hop import serve_public_first
from bentos.http_service import HttpService, http_app
from bentos.images import cuda_image
from bentos.openapi30 import openapi30
from bentos.telemetry import service_tracing, start_telemetry
from hearth.serving import graph
from hearth.serving.workers import configured_workers

app = http_app()


@openapi30  # /docs.json as valid OpenAPI 3.0
@serve_public_first(app)  # POST /predict, /predict_batch, /feedback: ahead of BentoML's stack
@bentoml.asgi_app(app, path="/")
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
