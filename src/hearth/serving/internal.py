"""The hop between Hearth's services: plain JSON over pooled keep-alive connections.

The features and model services each answer a bare ASGI app under `PREFIX`; the
gateway calls it over a pool of keep-alive connections per service (`internal_client`: a
few lines on asyncio and httptools, opened in the server's event loop and reused). This
path does only what a hop needs: one POST whose body pydantic-core parses and validates in
one pass.

`internal_first` puts that app in front of the service's whole BentoML app, on the same
port: a hop never enters BentoML's middleware stack (request context, Prometheus traffic
metrics, OpenTelemetry, timeout, routing over every API). In `hearth bench`'s profile
under load, that stack and the Starlette app it mounted took ~65 % of the model service's
samples, the handler itself ~6 %.
BentoML's API client and IO descriptors are not on this path either (~6 ms of CPU per hop).

Every request to such a service, on the hop or on its BentoML APIs, must carry the shared
internal token (``X-Internal-Token``, HEARTH_INTERNAL_TOKEN; `internal_first` checks it in
constant time before anything else runs); only the probes in `OPEN_PATHS` answer without.

Every request is checked as the gateway checks its own (`hearth.serving.limits`): a body or
a batch over the limit gets 413, a body that is not JSON 400, a transaction outside the
input domain or a non-finite feature 422 naming the field (JSON, as the gateway answers);
anything unexpected a 500 that is logged with its trace. Nothing is trusted for having
come from a gateway.

Trace context (``traceparent``, and ``baggage`` with the request id) travels in the headers;
with tracing on, `internal_first` wraps the internal app in OpenTelemetry's ASGI middleware
on BentoML's tracer provider, so the trace continues in the service as it did before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pydantic_core
from pydantic import TypeAdapter, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth.features.online import InvalidTransaction
from hearth.observability import tracing
from hearth.serving.auth import (
    AuthError,
    check_internal_token,
    presented_internal_token,
)
from hearth.serving.batching import Batcher
from hearth.serving.dependencies import OffLoop, observe_from_loop
from hearth.serving.errors import Unavailable
from hearth.serving.internal_client import (
    JSON,
    OBSERVE,
    PREDICT,
    PREDICT_CHALLENGER,
    PREFIX,
    READY,
    VERSIONS,
)
from hearth.serving.limits import (
    InternalLimits,
    Refused,
    default_limits,
    read_capped,
    score_items,
    transactions_json,
)
from hearth.serving.schemas import FeatureRow, Score, ScoreItem

log = logging.getLogger(__name__)

# BentoML's probes and metrics: a service's only paths that answer without the internal token
# (an orchestrator's health checks carry no secret; the metrics hold no customer data).
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics"})

_ROWS = TypeAdapter(list[FeatureRow])
_ITEMS = TypeAdapter(list[ScoreItem])
_SCORES = TypeAdapter(list[Score])


# -- servers (features and model services) ----------------------------------------------------
@dataclass(frozen=True)
class Reply:
    """What an internal route answers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[bytes], Awaitable[Reply]]


class InternalApp:
    """A few routes as a bare ASGI app: (method, path) → handler of the request body.

    No framework between uvicorn and the handler: Starlette's router, request object and
    exception middlewares were the largest part of the model service's own CPU per request
    under load (`hearth bench`'s profile), for routes that need none of them.
    """

    def __init__(
        self,
        routes: dict[tuple[str, str], Handler],
        limits: Callable[[], InternalLimits] = default_limits,
    ) -> None:
        self.routes = routes
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # nothing to start: the service owns the state
            await _lifespan(receive, send)
            return
        handler = self.routes.get((scope["method"], scope["path"]))
        if handler is not None:
            reply = await _answer(handler, receive, self.limits().max_body_bytes, scope["path"])
        elif any(path == scope["path"] for _, path in self.routes):
            reply = Reply(405, b"method not allowed")
        else:
            reply = Reply(404, f"no internal route {scope['path']}".encode())
        await send_reply(send, reply)


async def send_reply(send: Send, reply: Reply) -> None:
    headers = [
        (b"content-type", reply.content_type.encode()),
        (b"content-length", str(len(reply.body)).encode()),
        *((k.encode(), v.encode()) for k, v in reply.headers),
    ]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def body_chunks(receive: Receive) -> Callable[[], Awaitable[bytes | None]]:
    """The body's chunks from `receive`, then None (for `read_capped`)."""
    done = False

    async def next_chunk() -> bytes | None:
        nonlocal done
        if done:
            return None
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("the caller went away")
        done = not message.get("more_body", False)
        return bytes(message.get("body", b""))

    return next_chunk


async def _answer(handler: Handler, receive: Receive, limit: int, path: str) -> Reply:
    """`handler`'s reply to the body (capped at `limit`): a refusal as JSON with its status,
    an unexpected error as a logged 500 carrying the request id."""
    try:
        return await handler(await read_capped(body_chunks(receive), limit))
    except Refused as exc:
        return Reply(exc.status, exc.to_json(), JSON)
    except ConnectionResetError:
        raise
    except Exception:
        request_id = tracing.baggage_request_id() or ""
        log.exception("internal %s failed (request %s)", path, request_id or "unknown")
        error = "internal error; the service's log has its trace"
        return Reply(500, pydantic_core.to_json({"error": error, "request_id": request_id}), JSON)


def _unavailable(exc: Unavailable) -> Reply:
    return Reply(503, str(exc).encode(), headers=(("Retry-After", str(exc.retry_after_s)),))


def _invalid(exc: ValidationError) -> Refused:
    """400 for a body that is not JSON, else 422 naming each invalid field."""
    errors = exc.errors()
    if any(e["type"] == "json_invalid" for e in errors):
        return Refused(400, f"invalid JSON: {errors[0]['msg']}")
    problems = [(".".join(str(p) for p in e["loc"]), e["msg"]) for e in errors]
    return Refused(422, "invalid items", problems[:20])


def _ready(is_ready: Callable[[], bool]) -> Handler:
    async def ready(_: bytes) -> Reply:
        return Reply(200 if is_ready() else 503)

    return ready


def features_app(
    get_store: Callable[[], Any],
    is_ready: Callable[[], bool],
    limits: Callable[[], InternalLimits] = default_limits,
) -> InternalApp:
    """POST /observe (transactions → feature rows, updating the store), GET /ready.

    `get_store` is looked up per request: the app is built at import time, the store later.
    Transactions are checked as the gateway checks them (`limits`).
    """
    from hearth.features.store import StoreError  # lazy: pandas, for the features service only

    # What could wait (SQLite's busy timeout, a slow Redis) runs off the event loop, with a
    # timeout, so the loop keeps answering the other requests meanwhile (`observe_from_loop`).
    calls = OffLoop("feature-store")

    async def observe(body: bytes) -> Reply:
        txns = transactions_json(body, limits())
        try:
            rows = await observe_from_loop(calls, Unavailable, get_store(), txns)
        except InvalidTransaction as exc:  # the store's own check
            raise Refused(422, "invalid transactions", exc.problems) from None
        except Unavailable as exc:
            return _unavailable(exc)
        except StoreError as exc:
            log.warning("online store failed: %s", exc)
            return Reply(503, str(exc).encode(), headers=(("Retry-After", "1"),))
        return Reply(200, _ROWS.dump_json(rows), JSON)

    return InternalApp(
        {("POST", PREFIX + OBSERVE): observe, ("GET", PREFIX + READY): _ready(is_ready)}, limits
    )


def model_app(
    get_lane: Callable[[str], Batcher],
    is_ready: Callable[[], bool],
    loaded_versions: Callable[[], list[str]] = list,
    limits: Callable[[], InternalLimits] = default_limits,
) -> InternalApp:
    """POST /predict and /predict_challenger (score items → scores, each in its own batching
    lane), GET /ready, GET /versions (what `loaded_versions` says: the gateway routes to a
    challenger only once it is loaded). `get_lane(path)` is looked up per request, as in
    `features_app`; items are checked by `limits` (count, finite features)."""

    async def versions(_: bytes) -> Reply:
        return Reply(200, pydantic_core.to_json(loaded_versions()), JSON)

    def lane(path: str) -> Handler:
        async def predict(body: bytes) -> Reply:
            try:
                items = score_items(_ITEMS.validate_json(body), limits())
            except ValidationError as exc:
                raise _invalid(exc) from None
            try:
                scores = await get_lane(path).submit(items)
            except Unavailable as exc:
                return _unavailable(exc)
            return Reply(200, _SCORES.dump_json(scores), JSON)

        return predict

    return InternalApp(
        {
            ("POST", PREFIX + PREDICT): lane(PREDICT),
            ("POST", PREFIX + PREDICT_CHALLENGER): lane(PREDICT_CHALLENGER),
            ("GET", PREFIX + READY): _ready(is_ready),
            ("GET", PREFIX + VERSIONS): versions,
        },
        limits,
    )


# -- in front of BentoML ----------------------------------------------------------------------
def internal_first(
    app: ASGIApp, internal: ASGIApp, tracer_provider: Any = None, *, token: str
) -> ASGIApp:
    """`app` (a service's BentoML app), except that HTTP requests under PREFIX go straight
    to `internal`. `tracer_provider`: trace those requests too (OpenTelemetry ASGI).

    Every HTTP request but the probes (`OPEN_PATHS`) must carry `token`, the internal token:
    401 without it, 403 with another (an empty `token` refuses them all), as JSON. The
    body of a request to the BentoML app (its APIs) is capped as the internal routes' are
    (413), before BentoML reads it whole.
    """
    limits = getattr(internal, "limits", default_limits)
    internal = traced(internal, tracer_provider)
    prefix = PREFIX + "/"

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            try:
                check_internal_token(presented_internal_token(scope["headers"]), token)
            except AuthError as exc:
                await _refuse(send, exc)
                return
        if scope["type"] == "http" and scope["path"].startswith(prefix):
            await internal(scope, receive, send)
            return
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            try:
                body = await read_capped(body_chunks(receive), limits().max_body_bytes)
            except Refused as exc:
                await send_reply(send, Reply(exc.status, exc.to_json(), JSON))
                return
            receive = _replay(body, receive)
        await app(scope, receive, send)

    return dispatch


def traced(app: ASGIApp, tracer_provider: Any = None) -> ASGIApp:
    """`app` in OpenTelemetry's ASGI middleware on `tracer_provider` (a server span per
    request, continuing the caller's trace); `app` itself when None (tracing off)."""
    if tracer_provider is None:
        return app
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware  # lazy: tracing on

    return OpenTelemetryMiddleware(app, tracer_provider=tracer_provider)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that gives `body` (already read) once, then what `receive` gives (the
    disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


async def _refuse(send: Send, exc: AuthError) -> None:
    """Answer a request that `exc` refused, as the gateway does: ``{"error": …}``."""
    body = pydantic_core.to_json({"error": exc.message})
    headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]
    if exc.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
