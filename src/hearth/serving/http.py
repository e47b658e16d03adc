"""The gateway's HTTP surface: a FastAPI app both topologies mount on their BentoML service.

Mounting an app (rather than declaring BentoML APIs) gives full control of status codes and
headers; BentoML keeps serving /livez, /readyz, /metrics and its OpenAPI document
(/docs.json, which includes these routes) next to it; both documents are OpenAPI 3.0
(`hearth.serving.openapi`). ``/`` and ``/docs`` are Hearth's API page over /openapi.json
(`hearth.serving.docs_page`), not BentoML's stock index. Each request is checked in the
order that costs the server least: API key (401/403) → size (413) → JSON and its depth (400)
→ batch size (413) → fields (422) → the input domain (422:
`hearth.features.online.InputDomain`, the same in every service and in the online store). A
dependency that cannot answer gives 503 with Retry-After; anything unexpected a JSON 500
carrying the request id, logged with its trace.

The admin routes (``/admin/…``, rollout controls) take the ``X-Admin-Token`` header instead
of the API key, and answer a refused change with the status its `RolloutError` carries
(404 unknown version, 409 conflict, 422 invalid value) and a message saying what to do.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth import __version__
from hearth.config import API_KEY_HEADER, Settings
from hearth.features.online import InputDomain, InvalidTransaction
from hearth.observability.logging import bind_request_id
from hearth.observability.prometheus import metrics, record_predictions, record_request
from hearth.serving.admin import Admin, RollbackToPreviousIn
from hearth.serving.auth import (
    ADMIN_TOKEN_HEADER,
    AuthError,
    check_admin_token,
    check_api_key,
)
from hearth.serving.docs_page import add_docs_routes
from hearth.serving.errors import Unavailable
from hearth.serving.gateway import Gateway
from hearth.serving.limits import Refused, read_capped
from hearth.serving.openapi import (
    ADMIN_SECURITY,
    API_KEY_SECURITY,
    OPENAPI_VERSION,
    body_doc,
    response_doc,
    with_security_schemes,
)
from hearth.serving.schemas import (
    MAX_BATCH,
    BatchIn,
    BatchOut,
    ErrorOut,
    FeedbackIn,
    FeedbackOut,
    PredictionOut,
    Problem,
    RolloutActionIn,
    RolloutStartIn,
    RolloutWeightIn,
    TransactionIn,
)
from hearth.serving.workers import WORKER_HEADER
from hearth.traffic.rollout_state import RolloutError

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
# Request bodies are a few levels deep (a batch: 3); deeper is refused before validation.
MAX_JSON_DEPTH = 32


class _BadRequest(Exception):
    def __init__(self, status: int, error: str, problems: list[Problem] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.problems = status, error, problems or []


def _metrics() -> Any:
    """Hearth's metrics (defined once, in hearth.observability.prometheus)."""
    return metrics()


def _error(status: int, body: ErrorOut, headers: dict[str, str] | None = None) -> JSONResponse:
    _metrics().rejected.labels(status=str(status)).inc()
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def _overloaded(limit: int) -> JSONResponse:
    error = (
        f"overloaded: {limit} requests already in flight here (HEARTH_MAX_IN_FLIGHT); "
        "retry after Retry-After seconds"
    )
    return _error(503, ErrorOut(error=error, request_id=uuid.uuid4().hex), {"Retry-After": "1"})


def _refused(
    exc: AuthError | _BadRequest | RolloutError | Unavailable, request_id: str, log_503_as: str
) -> JSONResponse:
    """The answer to a request that `exc` refused: its status, and what went wrong as ErrorOut
    (a 503 with Retry-After, logged as `log_503_as`)."""
    problems: list[Problem] = []
    headers = None
    if isinstance(exc, AuthError):
        status, error = exc.status, exc.message
    elif isinstance(exc, _BadRequest):
        status, error, problems = exc.status, exc.error, exc.problems
    elif isinstance(exc, RolloutError):
        log.info("admin request refused (%d): %s", exc.http_status, exc)
        status, error = exc.http_status, str(exc)
    else:
        log.warning("%s: %s", log_503_as, exc)
        status, error, headers = 503, str(exc), {"Retry-After": str(exc.retry_after_s)}
    return _error(status, ErrorOut(error=error, problems=problems, request_id=request_id), headers)


def _field(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) one over `limit` bytes without keeping more than that (the
    rest is read and dropped, so the client can read its answer: `limits.read_capped`)."""
    chunks = request.stream()
    try:
        return await read_capped(lambda: anext(chunks, None), limit)
    except Refused as exc:
        raise _BadRequest(exc.status, f"{exc.error} (HEARTH_MAX_PAYLOAD_BYTES)") from None


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
    """The JSON of a body; 400 for invalid JSON or JSON nested deeper than MAX_JSON_DEPTH."""
    too_deep = _BadRequest(400, f"invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _BadRequest(400, f"invalid JSON: {exc}") from None
    except RecursionError:  # the parser's own limit (~1000 levels)
        raise too_deep from None
    if not _depth(payload, MAX_JSON_DEPTH):
        raise too_deep
    return payload


async def _parse_body(
    request: Request, model: type[M], limit: int, empty_ok: bool = False, max_batch: int = 0
) -> M:
    raw = await _read_body(request, limit)
    if empty_ok and not raw.strip():
        raw = b"{}"
    payload = _loads(raw)
    if max_batch and isinstance(payload, dict):
        items = payload.get("transactions")
        if isinstance(items, list) and len(items) > max_batch:
            error = f"batch of {len(items)} transactions, over {max_batch} (HEARTH_MAX_BATCH)"
            raise _BadRequest(413, error, [Problem(field="transactions", message=error)])
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = [Problem(field=_field(e["loc"]), message=e["msg"]) for e in exc.errors()]
        raise _BadRequest(422, "invalid request", problems) from None


def _domain_problems(domain: InputDomain, txns: list[TransactionIn], prefix: str) -> None:
    """422 naming each field of `txns` outside the input domain (`prefix`: where they are)."""
    problems = [
        Problem(field=f"{prefix}{i}.{name}" if prefix else name, message=message)
        for i, txn in enumerate(txns)
        for name, message in domain.problems(txn.to_transaction())
    ]
    if problems:
        raise _BadRequest(422, "invalid request", problems)


_body_doc = body_doc
_INTERNAL_ERROR = "Unexpected server error; the log has its trace under `request_id`"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: response_doc(ErrorOut, text)
    for code, text in (
        (400, "Body is not JSON, or JSON nested too deep"),
        (401, "No API key"),
        (403, "Wrong API key"),
        (413, "Body, or the batch's number of transactions, too large"),
        (422, "A field is missing, invalid or out of range; `problems` names it"),
        (500, _INTERNAL_ERROR),
        (503, "Model or feature store unavailable (or overloaded); retry after Retry-After"),
    )
}


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


def create_app(
    get_gateway: Callable[[], Gateway],
    get_policy: Callable[[], HttpPolicy],
    get_admin: Callable[[], Admin] | None = None,
) -> FastAPI:
    """The gateway's routes over what `get_gateway`/`get_policy` return at request time.

    All are looked up per request (from the running service instance), so building the app
    at import time reads no settings and loads nothing. With `get_admin`, the admin routes
    (rollout controls) are mounted too.
    """
    app = FastAPI(
        title="Hearth fraud scoring API",
        version=__version__,
        docs_url=None,  # Hearth's own page instead (hearth.serving.docs_page)
        redoc_url=None,
    )
    app.openapi_version = OPENAPI_VERSION  # set after: not a constructor argument
    with_security_schemes(app)
    add_docs_routes(app)
    app.add_middleware(_CatchAll)

    in_flight = 0  # requests between `handle`'s start and end, in this process

    async def handle(request: Request, model: type[M], run: Callable[[M, str], Any]) -> Any:
        nonlocal in_flight
        started = time.perf_counter()
        limit = get_policy().max_in_flight
        if in_flight >= limit:
            response = _overloaded(limit)
        else:
            in_flight += 1
            try:
                response = await _handle(request, model, run)
            finally:
                in_flight -= 1
        status = response.status_code if isinstance(response, JSONResponse) else 200
        record_request(request.url.path, status, time.perf_counter() - started)
        return response

    async def _handle(request: Request, model: type[M], run: Callable[[M, str], Any]) -> Any:
        request_id = _request_id(request.scope)
        bind_request_id(request_id)  # this request's task only: its log lines carry the id
        try:
            policy = get_policy()
            check_api_key(request.headers.get(API_KEY_HEADER), policy.api_key)
            body = await _parse_body(
                request, model, policy.max_payload_bytes, max_batch=policy.max_batch
            )
            if isinstance(body, TransactionIn):
                _domain_problems(policy.domain, [body], "")
            elif isinstance(body, BatchIn):
                _domain_problems(policy.domain, list(body.transactions), "transactions.")
            return await run(body, request_id)
        except InvalidTransaction as exc:  # refused further in (a store's own check)
            problems = [Problem(field=f, message=m) for f, m in exc.problems]
            return _refused(_BadRequest(422, "invalid request", problems), request_id, "")
        except (AuthError, _BadRequest, Unavailable) as exc:
            return _refused(exc, request_id, "503")
        except Exception:
            log.exception("%s failed (request %s)", request.url.path, request_id)
            return _error(500, _internal_error(request_id))

    def count(predictions: list[PredictionOut], started: float | None = None) -> None:
        seconds = time.perf_counter() - started if started is not None else 0.0
        record_predictions(predictions, seconds)

    def post(
        path: str, model: type[M], out: type[BaseModel], run: Callable[[M, str], Awaitable[Any]]
    ) -> None:
        """Mount POST `path`: `run` on the parsed body; its name and docstring document it."""

        async def endpoint(request: Request) -> Any:
            return await handle(request, model, run)

        endpoint.__doc__ = run.__doc__
        responses = {200: response_doc(out, "Successful Response"), **_ERRORS}
        app.add_api_route(
            path, endpoint, methods=["POST"], name=run.__name__, responses=responses,
            openapi_extra={**_body_doc(model), **API_KEY_SECURITY},
        )  # fmt: skip

    async def predict(txn: TransactionIn, request_id: str) -> PredictionOut:
        """Score one transaction."""
        started = time.perf_counter()
        (out,) = await get_gateway().predict([txn], request_id)
        count([out], started)
        return out

    async def predict_batch(batch: BatchIn, request_id: str) -> BatchOut:
        """Score transactions in order (later ones see the earlier ones in their features)."""
        started = time.perf_counter()
        out = await get_gateway().predict(batch.transactions, request_id)
        count(out, started)
        return BatchOut(predictions=out)

    async def feedback(fb: FeedbackIn, request_id: str) -> FeedbackOut:
        """Record the label of a transaction scored earlier."""
        return await get_gateway().feedback(fb)

    post("/predict", TransactionIn, PredictionOut, predict)
    post("/predict_batch", BatchIn, BatchOut, predict_batch)
    post("/feedback", FeedbackIn, FeedbackOut, feedback)

    if get_admin is not None:
        _admin_routes(app, get_admin, get_policy)
    return app


_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    code: response_doc(ErrorOut, text)
    for code, text in (
        (400, "Body is not JSON"),
        (401, f"No {ADMIN_TOKEN_HEADER}"),
        (403, f"Wrong {ADMIN_TOKEN_HEADER}"),
        (404, "Unknown model version"),
        (409, "A rollout is running already, or none is; or not the expected champion"),
        (413, "Body too large"),
        (422, "An invalid value (mode, steps, weight outside 0-100)"),
        (500, _INTERNAL_ERROR),
        (503, "The model registry or the rollout state is unavailable; retry"),
    )
}
AdminCall = Callable[..., Awaitable[Any]]
# method, path, body (None: the route takes none), route name, the `Admin` method it calls
# (whose docstring is the route's description)
_ADMIN_ROUTES: tuple[tuple[str, str, type[BaseModel] | None, str, AdminCall], ...] = (
    ("GET", "/admin/rollout", None, "rollout_status", Admin.status),
    ("GET", "/admin/rollout/history", None, "rollout_history", Admin.history),
    ("POST", "/admin/rollout/start", RolloutStartIn, "rollout_start", Admin.start),
    ("POST", "/admin/rollout/weight", RolloutWeightIn, "rollout_weight", Admin.weight),
    ("POST", "/admin/rollout/promote", RolloutActionIn, "rollout_promote", Admin.promote),
    ("POST", "/admin/rollback", RolloutActionIn, "rollback", Admin.rollback),
    ("POST", "/admin/rollback-to-previous", RollbackToPreviousIn, "rollback_to_previous",
     Admin.rollback_to_previous),
)  # fmt: skip


def _admin_routes(
    app: FastAPI, get_admin: Callable[[], Admin], get_policy: Callable[[], HttpPolicy]
) -> None:
    """GET /admin/rollout[/history], POST /admin/rollout/{start,weight,promote},
    /admin/rollback, /admin/rollback-to-previous."""

    async def admin(
        request: Request, model: type[M] | None, run: Callable[[Any], Awaitable[Any]]
    ) -> Any:
        request_id = uuid.uuid4().hex
        try:
            policy = get_policy()
            check_admin_token(request.headers.get(ADMIN_TOKEN_HEADER), policy.admin_token)
            body = None
            if model is not None:
                body = await _parse_body(request, model, policy.max_payload_bytes, empty_ok=True)
            return JSONResponse(await run(body))
        except (AuthError, _BadRequest, RolloutError, Unavailable) as exc:
            return _refused(exc, request_id, "admin 503")

    def route(
        method: str, path: str, model: type[BaseModel] | None, name: str, call: AdminCall
    ) -> None:
        async def endpoint(request: Request) -> Any:
            if model is None:
                return await admin(request, None, lambda _: call(get_admin()))
            return await admin(request, model, lambda body: call(get_admin(), body))

        endpoint.__doc__ = call.__doc__  # the route's description
        app.add_api_route(
            path, endpoint, methods=[method], name=name, responses=_ADMIN_ERRORS,
            openapi_extra={**(_body_doc(model) if model is not None else {}), **ADMIN_SECURITY},
        )  # fmt: skip

    for method, path, model, name, call in _ADMIN_ROUTES:
        route(method, path, model, name, call)


# -- anything unexpected ----------------------------------------------------------------------
_REQUEST_ID = "hearth.request_id"


def _request_id(scope: Scope) -> str:
    """This request's id: made once per request (by `_CatchAll`), shared by its handler."""
    request_id: str = scope.setdefault(_REQUEST_ID, uuid.uuid4().hex)
    return request_id


def _internal_error(request_id: str) -> ErrorOut:
    return ErrorOut(
        error=f"internal error; the server's log has its trace under request id {request_id}",
        request_id=request_id,
    )


_WORKER_HEADER = WORKER_HEADER.lower().encode()


class _CatchAll:
    """An exception no handler answered becomes a JSON 500 carrying the request id, logged
    with its trace (Starlette's own would be a plain-text 500 with no id). Every answer
    carries the pid of the worker process that gave it (`WORKER_HEADER`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                # Which of `hearth serve --workers N`'s processes answered.
                worker = (_WORKER_HEADER, str(os.getpid()).encode())
                message = {**message, "headers": [*message.get("headers", ()), worker]}
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("%s %s failed (request %s)", scope["method"], scope["path"], request_id)
            if started:  # too late for a 500: the status is out; the server closes it
                raise
            response = _error(500, _internal_error(request_id))
            await response(scope, receive, send)
