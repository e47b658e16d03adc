"""The gateway's HTTP surface: a FastAPI app both topologies mount on their BentoML service.

Mounting an app (rather than declaring BentoML APIs) gives full control of status codes
and headers; BentoML keeps serving /livez, /readyz, /metrics and its OpenAPI document
(/docs.json, which includes these routes) next to it. Each request is checked in the order
that costs the server least: API key (401/403) → size (413) → JSON (400) → fields (422).
A dependency that cannot answer gives 503 with Retry-After, never a 500.

The admin routes (``/admin/…``, rollout controls) take the ``X-Admin-Token`` header instead
of the API key, and answer a refused change with the status its `RolloutError` carries
(404 unknown version, 409 conflict, 422 invalid value) and a message saying what to do.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from hearth.config import API_KEY_HEADER, Settings
from hearth.observability.logging import bind_request_id
from hearth.observability.prometheus import metrics, record_predictions, record_request
from hearth.serving.admin import Admin
from hearth.serving.auth import (
    ADMIN_TOKEN_HEADER,
    AuthError,
    check_admin_token,
    check_api_key,
)
from hearth.serving.errors import Unavailable
from hearth.serving.gateway import Gateway
from hearth.serving.schemas import (
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
from hearth.traffic.rollout_state import RolloutError

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


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
    """The body, refusing (413) one over `limit` bytes without reading all of it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BadRequest(413, f"request body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BadRequest(413, f"request body over {limit} bytes")
    return bytes(body)


async def _parse(request: Request, model: type[M], api_key: str, limit: int) -> M:
    check_api_key(request.headers.get(API_KEY_HEADER), api_key)
    return await _parse_body(request, model, limit)


async def _parse_body(request: Request, model: type[M], limit: int, empty_ok: bool = False) -> M:
    raw = await _read_body(request, limit)
    if empty_ok and not raw.strip():
        raw = b"{}"
    try:
        payload = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _BadRequest(400, f"invalid JSON: {exc}") from None
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = [Problem(field=_field(e["loc"]), message=e["msg"]) for e in exc.errors()]
        raise _BadRequest(422, "invalid request", problems) from None


def _body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI requestBody for a route that parses its body by hand."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (400, "Body is not JSON"),
        (401, "No API key"),
        (403, "Wrong API key"),
        (413, "Body too large"),
        (422, "A field is missing or invalid; `problems` names it"),
        (503, "Model or feature store unavailable; retry after Retry-After seconds"),
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

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpPolicy:
        return cls(
            settings.api_key.get_secret_value(),
            settings.max_payload_bytes,
            settings.admin_token.get_secret_value(),
            settings.max_in_flight,
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
    app = FastAPI(title="Hearth fraud scoring", version="1", docs_url=None, redoc_url=None)

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
        request_id = uuid.uuid4().hex
        bind_request_id(request_id)  # this request's task only: its log lines carry the id
        try:
            policy = get_policy()
            body = await _parse(request, model, policy.api_key, policy.max_payload_bytes)
            return await run(body, request_id)
        except (AuthError, _BadRequest, Unavailable) as exc:
            return _refused(exc, request_id, "503")

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
        app.add_api_route(
            path, endpoint, methods=["POST"], name=run.__name__, response_model=out,
            responses=_ERRORS, openapi_extra=_body_doc(model),
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
    code: {"model": ErrorOut, "description": text}
    for code, text in (
        (400, "Body is not JSON"),
        (401, f"No {ADMIN_TOKEN_HEADER}"),
        (403, f"Wrong {ADMIN_TOKEN_HEADER}"),
        (404, "Unknown model version"),
        (409, "A rollout is running already, or none is"),
        (422, "An invalid value (mode, steps, weight outside 0-100)"),
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
)


def _admin_routes(
    app: FastAPI, get_admin: Callable[[], Admin], get_policy: Callable[[], HttpPolicy]
) -> None:
    """GET /admin/rollout[/history], POST /admin/rollout/{start,weight,promote}, /admin/rollback."""

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
            openapi_extra=_body_doc(model) if model is not None else None,
        )  # fmt: skip

    for method, path, model, name, call in _ADMIN_ROUTES:
        route(method, path, model, name, call)
