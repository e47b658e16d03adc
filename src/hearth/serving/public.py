"""The public scoring routes without a framework: POST /predict, /predict_batch, /feedback.

`PublicApi.answer` takes what a request is (its path, its API key, a way to read its body)
and gives what to answer (`Reply`: status, JSON body, headers), checking in the order that
costs the server least (see `hearth.serving.http`), calling the gateway and recording
Hearth's metrics. Two things call it, so both give the same answers:

- the FastAPI app (`hearth.serving.http.create_app`), whose routes also document the API
  and which serves everything else (admin routes, the API page);
- `public_first`, an ASGI function in front of a service's whole BentoML app, which both
  topologies' entry services run (`bentos.hop.serve_public_first`): a scoring request never
  enters BentoML's middleware stack (request context, its own traffic metrics,
  OpenTelemetry, access log, timeout, routing over every API) nor FastAPI's (routing,
  request objects, exception middlewares, `jsonable_encoder`). Under sustained load
  (py-spy on `hearth bench`'s monolith) those layers took about half of the process's
  samples, for work this path does in a few lines.

What they gave is kept here: the request id, auth, limits, validation, lineage (the
gateway's answer), Hearth's Prometheus series, the worker header, an access-log line on
BentoML's access logger, and with tracing on, an OpenTelemetry server span per request
(`traced`, on BentoML's tracer provider) under which the gateway's spans nest.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic_core
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from hearth.config import API_KEY_HEADER, Settings
from hearth.features.online import InputDomain, InvalidTransaction
from hearth.observability.logging import bind_request_id
from hearth.observability.prometheus import metrics, record_predictions, record_request
from hearth.serving.auth import AuthError, check_api_key
from hearth.serving.errors import Unavailable
from hearth.serving.gateway import Gateway
from hearth.serving.internal import JSON, Reply, body_chunks, send_reply, traced
from hearth.serving.limits import Refused, read_capped
from hearth.serving.schemas import (
    MAX_BATCH,
    BatchIn,
    BatchOut,
    ErrorOut,
    FeedbackIn,
    FeedbackOut,
    PredictionOut,
    Problem,
    TransactionIn,
)
from hearth.serving.workers import WORKER_HEADER
from hearth.traffic.rollout_state import RolloutError

log = logging.getLogger("hearth.serving.http")
M = TypeVar("M", bound=BaseModel)
# Request bodies are a few levels deep (a batch: 3); deeper is refused before validation.
MAX_JSON_DEPTH = 32
NextChunk = Callable[[], Awaitable[bytes | None]]


@dataclass(frozen=True)
class HttpPolicy:
    """What the HTTP layer enforces before the gateway sees a request."""

    api_key: str
    max_payload_bytes: int
    admin_token: str = ""
    # Requests this process works on at once; past it, 503 + Retry-After at once instead of
    # a queue that only grows (HEARTH_MAX_IN_FLIGHT).
    max_in_flight: int = 512
    domain: InputDomain = field(default_factory=InputDomain)
    max_batch: int = MAX_BATCH

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpPolicy:
        return cls(
            settings.api_key.get_secret_value(),
            settings.max_payload_bytes,
            settings.admin_token.get_secret_value(),
            settings.max_in_flight,
            InputDomain.from_settings(settings),
            settings.max_batch,
        )


def new_request_id() -> str:
    """A request id: 32 hex digits, as `uuid4().hex` gave. Not `uuid4`: `os.urandom` releases
    the GIL for its system call and, on a busy loop, waits up to a switch interval (5 ms) to
    take it back; in py-spy's profile of the monolith under load that wait was 8 % of its busy
    samples. An id needs to be unique, not secret: 128 bits of the process's generator."""
    return f"{random.getrandbits(128):032x}"


# -- refusals -------------------------------------------------------------------------------
class BadRequest(Exception):
    def __init__(self, status: int, error: str, problems: list[Problem] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.problems = status, error, problems or []


def error_reply(status: int, body: ErrorOut, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    """A refusal as JSON (`ErrorOut`), counted in `hearth_rejected_requests_total`."""
    metrics().rejected.labels(status=str(status)).inc()
    return Reply(status, pydantic_core.to_json(body, exclude_none=True), JSON, headers)


def _overloaded(limit: int) -> Reply:
    error = (
        f"overloaded: {limit} requests already in flight here (HEARTH_MAX_IN_FLIGHT); "
        "retry after Retry-After seconds"
    )
    return error_reply(503, ErrorOut(error=error, request_id=new_request_id()), _RETRY_1)


_RETRY_1 = (("Retry-After", "1"),)


def refused(
    exc: AuthError | BadRequest | RolloutError | Unavailable, request_id: str, log_503_as: str
) -> Reply:
    """The answer to a request that `exc` refused: its status, and what went wrong as ErrorOut
    (a 503 with Retry-After, logged as `log_503_as`)."""
    problems: list[Problem] = []
    headers: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, AuthError):
        status, error = exc.status, exc.message
    elif isinstance(exc, BadRequest):
        status, error, problems = exc.status, exc.error, exc.problems
    elif isinstance(exc, RolloutError):
        log.info("admin request refused (%d): %s", exc.http_status, exc)
        status, error = exc.http_status, str(exc)
    else:
        log.warning("%s: %s", log_503_as, exc)
        status, error, headers = 503, str(exc), (("Retry-After", str(exc.retry_after_s)),)
    body = ErrorOut(error=error, problems=problems, request_id=request_id)
    return error_reply(status, body, headers)


def internal_error(request_id: str) -> ErrorOut:
    return ErrorOut(
        error=f"internal error; the server's log has its trace under request id {request_id}",
        request_id=request_id,
    )


# -- bodies -----------------------------------------------------------------------------------
def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


async def _read_body(next_chunk: NextChunk, limit: int) -> bytes:
    """The body, refusing (413) one over `limit` bytes without keeping more than that (the
    rest is read and dropped, so the client can read its answer: `limits.read_capped`)."""
    try:
        return await read_capped(next_chunk, limit)
    except Refused as exc:
        raise BadRequest(exc.status, f"{exc.error} (HEARTH_MAX_PAYLOAD_BYTES)") from None


def _depth(value: Any, limit: int) -> bool:
    """Whether `value` nests no deeper than `limit` levels (iteratively: no recursion)."""
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            if level > limit:
                return False
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, level + 1) for child in children)
    return True


def _loads(raw: bytes) -> Any:
    """The JSON of a body; 400 for invalid JSON or JSON nested deeper than MAX_JSON_DEPTH.

    The standard library's parser, not a faster one: it reads NaN and Infinity, which the
    schema then refuses naming the field (422), as a client should be told."""
    too_deep = BadRequest(400, f"invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"invalid JSON: {exc}") from None
    except RecursionError:  # the parser's own limit (~1000 levels)
        raise too_deep from None
    if not _depth(payload, MAX_JSON_DEPTH):
        raise too_deep
    return payload


async def parse_body(
    next_chunk: NextChunk, model: type[M], limit: int, empty_ok: bool = False, max_batch: int = 0
) -> M:
    raw = await _read_body(next_chunk, limit)
    if empty_ok and not raw.strip():
        raw = b"{}"
    payload = _loads(raw)
    if max_batch and isinstance(payload, dict):
        items = payload.get("transactions")
        if isinstance(items, list) and len(items) > max_batch:
            error = f"batch of {len(items)} transactions, over {max_batch} (HEARTH_MAX_BATCH)"
            raise BadRequest(413, error, [Problem(field="transactions", message=error)])
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = [Problem(field=_field(e["loc"]), message=e["msg"]) for e in exc.errors()]
        raise BadRequest(422, "invalid request", problems) from None


def _domain_problems(domain: InputDomain, txns: list[TransactionIn], prefix: str) -> None:
    """422 naming each field of `txns` outside the input domain (`prefix`: where they are)."""
    problems = [
        Problem(field=f"{prefix}{i}.{name}" if prefix else name, message=message)
        for i, txn in enumerate(txns)
        for name, message in domain.problems(txn.to_transaction())
    ]
    if problems:
        raise BadRequest(422, "invalid request", problems)


# -- the routes -------------------------------------------------------------------------------
Run = Callable[[Any, str], Awaitable[BaseModel]]


class PublicApi:
    """The scoring routes over what `get_gateway`/`get_policy` return at request time (the
    running service's instances: building this reads no settings and loads nothing)."""

    def __init__(
        self, get_gateway: Callable[[], Gateway], get_policy: Callable[[], HttpPolicy]
    ) -> None:
        self.get_gateway, self.get_policy = get_gateway, get_policy
        self.in_flight = 0  # requests between `answer`'s start and end, in this process
        # path → (request body, response body, what answers it)
        self.routes: dict[str, tuple[type[BaseModel], type[BaseModel], Run]] = {
            "/predict": (TransactionIn, PredictionOut, self.predict),
            "/predict_batch": (BatchIn, BatchOut, self.predict_batch),
            "/feedback": (FeedbackIn, FeedbackOut, self.feedback),
        }

    async def answer(
        self, path: str, api_key: str | None, next_chunk: NextChunk, request_id: str
    ) -> Reply:
        """The reply to a POST to `path` (one of `routes`), counted in Hearth's metrics."""
        started = time.perf_counter()
        limit = self.get_policy().max_in_flight
        if self.in_flight >= limit:
            reply = _overloaded(limit)
        else:
            self.in_flight += 1
            try:
                reply = await self._answer(path, api_key, next_chunk, request_id)
            finally:
                self.in_flight -= 1
        record_request(path, reply.status, time.perf_counter() - started)
        return reply

    async def _answer(
        self, path: str, api_key: str | None, next_chunk: NextChunk, request_id: str
    ) -> Reply:
        bind_request_id(request_id)  # this request's task only: its log lines carry the id
        model, _, run = self.routes[path]
        try:
            policy = self.get_policy()
            check_api_key(api_key, policy.api_key)
            body = await parse_body(
                next_chunk, model, policy.max_payload_bytes, max_batch=policy.max_batch
            )
            if isinstance(body, TransactionIn):
                _domain_problems(policy.domain, [body], "")
            elif isinstance(body, BatchIn):
                _domain_problems(policy.domain, list(body.transactions), "transactions.")
            out = await run(body, request_id)
            return Reply(200, pydantic_core.to_json(out), JSON)
        except InvalidTransaction as exc:  # refused further in (a store's own check)
            problems = [Problem(field=f, message=m) for f, m in exc.problems]
            return refused(BadRequest(422, "invalid request", problems), request_id, "")
        except (AuthError, BadRequest, Unavailable) as exc:
            return refused(exc, request_id, "503")
        except Exception:
            log.exception("%s failed (request %s)", path, request_id)
            return error_reply(500, internal_error(request_id))

    async def predict(self, txn: TransactionIn, request_id: str) -> PredictionOut:
        """Score one transaction."""
        started = time.perf_counter()
        (out,) = await self.get_gateway().predict([txn], request_id)
        record_predictions([out], time.perf_counter() - started)
        return out

    async def predict_batch(self, batch: BatchIn, request_id: str) -> BatchOut:
        """Score transactions in order (later ones see the earlier ones in their features)."""
        started = time.perf_counter()
        out = await self.get_gateway().predict(batch.transactions, request_id)
        record_predictions(out, time.perf_counter() - started)
        return BatchOut(predictions=out)

    async def feedback(self, fb: FeedbackIn, request_id: str) -> FeedbackOut:
        """Record the label of a transaction scored earlier."""
        return await self.get_gateway().feedback(fb)


# -- in front of BentoML ----------------------------------------------------------------------
_API_KEY = API_KEY_HEADER.lower().encode()
_ACCESS = logging.getLogger("bentoml.access")  # where BentoML's access-log lines go


def worker_header() -> tuple[str, str]:
    """Which of `hearth serve --workers N`'s processes answered (`WORKER_HEADER`)."""
    return WORKER_HEADER, str(os.getpid())


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def public_first(
    app: ASGIApp, api: PublicApi, tracer_provider: Any = None, access_log: bool = True
) -> ASGIApp:
    """`app` (a service's BentoML app), except that a POST to one of `api`'s routes goes
    straight to `api`. `tracer_provider`: trace those requests too (OpenTelemetry ASGI);
    `access_log`: one line per request on BentoML's access logger, as its middleware wrote."""

    async def lean(scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path = scope["path"]
        request_id = new_request_id()
        reply = await api.answer(path, _header(scope, _API_KEY), body_chunks(receive), request_id)
        headers = (*reply.headers, worker_header())
        await send_reply(send, Reply(reply.status, reply.body, reply.content_type, headers))
        if access_log and _ACCESS.isEnabledFor(logging.INFO):
            client = scope.get("client")
            _ACCESS.info(
                "%s (scheme=%s,method=POST,path=%s) (status=%d) %.3fms",
                f"{client[0]}:{client[1]}" if client else "_", scope.get("scheme", "http"),
                path, reply.status, 1000 * (time.perf_counter() - started),
            )  # fmt: skip

    front = traced(lean, tracer_provider)
    paths = frozenset(api.routes)

    async def dispatch(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in paths:
            await front(scope, receive, send)
        else:
            await app(scope, receive, send)

    return dispatch
