"""The scoring routes answer ahead of BentoML's stack (hearth.serving.public); everything else
still reaches BentoML, and the FastAPI app it mounts."""

from __future__ import annotations

import os
from typing import Any

import bentoml
from starlette.testclient import TestClient

from bentos.hop import serve_public_first
from hearth.serving.http import HttpPolicy, create_app
from tests.unit.test_internal_hop import Seen

KEY = "k-123"


def _no_gateway() -> Any:
    raise AssertionError("a refused request never reaches the gateway")


PUBLIC = create_app(_no_gateway, lambda: HttpPolicy(KEY, max_payload_bytes=4096))


@serve_public_first(PUBLIC)
@bentoml.asgi_app(PUBLIC, path="/")
@bentoml.service
class Front:
    """A service whose whole HTTP API is the mounted app, as the monolith's and gateway's."""


Front.add_asgi_middleware(Seen)


def test_scoring_routes_skip_bentomls_stack_and_the_rest_reaches_it(
    bentoml_app_metrics: None,
) -> None:
    Seen.paths.clear()
    with TestClient(Front.to_asgi()) as client:  # the app a BentoML worker serves
        refused = client.post("/predict", json={})
        assert refused.status_code == 401 and "X-API-Key" in refused.json()["error"]
        assert refused.headers["X-Hearth-Worker"] == str(os.getpid())
        invalid = client.post("/predict_batch", json={"x": 1}, headers={"X-API-Key": KEY})
        assert invalid.status_code == 422 and invalid.json()["problems"]
        assert client.post("/feedback", content=b"{", headers={"X-API-Key": KEY}).status_code == 400
        # Everything else is BentoML's, or the mounted app's through BentoML's stack.
        assert client.get("/livez").status_code == 200
        assert "/predict" in client.get("/openapi.json").json()["paths"]
        assert client.get("/predict").status_code == 405  # FastAPI's answer: POST only
    assert Seen.paths == ["/livez", "/openapi.json", "/predict"]
