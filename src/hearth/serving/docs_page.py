"""Hearth's API page: Swagger UI over the gateway's own ``/openapi.json``, served at ``/`` and
``/docs`` by the FastAPI app both topologies mount (so BentoML's stock index, with its
Google Tag Manager script, its badge and its ``/docs.json``, is never what a person finds).

Everything the page loads comes from this server: Swagger UI's two files are the copies
BentoML installs (``bentoml/_internal/server/static_content``; FastAPI ships none and would
load them from a CDN), served under ``/docs/assets/``; the initializer is ours. A
Content-Security-Policy of ``'self'`` makes the browser itself refuse any other host, and
Swagger UI's validator badge (a request to validator.swagger.io) is turned off.

The initializer fetches the document, names this server as the one to call, and moves the
request examples' timestamps to the current minute (a production gateway refuses one older
than the online store's window), so "Try it out" → Execute works as it is once the API key
is filled in under "Authorize".
"""

from __future__ import annotations

import importlib.util
import json
from functools import cache
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, Response

ASSETS_PATH = "/docs/assets"
# As the page names them: relative, so `/`, `/docs` and a gateway behind a path prefix all
# resolve them to the same place.
ASSETS = ASSETS_PATH.lstrip("/")
# Swagger UI's files we serve (name → media type): BentoML's copies, nothing else of theirs.
SWAGGER_FILES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}
INIT_SCRIPT = "hearth-docs.js"
# Inline styles: React's style attributes; data: images: Swagger UI's own icons.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@cache
def swagger_dir() -> Path:
    """Where the installed BentoML keeps Swagger UI's files (found without importing it)."""
    spec = importlib.util.find_spec("bentoml")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("bentoml is not installed: the API page serves its Swagger UI files")
    folder = Path(next(iter(spec.submodule_search_locations))) / "_internal/server/static_content"
    missing = [name for name in SWAGGER_FILES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"Swagger UI files {missing} are not in {folder}")
    return folder


def page_html(title: str, version: str) -> str:
    """The page: Swagger UI's stylesheet and script, our initializer, nothing else."""
    heading = f"{title} {version}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{_escape(heading)}</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="{ASSETS}/swagger-ui.css">
  <style>
    body {{ margin: 0; }}
    .hearth-note {{ font: 14px sans-serif; margin: 16px 20px 0; }}
  </style>
</head>
<body>
  <p class="hearth-note">Click <b>Authorize</b> and enter the API key (<code>X-API-Key</code>;
  the admin routes take <code>X-Admin-Token</code>), then open a route, <b>Try it out</b> and
  <b>Execute</b>: the examples are valid requests. The document:
  <a href="openapi.json">openapi.json</a>.</p>
  <div id="swagger-ui"></div>
  <script src="{ASSETS}/swagger-ui-bundle.js"></script>
  <script src="{ASSETS}/{INIT_SCRIPT}"></script>
</body>
</html>
"""


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# The document is fetched relative to the page (`/` and `/docs` both resolve to the root),
# so a gateway behind a path prefix works too. Example timestamps (YYYY-MM-DDTHH:MM:SS) are
# set to a minute ago, UTC.
INIT_JS = """\
"use strict";
(function () {
  const base = new URL("./", window.location.href);
  const stamp = new Date(Date.now() - 60000).toISOString().slice(0, 19);
  const TIMESTAMP = /^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}$/;
  function freshen(node) {
    if (Array.isArray(node)) { node.forEach(freshen); return; }
    if (node === null || typeof node !== "object") return;
    for (const [key, value] of Object.entries(node)) {
      if (key === "timestamp" && typeof value === "string" && TIMESTAMP.test(value)) {
        node[key] = stamp;
      } else {
        freshen(value);
      }
    }
  }
  fetch(new URL("openapi.json", base))
    .then((response) => response.json())
    .then((spec) => {
      for (const path of Object.values(spec.paths || {})) {
        for (const operation of Object.values(path)) freshen(operation.requestBody);
      }
      spec.servers = [{ url: base.href.replace(/\\/$/, ""), description: "this gateway" }];
      window.ui = SwaggerUIBundle({
        spec: spec,
        dom_id: "#swagger-ui",
        deepLinking: true,
        validatorUrl: null,
        displayRequestDuration: true,
        defaultModelsExpandDepth: 0,
        presets: [SwaggerUIBundle.presets.apis],
        layout: "BaseLayout",
      });
    })
    .catch((error) => {
      document.getElementById("swagger-ui").textContent =
        "Could not load openapi.json: " + error;
    });
})();
"""


def add_docs_routes(app: FastAPI) -> None:
    """Mount ``/``, ``/docs`` and ``/docs/assets/…`` on `app` (left out of its document)."""

    async def docs_page() -> HTMLResponse:
        return HTMLResponse(page_html(app.title, app.version), headers=_HEADERS)

    async def docs_asset(name: str) -> Response:
        if name == INIT_SCRIPT:
            return Response(INIT_JS, media_type="text/javascript; charset=utf-8", headers=_HEADERS)
        if name not in SWAGGER_FILES:
            return Response(
                json.dumps({"error": f"no asset {name!r}"}),
                status_code=404,
                media_type="application/json",
            )
        return FileResponse(
            swagger_dir() / name,
            media_type=SWAGGER_FILES[name],
            headers={**_HEADERS, "Cache-Control": "public, max-age=3600"},
        )

    for path in ("/", "/docs"):
        app.add_api_route(path, docs_page, methods=["GET"], include_in_schema=False)
    app.add_api_route(ASSETS_PATH + "/{name}", docs_asset, methods=["GET"], include_in_schema=False)
