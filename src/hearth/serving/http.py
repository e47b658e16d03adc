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
        except AuthError as exc:
            return _error(exc.status, ErrorOut(error=exc.message, request_id=request_id))
        except _BadRequest as exc:
            body_out = ErrorOut(error=exc.error, problems=exc.problems, request_id=request_id)
            return _error(exc.status, body_out)
        except Unavailable as exc:
            log.warning("503: %s", exc)
            headers = {"Retry-After": str(exc.retry_after_s)}
            return _error(503, ErrorOut(error=str(exc), request_id=request_id), headers)

    def count(predictions: list[PredictionOut], started: float | None = None) -> None:
        seconds = time.perf_counter() - started if started is not None else 0.0
        record_predictions(predictions, seconds)

    @app.post(
        "/predict",
        response_model=PredictionOut,
        responses=_ERRORS,
        openapi_extra=_body_doc(TransactionIn),
    )
    async def predict(request: Request) -> Any:
        """Score one transaction."""

        async def run(txn: TransactionIn, request_id: str) -> PredictionOut:
            started = time.perf_counter()
            (out,) = await get_gateway().predict([txn], request_id)
            count([out], started)
            return out

        return await handle(request, TransactionIn, run)

    @app.post(
        "/predict_batch",
        response_model=BatchOut,
        responses=_ERRORS,
        openapi_extra=_body_doc(BatchIn),
    )
    async def predict_batch(request: Request) -> Any:
        """Score transactions in order (later ones see the earlier ones in their features)."""

        async def run(batch: BatchIn, request_id: str) -> BatchOut:
            started = time.perf_counter()
            out = await get_gateway().predict(batch.transactions, request_id)
            count(out, started)
            return BatchOut(predictions=out)

        return await handle(request, BatchIn, run)

    @app.post(
        "/feedback",
        response_model=FeedbackOut,
        responses=_ERRORS,
        openapi_extra=_body_doc(FeedbackIn),
    )
    async def feedback(request: Request) -> Any:
        """Record the label of a transaction scored earlier."""

        async def run(fb: FeedbackIn, request_id: str) -> FeedbackOut:
            return await get_gateway().feedback(fb)

        return await handle(request, FeedbackIn, run)

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
        except AuthError as exc:
            return _error(exc.status, ErrorOut(error=exc.message, request_id=request_id))
        except _BadRequest as exc:
            body_out = ErrorOut(error=exc.error, problems=exc.problems, request_id=request_id)
            return _error(exc.status, body_out)
        except RolloutError as exc:
            log.info("admin request refused (%d): %s", exc.http_status, exc)
            return _error(exc.http_status, ErrorOut(error=str(exc), request_id=request_id))
        except Unavailable as exc:
            log.warning("admin 503: %s", exc)
            headers = {"Retry-After": str(exc.retry_after_s)}
            return _error(503, ErrorOut(error=str(exc), request_id=request_id), headers)

    @app.get("/admin/rollout", responses=_ADMIN_ERRORS)
    async def rollout_status(request: Request) -> Any:
        """The rollout state, aliases, served versions, history tail and live counts."""
        return await admin(request, None, lambda _: get_admin().status())

    @app.get("/admin/rollout/history", responses=_ADMIN_ERRORS)
    async def rollout_history(request: Request) -> Any:
        """Every change of every rollout: who, when, why, with the analysis numbers."""
        return await admin(request, None, lambda _: get_admin().history())

    @app.post(
        "/admin/rollout/start", responses=_ADMIN_ERRORS, openapi_extra=_body_doc(RolloutStartIn)
    )
    async def rollout_start(request: Request) -> Any:
        """Start a canary, A/B or shadow rollout of a registered version."""
        return await admin(request, RolloutStartIn, lambda b: get_admin().start(b))

    @app.post(
        "/admin/rollout/weight", responses=_ADMIN_ERRORS, openapi_extra=_body_doc(RolloutWeightIn)
    )
    async def rollout_weight(request: Request) -> Any:
        """Set the challenger's share of customers (0-100 %)."""
        return await admin(request, RolloutWeightIn, lambda b: get_admin().weight(b))

    @app.post(
        "/admin/rollout/promote", responses=_ADMIN_ERRORS, openapi_extra=_body_doc(RolloutActionIn)
    )
    async def rollout_promote(request: Request) -> Any:
        """Make the challenger the champion (the old one stays as `previous`)."""
        return await admin(request, RolloutActionIn, lambda b: get_admin().promote(b))

    @app.post("/admin/rollback", responses=_ADMIN_ERRORS, openapi_extra=_body_doc(RolloutActionIn))
    async def rollback(request: Request) -> Any:
        """End the running rollout (all traffic to the champion), or restore `previous`."""
        return await admin(request, RolloutActionIn, lambda b: get_admin().rollback(b))
