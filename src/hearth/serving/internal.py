"""The hop between Hearth's services: plain JSON over pooled keep-alive connections.

The features and model services each answer a small Starlette app under `PREFIX`; the
gateway calls it with one aiohttp session per service (created in the server's event loop,
connections kept alive and reused). This path does only what a hop needs: one POST whose
body pydantic-core parses and validates in one pass.

`internal_first` puts that app in front of the service's whole BentoML app, on the same
port: a hop never enters BentoML's middleware stack (request context, Prometheus traffic
metrics, OpenTelemetry, timeout, routing over every API), which cost more CPU than the
hop's own work (`hearth bench`'s profile: ~65 % of the model service's time under load).
BentoML's API client and IO descriptors are not on this path either (~6 ms of CPU per hop).

Trace context (``traceparent``, and ``baggage`` with the request id) travels in the headers;
with tracing on, `internal_first` wraps the internal app in OpenTelemetry's ASGI middleware
on BentoML's tracer provider, so the trace continues in the service as it did before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlparse

import aiohttp
import pydantic_core
from pydantic import TypeAdapter, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hearth.features.online import Transaction
from hearth.observability import tracing
from hearth.serving.batching import Batcher
from hearth.serving.errors import Unavailable
from hearth.serving.gateway import observe_rows
from hearth.serving.schemas import FeatureRow, Score, ScoreItem

log = logging.getLogger(__name__)

PREFIX = "/internal"
OBSERVE, READY = "/observe", "/ready"
PREDICT, PREDICT_CHALLENGER = "/predict", "/predict_challenger"
JSON = "application/json"
# Connections per target service: enough for the gateway's concurrency (c=128 in the bench)
# without a queue in the pool, bounded so a flood cannot exhaust file descriptors.
MAX_CONNECTIONS = 256

_ROWS = TypeAdapter(list[FeatureRow])
_ITEMS = TypeAdapter(list[ScoreItem])
_SCORES = TypeAdapter(list[Score])


# -- client (gateway) -------------------------------------------------------------------------
class InternalError(RuntimeError):
    """A service answered with a status other than 200."""


class InternalClient:
    """One service's internal API, called over a pooled aiohttp session.

    `url`: ``http(s)://host:port`` (HEARTH_FEATURES_URL / HEARTH_MODEL_URL), or the address
    `bentoml serve` gave a local dependency: ``tcp://host:port`` or a ``file://`` Unix socket.
    """

    def __init__(self, url: str, max_connections: int = MAX_CONNECTIONS) -> None:
        self.url = url
        self.base, self.socket_path = _target(url)
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        # Made on first use: a session belongs to the event loop that serves requests.
        if self._session is None or self._session.closed:
            connector: aiohttp.BaseConnector
            if self.socket_path:
                connector = aiohttp.UnixConnector(self.socket_path, limit=self.max_connections)
            else:
                connector = aiohttp.TCPConnector(limit=self.max_connections)
            # No timeout here: callers bound each call (asyncio.wait_for → 503 + Retry-After).
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    async def post(self, path: str, body: bytes) -> bytes:
        """POST a JSON body to PREFIX + path; the response body (InternalError unless 200)."""
        headers = {"content-type": JSON, **tracing.propagation_headers()}
        async with self._get_session().post(
            f"{self.base}{PREFIX}{path}", data=body, headers=headers
        ) as response:
            raw = await response.read()
            if response.status != 200:
                text = raw[:200].decode(errors="replace")
                raise InternalError(f"{self.url}{PREFIX}{path}: {response.status} {text}")
            return raw

    async def ok(self, path: str) -> bool:
        """Whether GET PREFIX + path answers 200."""
        async with self._get_session().get(f"{self.base}{PREFIX}{path}") as response:
            await response.read()
            return response.status == 200

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _target(url: str) -> tuple[str, str | None]:
    """(base URL, Unix socket path or None) of a service address."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return "http://localhost", unquote(parsed.path)
    if parsed.scheme == "tcp":
        return f"http://{parsed.netloc}", None
    return url.rstrip("/"), None


class FeaturesCalls:
    """The features service's internal API, for `RemoteFeatures`."""

    def __init__(self, client: InternalClient) -> None:
        self.client = client

    async def observe(self, transactions: list[dict[str, Any]]) -> list[FeatureRow]:
        raw = await self.client.post(OBSERVE, pydantic_core.to_json(transactions))
        return _ROWS.validate_json(raw)

    async def ready(self) -> bool:
        return await self.client.ok(READY)


class ModelCalls:
    """The model service's internal API (champion and challenger lanes), for `RemoteModel`."""

    def __init__(self, client: InternalClient) -> None:
        self.client = client

    async def predict(self, items: list[ScoreItem]) -> list[Score]:
        return _SCORES.validate_json(await self.client.post(PREDICT, _ITEMS.dump_json(items)))

    async def predict_challenger(self, items: list[ScoreItem]) -> list[Score]:
        raw = await self.client.post(PREDICT_CHALLENGER, _ITEMS.dump_json(items))
        return _SCORES.validate_json(raw)

    async def ready(self) -> bool:
        return await self.client.ok(READY)


# -- servers (features and model services) ----------------------------------------------------
def _unavailable(exc: Unavailable) -> Response:
    return Response(str(exc), 503, {"Retry-After": str(exc.retry_after_s)}, "text/plain")


def _bad_request(exc: Exception) -> Response:
    return Response(f"invalid body: {exc}", 400, media_type="text/plain")


def _ready_route(is_ready: Callable[[], bool]) -> Route:
    async def ready(_: Request) -> Response:
        return Response(status_code=200 if is_ready() else 503)

    return Route(PREFIX + READY, ready, methods=["GET"])


def features_app(get_store: Callable[[], Any], is_ready: Callable[[], bool]) -> Starlette:
    """POST /observe (transactions → feature rows, updating the store), GET /ready.

    `get_store` is looked up per request: the app is built at import time, the store later.
    """
    from hearth.features.store import StoreError

    async def observe(request: Request) -> Response:
        # async: a store read-modify-write takes ~0.1 ms, less than a worker thread's round trip.
        try:
            raw = pydantic_core.from_json(await request.body())
            txns = [Transaction.from_mapping(t) for t in raw]
        except (ValueError, KeyError, TypeError) as exc:
            return _bad_request(exc)
        try:
            rows = observe_rows(get_store(), txns)
        except Unavailable as exc:
            return _unavailable(exc)
        except StoreError as exc:
            log.warning("online store failed: %s", exc)
            return Response(str(exc), 503, {"Retry-After": "1"}, "text/plain")
        return Response(_ROWS.dump_json(rows), media_type=JSON)

    routes = [Route(PREFIX + OBSERVE, observe, methods=["POST"]), _ready_route(is_ready)]
    return Starlette(routes=routes)


def model_app(get_lane: Callable[[str], Batcher], is_ready: Callable[[], bool]) -> Starlette:
    """POST /predict and /predict_challenger (score items → scores, each in its own batching
    lane), GET /ready. `get_lane(path)` is looked up per request, as in `features_app`."""

    def lane_route(path: str) -> Route:
        async def predict(request: Request) -> Response:
            try:
                items = _ITEMS.validate_json(await request.body())
            except ValidationError as exc:
                return _bad_request(exc)
            try:
                scores = await get_lane(path).submit(items)
            except Unavailable as exc:
                return _unavailable(exc)
            return Response(_SCORES.dump_json(scores), media_type=JSON)

        return Route(PREFIX + path, predict, methods=["POST"])

    routes = [lane_route(PREDICT), lane_route(PREDICT_CHALLENGER), _ready_route(is_ready)]
    return Starlette(routes=routes)


# -- in front of BentoML ----------------------------------------------------------------------
def internal_first(app: ASGIApp, internal: ASGIApp, tracer_provider: Any = None) -> ASGIApp:
    """`app` (a service's BentoML app), except that HTTP requests under PREFIX go straight
    to `internal`. `tracer_provider`: trace those requests too (OpenTelemetry ASGI)."""
    if tracer_provider is not None:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        internal = OpenTelemetryMiddleware(internal, tracer_provider=tracer_provider)
    prefix = PREFIX + "/"

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(prefix):
            await internal(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch
