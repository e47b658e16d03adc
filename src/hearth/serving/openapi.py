"""The gateway's OpenAPI document: OpenAPI 3.0 schemas, inline, from the pydantic models.

Both topologies serve the same document twice: FastAPI's ``/openapi.json`` and BentoML's
``/docs.json`` (which rebuilds the paths of the mounted app with FastAPI's `get_openapi`
and labels the whole OpenAPI 3.0.2). pydantic writes JSON Schema 2020-12, the dialect of
OpenAPI 3.1: a numeric ``exclusiveMinimum``, ``{"type": "null"}`` in an ``anyOf``, ``const``
and ``$defs`` are all invalid in 3.0. So every schema the routes declare is converted here
to its OpenAPI 3.0 form and inlined (no ``$ref`` left to resolve), and the FastAPI app
declares 3.0.3: one document that validates as the version it names, in both places.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from hearth.config import API_KEY_HEADER
from hearth.serving.auth import ADMIN_TOKEN_HEADER

if TYPE_CHECKING:
    from fastapi import FastAPI

OPENAPI_VERSION = "3.0.3"
JSON = "application/json"
# The two secrets, as the API page's "Authorize" dialog asks for them; each route names its
# own (`openapi_extra`). BentoML's /docs.json drops both (its model has no `security`).
SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": API_KEY_HEADER},
    "AdminToken": {"type": "apiKey", "in": "header", "name": ADMIN_TOKEN_HEADER},
}
API_KEY_SECURITY: dict[str, Any] = {"security": [{"ApiKey": []}]}
ADMIN_SECURITY: dict[str, Any] = {"security": [{"AdminToken": []}]}


def with_security_schemes(app: FastAPI) -> None:
    """`app`'s document declares `SECURITY_SCHEMES` (FastAPI adds only those its security
    dependencies declare, and the routes check the headers themselves)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        doc = build()  # built once, then FastAPI's cached copy
        doc.setdefault("components", {}).setdefault("securitySchemes", SECURITY_SCHEMES)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def schema30(model: type[BaseModel], mode: str = "validation") -> dict[str, Any]:
    """`model`'s JSON schema as an OpenAPI 3.0 Schema Object, its definitions inlined."""
    schema = model.model_json_schema(mode=mode)  # type: ignore[arg-type]
    defs = schema.pop("$defs", {})
    return _convert(schema, defs)


def _convert(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_convert(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return _convert({**defs[ref.removeprefix("#/$defs/")], **rest}, defs)
    out = {k: _convert(v, defs) for k, v in node.items() if k not in ("$schema", "$defs")}
    for bound, name in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = out.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[name], out[bound] = value, True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if "examples" in out:
        examples = out.pop("examples")
        if isinstance(examples, list) and examples:
            out["example"] = examples[0]
    for key in ("anyOf", "oneOf"):
        if key in out:
            _nullable(out, key)
    return out


def _nullable(node: dict[str, Any], key: str) -> None:
    """``anyOf: [X, {type: null}]`` → X with ``nullable: true`` (3.0 has no null type)."""
    options = [o for o in node[key] if o != {"type": "null"}]
    if len(options) == len(node[key]):
        return
    del node[key]
    node["nullable"] = True
    if len(options) == 1:
        for k, v in options[0].items():
            node.setdefault(k, v)
    else:
        node[key] = options


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The ``requestBody`` of a route that parses `model` from its body by hand."""
    return {"requestBody": {"required": True, "content": {JSON: {"schema": schema30(model)}}}}


def response_doc(model: type[BaseModel], description: str) -> dict[str, Any]:
    """A response whose JSON body is `model` (for a route's ``responses``)."""
    return {
        "description": description,
        "content": {JSON: {"schema": schema30(model, "serialization")}},
    }


def document30(doc: dict[str, Any]) -> dict[str, Any]:
    """A whole OpenAPI document (BentoML's /docs.json) with every Schema Object in its
    OpenAPI 3.0 form: BentoML labels its document 3.0.2 but writes its own components
    (and FastAPI's) in pydantic's 3.1 dialect."""
    out = dict(doc)
    components = dict(out.get("components") or {})
    if "schemas" in components:
        components["schemas"] = {k: _convert(v, {}) for k, v in components["schemas"].items()}
        out["components"] = components
    out["paths"] = _schemas_in(out.get("paths", {}))
    return out


def _schemas_in(node: Any) -> Any:
    """`node` with the value of every ``schema`` key converted (operations, parameters)."""
    if isinstance(node, list):
        return [_schemas_in(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {k: _convert(v, {}) if k == "schema" else _schemas_in(v) for k, v in node.items()}
