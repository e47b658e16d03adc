"""The internal hop answers ahead of BentoML's stack; everything else still reaches BentoML."""

from __future__ import annotations

from typing import Any, ClassVar

import bentoml
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bentos.hop import serve_internal_first
from hearth.serving.auth import INTERNAL_TOKEN_HEADER
from hearth.serving.internal import InternalApp, Reply, internal_first
from hearth.serving.internal_client import PREFIX

TOKEN = {INTERNAL_TOKEN_HEADER: "t0ken"}


async def _internal(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"internal {request.url.path}")


async def _app(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"app {request.url.path}")


INTERNAL = Starlette(routes=[Route(PREFIX + "/ping", _internal)])


def test_internal_paths_go_to_the_internal_app_and_the_rest_to_the_app() -> None:
    app = Starlette(routes=[Route("/{path:path}", _app)])
    with TestClient(internal_first(app, INTERNAL, token="t0ken"), headers=TOKEN) as client:
        assert client.get(f"{PREFIX}/ping").text == f"internal {PREFIX}/ping"
        assert client.get("/predict").text == "app /predict"
        # Only the prefix as a path segment counts: /internalx is the app's.
        assert client.get(f"{PREFIX}x/ping").text == f"app {PREFIX}x/ping"
        assert client.get(f"{PREFIX}/nope").status_code == 404  # the internal app's 404


class Seen:
    """An ASGI middleware inside BentoML's stack: records every path that reaches it."""

    paths: ClassVar[list[str]] = []

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


@serve_internal_first(INTERNAL)
@bentoml.service
class Toy:
    @bentoml.api
    def hello(self, name: str) -> str:
        return f"hello {name}"


Toy.add_asgi_middleware(Seen)


def test_a_bentoml_service_keeps_its_apis_and_answers_the_hop_first(
    monkeypatch: pytest.MonkeyPatch,
    bentoml_app_metrics: None,
) -> None:
    assert isinstance(Toy, bentoml.Service)
    monkeypatch.setenv("HEARTH_INTERNAL_TOKEN", "t0ken")  # what the service requires
    with TestClient(Toy.to_asgi()) as client:  # the app a BentoML worker serves
        # Without the internal token neither the hop nor the APIs answer; the probes do.
        assert client.get(f"{PREFIX}/ping").status_code == 401
        assert client.post("/hello", json={"name": "x"}).status_code == 401
        assert client.get("/livez").status_code == 200
        client.headers.update(TOKEN)
        assert client.get(f"{PREFIX}/ping").text == f"internal {PREFIX}/ping"
        # BentoML's own stack still serves its APIs.
        assert client.post("/hello", json={"name": "hearth"}).text == "hello hearth"
    # The hop never entered BentoML's stack; the API call did.
    assert Seen.paths == ["/livez", "/hello"]


def test_internal_app_routes_by_method_and_path_and_reads_the_whole_body() -> None:
    async def echo(body: bytes) -> Reply:
        return Reply(200, body[::-1], "application/json", (("X-Seen", str(len(body))),))

    app = InternalApp({("POST", f"{PREFIX}/echo"): echo})
    with TestClient(app) as client:
        # A body sent in chunks arrives whole.
        r = client.post(f"{PREFIX}/echo", content=iter([b"ab", b"cd", b"ef"]))
        assert (r.status_code, r.content, r.headers["x-seen"]) == (200, b"fedcba", "6")
        assert r.headers["content-type"] == "application/json"
        assert client.get(f"{PREFIX}/echo").status_code == 405
        missing = client.post(f"{PREFIX}/nope", content=b"")
        assert missing.status_code == 404 and f"{PREFIX}/nope" in missing.text
