"""The API page at the gateway's `/` and `/docs` (no browser): Hearth's own, in both
topologies' BentoML apps as in the plain FastAPI app, and everything it loads is served by
the gateway itself (no CDN, no tracking script, no badge from another host)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import pytest
from fastapi.testclient import TestClient

from hearth import __version__
from hearth.features.online import InputDomain
from hearth.serving.docs_page import CSP, INIT_JS
from hearth.serving.http import create_app
from hearth.serving.schemas import BatchIn, FeedbackIn, TransactionIn

BASE = "http://testserver"
THIRD_PARTY = ("googletagmanager", "google-analytics", "github.com", "bentoml.com", "cdn")


class _Links(HTMLParser):
    """Every URL the page makes the browser load or link to."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "action", "data", "poster") and value is not None:
                self.urls.append(value)
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1


@pytest.fixture(params=["fastapi", "monolith", "gateway"])
def client(request: pytest.FixtureRequest, bentoml_app_metrics: None) -> Iterator[TestClient]:
    """The app a person reaches: Hearth's FastAPI app alone, or mounted on either topology's
    BentoML service (whose own routes include a stock `/`)."""
    app: Any
    if request.param == "fastapi":
        app = create_app(lambda: None, lambda: None, lambda: None)  # type: ignore[arg-type,return-value]
    elif request.param == "monolith":
        from bentos.monolith import Monolith

        app = Monolith.to_asgi()
    else:
        from bentos.gateway import Gateway

        app = Gateway.to_asgi()
    yield TestClient(app, base_url=BASE)


def _local(url: str, page: str) -> str:
    """`url` resolved against `page`; fails unless it stays on this server (or is data:)."""
    if url.startswith("data:"):
        return url
    absolute = urljoin(page, url)
    assert urlsplit(absolute).netloc == urlsplit(BASE).netloc, f"{url} leaves the server"
    return absolute


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_the_page_and_all_it_loads_are_served_here(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert f"<title>Hearth fraud scoring API {__version__}</title>" in html
    lowered = html.lower()
    assert not [word for word in THIRD_PARTY if word in lowered]
    assert "bentoml" not in lowered and "//" not in html.replace("<!--", "")
    # The browser enforces it too: nothing loads from another host.
    csp = page.headers["content-security-policy"]
    assert csp == CSP and "http" not in csp and "*" not in csp
    links = _Links()
    links.feed(html)
    assert links.inline_scripts == 0  # script-src 'self' would block one
    urls = {_local(u, f"{BASE}{path}") for u in links.urls}
    assert f"{BASE}/openapi.json" in urls  # Hearth's document, not BentoML's /docs.json
    for url in urls - {"data:,"}:
        asset = client.get(url)
        assert asset.status_code == 200, url
        if url.endswith(".css"):  # what a stylesheet loads: its own data: images only
            for ref in re.findall(r"url\(\s*['\"]?([^'\")]+)", asset.text):
                _local(ref, url)
    assert client.get("/docs/assets/index.css").status_code == 404  # only what the page uses


def test_the_initializer_reads_hearths_document_and_calls_this_server() -> None:
    assert "http" not in INIT_JS.replace("window.location.href", "")
    assert 'new URL("openapi.json", base)' in INIT_JS
    assert "validatorUrl: null" in INIT_JS  # no badge from validator.swagger.io
    assert "docs.json" not in INIT_JS


def test_the_document_names_the_api_key_and_carries_valid_examples(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["info"] == {"title": "Hearth fraud scoring API", "version": __version__}
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["AdminToken"]["name"] == "X-Admin-Token"
    paths = doc["paths"]
    assert {"/", "/docs"}.isdisjoint(paths)
    for path, model in (("/predict", TransactionIn), ("/predict_batch", BatchIn)):
        operation = paths[path]["post"]
        assert operation["security"] == [{"ApiKey": []}]
        example = operation["requestBody"]["content"]["application/json"]["schema"]["example"]
        body = model.model_validate(example)
        txns = body.transactions if isinstance(body, BatchIn) else [body]  # type: ignore[attr-defined]
        for txn in txns:  # in the domain once the page has moved the timestamp to now
            fresh = txn.model_copy(update={"timestamp": "2026-01-15T11:59:00"})
            domain = InputDomain(max_behind_s=30 * 86400, clock=lambda: 1768478400.0)
            assert domain.problems(fresh.to_transaction()) == []
    feedback = paths["/feedback"]["post"]["requestBody"]["content"]["application/json"]
    FeedbackIn.model_validate(feedback["schema"]["example"])
    assert paths["/admin/rollout"]["get"]["security"] == [{"AdminToken": []}]
