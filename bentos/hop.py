"""The internal hop in front of a BentoML service: see `hearth.serving.internal`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from hearth.config import Settings
from hearth.serving.bentoml_internals import tracer_provider
from hearth.serving.internal import internal_first

S = TypeVar("S")


def serve_internal_first(internal: Any) -> Callable[[S], S]:
    """A decorator, above `@bentoml.service`: the service answers the internal routes with
    `internal` ahead of its BentoML app, on the same port, wherever it runs (`bentoml
    serve`, a bento, a container).

    BentoML builds a service's ASGI app in `Service.to_asgi` when a worker starts; the
    service becomes an instance of a subclass whose `to_asgi` puts `internal_first` around
    that app. (The class is slotted, so the method cannot be set on the instance.)
    Every request to the service but its probes must then carry HEARTH_INTERNAL_TOKEN.
    """

    def decorate(service: S) -> S:
        base: Any = type(service)

        class InternalFirst(base):
            __slots__ = ()

            def to_asgi(self, is_main: bool = True) -> Any:
                settings = Settings()
                return internal_first(
                    super().to_asgi(is_main),
                    internal,
                    _tracer_provider(settings),
                    token=settings.internal_token.get_secret_value(),
                )

        service.__class__ = InternalFirst
        return service

    return decorate


def _tracer_provider(settings: Settings) -> Any:
    """BentoML's tracer provider when spans are exported (HEARTH_OTLP_ENDPOINT), else None."""
    return tracer_provider() if settings.otlp_endpoint else None
