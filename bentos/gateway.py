"""Gateway service (microservices topology): the HTTP API, calling Features and Model.

Both run as their own processes under `bentoml serve`, or elsewhere when
HEARTH_FEATURES_URL / HEARTH_MODEL_URL name them (then `bentoml serve` starts neither).
"""

from __future__ import annotations

from typing import Any

import bentoml

from bentos import rollout_admin
from bentos.features import Features
from bentos.images import cpu_image
from bentos.model import Model
from bentos.openapi30 import openapi30
from bentos.telemetry import service_tracing, start_telemetry
from hearth.serving import graph
from hearth.serving.bentoml_internals import remote_runner_mapping
from hearth.serving.http import HttpPolicy, create_app
from hearth.serving.workers import WorkerReadiness, configured_workers

app = create_app(
    lambda: bentoml.get_current_service().gateway,
    lambda: bentoml.get_current_service().policy,
    lambda: bentoml.get_current_service().admin,
)
_urls = graph.remote_urls()


def _address(dependency: Any) -> str:
    """Where a dependency listens: its configured URL (HEARTH_FEATURES_URL/MODEL_URL), else
    the address `bentoml serve` gave it, from the runner mapping `bentoml.depends` reads.

    The gateway calls it over `hearth.serving.internal`, not through BentoML's proxy, which
    is therefore never created (see hearth.serving.internal for why).
    """
    if dependency.url:
        return str(dependency.url)
    mapping = remote_runner_mapping()
    name = dependency.on.name
    if name not in mapping:
        raise RuntimeError(
            f"no address for the {name} service: run `bentoml serve bentos.gateway:Gateway` "
            f"(which starts it) or set HEARTH_{name.upper()}_URL"
        )
    return mapping[name]


@openapi30  # /docs.json as valid OpenAPI 3.0
@bentoml.asgi_app(app, path="/")
@bentoml.service(
    image=cpu_image(),
    traffic={"timeout": 30},
    tracing=service_tracing(),
    workers=configured_workers(),  # `hearth serve --workers N`: gateways; features, model: 1
)
class Gateway:
    """POST /predict, /predict_batch, /feedback, /admin/…; /readyz once store and model load."""

    features = bentoml.depends(Features, url=_urls.get("features"))
    model = bentoml.depends(Model, url=_urls.get("model"))

    def __init__(self) -> None:
        ctx = graph.context()
        start_telemetry(ctx.settings, "gateway")
        self.policy = HttpPolicy.from_settings(ctx.settings)
        # Class attributes: the `Dependency` declarations themselves, not BentoML proxies.
        features, model = _address(type(self).features), _address(type(self).model)
        self.gateway, self.clients = graph.microservices_gateway(ctx, features, model)
        self.admin = graph.admin(self.gateway, rollout_admin.controls(ctx))
        self.readiness = WorkerReadiness("gateway")

    @bentoml.on_startup
    async def publish_readiness(self) -> None:
        self.readiness.start(self.gateway.ready)  # hearth_worker_ready, for N workers

    @bentoml.on_shutdown
    async def close_clients(self) -> None:
        await self.readiness.stop()
        for client in self.clients:
            await client.close()
        await self.gateway.close()  # what the prediction log still buffers is written

    async def __is_ready__(self) -> bool:
        return await self.gateway.ready()
