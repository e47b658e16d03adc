"""Gateway service (microservices topology): the HTTP API, calling Features and Model.

Both run as their own processes under `bentoml serve`, or elsewhere when
HEARTH_FEATURES_URL / HEARTH_MODEL_URL name them (then `bentoml serve` starts neither).
"""

from __future__ import annotations

from typing import Any

import bentoml

from bentos.features import Features
from bentos.http_service import HttpService, serves_http_api
from bentos.images import cpu_image
from bentos.model import Model
from bentos.telemetry import service_tracing, start_telemetry
from hearth.serving import graph
from hearth.serving.bentoml_internals import remote_runner_mapping
from hearth.serving.workers import configured_workers

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


@serves_http_api  # at /, POST /predict… ahead of BentoML's stack, /docs.json in OpenAPI 3.0
@bentoml.service(
    image=cpu_image(),
    traffic={"timeout": 30},
    tracing=service_tracing(),
    workers=configured_workers(),  # `hearth serve --workers N`: gateways; features, model: 1
)
class Gateway(HttpService):
    """POST /predict, /predict_batch, /feedback, /admin/…; /readyz once store and model load."""

    features = bentoml.depends(Features, url=_urls.get("features"))
    model = bentoml.depends(Model, url=_urls.get("model"))

    def __init__(self) -> None:
        ctx = graph.context()
        start_telemetry(ctx.settings, "gateway")
        # Class attributes: the `Dependency` declarations themselves, not BentoML proxies.
        features, model = _address(type(self).features), _address(type(self).model)
        gateway, clients = graph.microservices_gateway(ctx, features, model)
        self._serve(ctx, "gateway", gateway, clients)
