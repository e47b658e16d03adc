"""The features and model services answer only the gateway: the internal token, everywhere.

Their internal routes (`features_app`, `model_app`) and their BentoML APIs refuse a request
without the token (401) or with another one (403), before any handler runs; the probes stay
open; the gateway's client sends the token; the comparison is `hmac.compare_digest`'s.
(A real BentoML service behind `serve_internal_first`: test_internal_hop.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from hearth.serving import auth
from hearth.serving.auth import INTERNAL_TOKEN_HEADER
from hearth.serving.internal import InternalApp, Reply, features_app, internal_first, model_app
from hearth.serving.internal_client import PREFIX, InternalClient, InternalError
from tests.helpers import UvicornThread

TOKEN = "s3cret-internal-token"
CALLED: list[str] = []  # every handler or store that a request reached


def _store() -> Any:
    CALLED.append("store")
    raise AssertionError("a refused request reached the store")


def _lane(path: str) -> Any:
    CALLED.append(path)
    raise AssertionError("a refused request reached a model lane")


BENTOML_APP = Starlette(
    routes=[
        Route("/{path:path}", lambda r: PlainTextResponse(f"bentoml {r.url.path}"),
              methods=["GET", "POST"]),
    ]
)  # fmt: skip

SERVICES = {
    "features": features_app(_store, lambda: True),
    "model": model_app(_lane, lambda: True),
}
ROUTES = {"features": ["/observe"], "model": ["/predict", "/predict_challenger"]}


@pytest.fixture(params=sorted(SERVICES))
def service(request: pytest.FixtureRequest) -> Iterator[tuple[str, TestClient]]:
    app = internal_first(BENTOML_APP, SERVICES[request.param], token=TOKEN)
    CALLED.clear()
    with TestClient(app) as client:
        yield request.param, client
    assert CALLED == []


def test_internal_routes_refuse_a_missing_or_wrong_token(
    service: tuple[str, TestClient],
) -> None:
    name, client = service
    for route in ROUTES[name]:
        missing = client.post(PREFIX + route, content=b"[]")
        assert missing.status_code == 401
        assert missing.json() == {"error": f"missing {INTERNAL_TOKEN_HEADER} header"}
        for wrong in ({INTERNAL_TOKEN_HEADER: TOKEN[:-1]}, {"Authorization": "Bearer nope"}):
            r = client.post(PREFIX + route, content=b"[]", headers=wrong)
            assert r.status_code == 403
            assert r.json() == {"error": f"invalid {INTERNAL_TOKEN_HEADER}"}
    assert client.get(f"{PREFIX}/ready").status_code == 401  # even readiness: no free probe


def test_the_token_opens_the_routes_and_the_probes_need_none(
    service: tuple[str, TestClient],
) -> None:
    _, client = service
    assert client.get(f"{PREFIX}/ready", headers={INTERNAL_TOKEN_HEADER: TOKEN}).status_code == 200
    bearer = {"Authorization": f"Bearer {TOKEN}"}  # as BentoML's clients send a token
    assert client.get(f"{PREFIX}/ready", headers=bearer).status_code == 200
    # The service's BentoML APIs (here a stand-in app) are behind the same check…
    assert client.post("/observe", json=[]).status_code == 401
    assert client.post("/predict", json=[], headers=bearer).text == "bentoml /predict"
    # …but not the probes an orchestrator polls without a secret.
    for probe in ("/livez", "/readyz", "/healthz", "/metrics"):
        assert client.get(probe).text == f"bentoml {probe}"


def test_an_empty_configured_token_refuses_everything() -> None:
    app = internal_first(BENTOML_APP, SERVICES["features"], token="")
    with TestClient(app) as client:
        r = client.get(f"{PREFIX}/ready", headers={INTERNAL_TOKEN_HEADER: "anything"})
    assert r.status_code == 403 and "not configured" in r.json()["error"]


def test_the_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    app = internal_first(BENTOML_APP, SERVICES["model"], token=TOKEN)
    with TestClient(app) as client:
        client.get(f"{PREFIX}/ready", headers={INTERNAL_TOKEN_HEADER: "guess"})
    assert compared == [(b"guess", TOKEN.encode())]


async def _pong() -> Reply:
    return Reply(200, b"pong")


async def _echo(body: bytes) -> Reply:
    return Reply(200, body)


def test_the_gateways_client_sends_the_token() -> None:
    internal = InternalApp(
        {("POST", f"{PREFIX}/echo"): _echo, ("GET", f"{PREFIX}/ready"): lambda _: _pong()}
    )

    async def go(url: str) -> None:
        right, wrong = InternalClient(url, token=TOKEN), InternalClient(url, token="other")
        try:
            assert await right.post("/echo", b"[1]") == b"[1]"
            assert await right.ok("/ready")
            assert not await wrong.ok("/ready")
            with pytest.raises(InternalError, match="403"):
                await wrong.post("/echo", b"[1]")
        finally:
            await right.close()
            await wrong.close()

    with UvicornThread(internal_first(BENTOML_APP, internal, token=TOKEN)) as server:
        asyncio.run(go(server.url))
