"""What the two services that serve Hearth's HTTP API share: `Monolith` and `Gateway`.

Both serve `create_app`'s routes through a `hearth.serving.gateway.Gateway`, built in-process
(monolith) or over the features and model services (microservices); everything else about
them is the same, and is here: the HTTP policy, the admin API, the workers' readiness gauge,
/readyz, and closing at shutdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar

import bentoml
from fastapi import FastAPI

from bentos import rollout_admin
from bentos.hop import serve_public_first
from bentos.openapi30 import openapi30
from hearth.config import HearthContext
from hearth.serving import graph
from hearth.serving.gateway import Gateway
from hearth.serving.http import HttpPolicy, create_app
from hearth.serving.workers import WorkerReadiness

S = TypeVar("S")


class _Client(Protocol):
    async def close(self) -> None: ...


def http_app() -> FastAPI:
    """The HTTP API, over the running service's gateway, policy and admin (an `HttpService`)."""
    return create_app(
        lambda: bentoml.get_current_service().gateway,
        lambda: bentoml.get_current_service().policy,
        lambda: bentoml.get_current_service().admin,
    )


def serves_http_api(service: S) -> S:
    """A decorator, above `@bentoml.service`: the service serves the HTTP API (`http_app`),
    mounted at /, with /docs.json as valid OpenAPI 3.0 (`openapi30`), and POST /predict,
    /predict_batch and /feedback answered ahead of BentoML's stack (`serve_public_first`)."""
    app = http_app()
    return openapi30(serve_public_first(app)(bentoml.asgi_app(app, path="/")(service)))


class HttpService:
    """The base of a BentoML service that serves the HTTP API: its `__init__` builds the
    gateway and calls `_serve`."""

    def _serve(
        self, ctx: HearthContext, role: str, gateway: Gateway, clients: Sequence[_Client] = ()
    ) -> None:
        """Serve `gateway` as `role` (monolith | gateway); `clients` are closed after it."""
        self.policy = HttpPolicy.from_settings(ctx.settings)
        self.gateway, self.clients = gateway, clients
        self.admin = graph.admin(gateway, rollout_admin.controls(ctx))
        self.readiness = WorkerReadiness(role)

    @bentoml.on_startup
    async def publish_readiness(self) -> None:
        self.readiness.start(self.gateway.ready)  # hearth_worker_ready, for N workers

    @bentoml.on_shutdown
    async def close_gateway(self) -> None:
        await self.readiness.stop()
        for client in self.clients:
            await client.close()
        await self.gateway.close()  # what the prediction log still buffers is written

    async def __is_ready__(self) -> bool:
        return await self.gateway.ready()
