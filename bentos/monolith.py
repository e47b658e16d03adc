"""Monolith: one service with the store, the router and the model pool in-process."""

from __future__ import annotations

import bentoml

from bentos import rollout_admin
from bentos.images import cuda_image
from bentos.openapi30 import openapi30
from bentos.telemetry import service_tracing, start_telemetry
from hearth.serving import graph
from hearth.serving.http import HttpPolicy, create_app
from hearth.serving.workers import WorkerReadiness, configured_workers

app = create_app(
    lambda: bentoml.get_current_service().gateway,
    lambda: bentoml.get_current_service().policy,
    lambda: bentoml.get_current_service().admin,
)


@openapi30  # /docs.json as valid OpenAPI 3.0
@bentoml.asgi_app(app, path="/")
@bentoml.service(
    image=cuda_image(),
    resources={"gpu": 1},
    traffic={"timeout": 30},
    tracing=service_tracing(),
    workers=configured_workers(),  # `hearth serve --workers N`
)
class Monolith:
    """POST /predict, /predict_batch, /feedback, /admin/…; /readyz once store and model load."""

    def __init__(self) -> None:
        ctx = graph.context()
        start_telemetry(ctx.settings, "monolith")
        self.policy = HttpPolicy.from_settings(ctx.settings)
        self.gateway, _, _ = graph.monolith(ctx)
        self.admin = graph.admin(self.gateway, rollout_admin.controls(ctx))
        self.readiness = WorkerReadiness("monolith")

    @bentoml.on_startup
    async def publish_readiness(self) -> None:
        self.readiness.start(self.gateway.ready)  # hearth_worker_ready, for N workers

    @bentoml.on_shutdown
    async def close_gateway(self) -> None:
        await self.readiness.stop()
        await self.gateway.close()  # what the prediction log still buffers is written

    async def __is_ready__(self) -> bool:
        return await self.gateway.ready()
