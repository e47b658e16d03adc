"""The gateway's HTTP surface: a FastAPI app both topologies mount on their BentoML service.

Mounting an app (rather than declaring BentoML APIs) gives full control of status codes
and headers; BentoML keeps serving /livez, /readyz, /metrics and its OpenAPI document
(/docs.json, which includes these routes) next to it. Each request is checked in the order
that costs the server least: API key (401/403) → size (413) → JSON (400) → fields (422).
A dependency that cannot answer gives 503 with Retry-After, never a 500.
"""

from __future__ import annotations

import functools
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from hearth.config import Settings
from hearth.serving.auth import API_KEY_HEADER, AuthError, check_api_key
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
    TransactionIn,
)

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


class _BadRequest(Exception):
    def __init__(self, status: int, error: str, problems: list[Problem] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.problems = status, error, problems or []


@functools.cache
def _metrics() -> Any:
    """Hearth's counters, created once per process (prometheus registries are global)."""
    from prometheus_client import Counter

    class Metrics:
        predictions = Counter(
            "hearth_predictions", "Scored transactions.", ["variant", "model_version", "decision"]
        )
        rejected = Counter("hearth_rejected_requests", "Refused requests.", ["status"])

    return Metrics


def _error(status: int, body: ErrorOut, headers: dict[str, str] | None = None) -> JSONResponse:
    _metrics().rejected.labels(status=str(status)).inc()
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


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
    raw = await _read_body(request, limit)
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

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpPolicy:
        return cls(settings.api_key.get_secret_value(), settings.max_payload_bytes)


def create_app(get_gateway: Callable[[], Gateway], get_policy: Callable[[], HttpPolicy]) -> FastAPI:
    """The gateway's routes over what `get_gateway`/`get_policy` return at request time.

    Both are looked up per request (from the running service instance), so building the app
    at import time reads no settings and loads nothing.
    """
    app = FastAPI(title="Hearth fraud scoring", version="1", docs_url=None, redoc_url=None)

    async def handle(request: Request, model: type[M], run: Callable[[M, str], Any]) -> Any:
        request_id = uuid.uuid4().hex
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

    def count(predictions: list[PredictionOut]) -> None:
        for p in predictions:
            _metrics().predictions.labels(p.variant, p.model_version, p.decision).inc()

    @app.post(
        "/predict",
        response_model=PredictionOut,
        responses=_ERRORS,
        openapi_extra=_body_doc(TransactionIn),
    )
    async def predict(request: Request) -> Any:
        """Score one transaction."""

        async def run(txn: TransactionIn, request_id: str) -> PredictionOut:
            (out,) = await get_gateway().predict([txn], request_id)
            count([out])
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
            out = await get_gateway().predict(batch.transactions, request_id)
            count(out)
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

    return app
