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

The scoring routes' work (those checks, the gateway call, Hearth's metrics) is
`hearth.serving.public.PublicApi`; the FastAPI routes here document it and answer through
it, and `lean_front` answers it without FastAPI or BentoML around it, as the services run.

The admin routes (``/admin/…``, rollout controls) take the ``X-Admin-Token`` header instead
of the API key, and answer a refused change with the status its `RolloutError` carries
(404 unknown version, 409 conflict, 422 invalid value) and a message saying what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hearth import __version__
from hearth.config import API_KEY_HEADER
from hearth.serving.admin import Admin, RollbackToPreviousIn
from hearth.serving.auth import ADMIN_TOKEN_HEADER, AuthError, check_admin_token
from hearth.serving.docs_page import add_docs_routes
from hearth.serving.errors import Unavailable
from hearth.serving.gateway import Gateway
from hearth.serving.internal import Reply
from hearth.serving.openapi import (
    ADMIN_SECURITY,
    API_KEY_SECURITY,
    OPENAPI_VERSION,
    body_doc,
    response_doc,
    with_security_schemes,
)
from hearth.serving.public import (
    BadRequest,
    HttpPolicy,
    NextChunk,
    PublicApi,
    error_reply,
    internal_error,
    new_request_id,
    parse_body,
    public_first,
    refused,
    worker_header,
)
from hearth.serving.schemas import ErrorOut, RolloutActionIn, RolloutStartIn, RolloutWeightIn
from hearth.traffic.rollout_state import RolloutError

__all__ = ["HttpPolicy", "create_app", "lean_front"]
log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


def _response(reply: Reply) -> Response:
    return Response(reply.body, reply.status, dict(reply.headers), media_type=reply.content_type)


def _body_of(request: Request) -> NextChunk:
    """The request body's chunks, then None (what `PublicApi.answer` and `parse_body` read)."""
    chunks = request.stream()
    return lambda: anext(chunks, None)


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

    api = PublicApi(get_gateway, get_policy)
    app.state.public_api = api  # for `lean_front`

    def post(path: str) -> None:
        """Mount POST `path` over `api` (what `lean_front` answers without FastAPI); the
        callable that answers it documents it (its name and docstring)."""
        model, out, run = api.routes[path]

        async def endpoint(request: Request) -> Response:
            key = request.headers.get(API_KEY_HEADER)
            request_id = _request_id(request.scope)
            return _response(await api.answer(path, key, _body_of(request), request_id))

        endpoint.__doc__ = run.__doc__
        responses = {200: response_doc(out, "Successful Response"), **_ERRORS}
        app.add_api_route(
            path, endpoint, methods=["POST"], name=run.__name__, responses=responses,
            openapi_extra={**_body_doc(model), **API_KEY_SECURITY},
        )  # fmt: skip

    for path in api.routes:
        post(path)

    if get_admin is not None:
        _admin_routes(app, get_admin, get_policy)
    return app


def lean_front(
    app: ASGIApp, public: FastAPI, tracer_provider: Any = None, access_log: bool = True
) -> ASGIApp:
    """`app` behind the lean path of `public`'s scoring routes (`public`: what `create_app`
    made; `app`: the same, or the service's whole BentoML app that mounts it): a POST to
    /predict, /predict_batch or /feedback is answered without FastAPI, nor BentoML's stack
    (`hearth.serving.public.public_first`)."""
    return public_first(app, public.state.public_api, tracer_provider, access_log)


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
        request_id = new_request_id()
        try:
            policy = get_policy()
            check_admin_token(request.headers.get(ADMIN_TOKEN_HEADER), policy.admin_token)
            body = None
            if model is not None:
                limit = policy.max_payload_bytes
                body = await parse_body(_body_of(request), model, limit, empty_ok=True)
            return JSONResponse(await run(body))
        except (AuthError, BadRequest, RolloutError, Unavailable) as exc:
            return _response(refused(exc, request_id, "admin 503"))

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
    if _REQUEST_ID not in scope:
        scope[_REQUEST_ID] = new_request_id()
    request_id: str = scope[_REQUEST_ID]
    return request_id


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
                name, pid = worker_header()  # which of `--workers N`'s processes answered
                worker = (name.lower().encode(), pid.encode())
                message = {**message, "headers": [*message.get("headers", ()), worker]}
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("%s %s failed (request %s)", scope["method"], scope["path"], request_id)
            if started:  # too late for a 500: the status is out; the server closes it
                raise
            response = _response(error_reply(500, internal_error(request_id)))
            await response(scope, receive, send)
