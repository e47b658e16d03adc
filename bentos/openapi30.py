"""BentoML's OpenAPI document (/docs.json) in the version it declares: see
`hearth.serving.openapi`."""

from __future__ import annotations

from typing import Any, TypeVar

import yaml

from hearth.serving.openapi import document30

S = TypeVar("S")


class Document30:
    """What `openapi_spec` returns: the 3.0 form of BentoML's document, with the
    `asdict()` its /docs.json view calls (and a YAML form for `bentoml build`)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def asdict(self) -> dict[str, Any]:
        return self.doc


yaml.add_representer(Document30, lambda dumper, spec: dumper.represent_dict(spec.asdict()))


def openapi30(service: S) -> S:
    """A decorator, above `@bentoml.service` (and `@bentoml.asgi_app`): the service's
    OpenAPI document, as /docs.json serves it, is valid OpenAPI 3.0.

    BentoML labels its document 3.0.2 but writes its schemas (its own and the mounted
    FastAPI app's) in pydantic's OpenAPI 3.1 dialect. The service becomes an instance of a
    subclass whose `openapi_spec` converts them, as `bentos.hop` does for `to_asgi`.
    """
    base: Any = type(service)

    class OpenAPI30(base):
        __slots__ = ()

        @property
        def openapi_spec(self) -> Any:
            return Document30(document30(super().openapi_spec.asdict()))

    service.__class__ = OpenAPI30
    return service
