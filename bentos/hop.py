"""What answers ahead of a BentoML service's request stack, on the same port: the internal
hop (`hearth.serving.internal`) and the public scoring routes (`hearth.serving.public`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI

from hearth.config import Settings
from hearth.serving.bentoml_internals import access_log_enabled, tracer_provider
from hearth.serving.http import lean_front
from hearth.serving.internal import internal_first

S = TypeVar("S")


def _in_front(wrap: Callable[[Any], Any]) -> Callable[[S], S]:
    """A decorator, above `@bentoml.service`: the service's ASGI app becomes `wrap(app)`,
    wherever it runs (`bentoml serve`, a bento, a container).

    BentoML builds a service's ASGI app in `Service.to_asgi` when a worker starts; the
    service becomes an instance of a subclass whose `to_asgi` wraps that app. (The class is
    slotted, so the method cannot be set on the instance.)
    """

    def decorate(service: S) -> S:
        base: Any = type(service)

        class InFront(base):
            __slots__ = ()

            def to_asgi(self, is_main: bool = True) -> Any:
                return wrap(super().to_asgi(is_main))

        service.__class__ = InFront
        return service

    return decorate


def serve_internal_first(internal: Any) -> Callable[[S], S]:
    """The service answers the internal routes with `internal` ahead of its BentoML app.
    Every request to the service but its probes must then carry HEARTH_INTERNAL_TOKEN."""

    def wrap(app: Any) -> Any:
        settings = Settings()
        token = settings.internal_token.get_secret_value()
        return internal_first(app, internal, _tracer_provider(settings), token=token)

    return _in_front(wrap)


def serve_public_first(public: FastAPI) -> Callable[[S], S]:
    """The service answers the scoring routes of `public` (`hearth.serving.http.create_app`,
    mounted on it) ahead of its BentoML app (`hearth.serving.public`), with an access-log
    line each unless the service's BentoML config turns access logs off."""

    def wrap(app: Any) -> Any:
        return lean_front(app, public, _tracer_provider(Settings()), access_log_enabled())

    return _in_front(wrap)


def _tracer_provider(settings: Settings) -> Any:
    """BentoML's tracer provider when spans are exported (HEARTH_OTLP_ENDPOINT), else None."""
    return tracer_provider() if settings.otlp_endpoint else None
