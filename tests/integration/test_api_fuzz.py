"""Hostile input against real gateways of both topologies (`hearth serve` on loopback).

- schemathesis, as a client that knows only the served OpenAPI document, sends bounded
  numbers of generated valid and invalid requests to every route: no answer may be a 5xx
  or break the document (status, content type and body as documented);
- the documents both topologies serve (/openapi.json, BentoML's /docs.json) validate as
  the OpenAPI version they declare;
- a few requests that used to get a 5xx or a reset, or damage state, get their 4xx.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from hearth.launch.hearth_server import ServerProcess
from tests.projects import API_KEY as KEY
from tests.projects import project_servers

pytestmark = pytest.mark.slow

TOPOLOGIES = ("monolith", "microservices")
ADMIN_TOKEN = "fuzz-admin-token"
# Per route and phase; keeps one topology's three runs around 30 s on the 2-core machine.
MAX_EXAMPLES = 10
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
    )
)
TXN = {
    "transaction_id": "fz-1", "timestamp": "2026-02-01T12:00:00", "customer_id": "fz-c1",
    "merchant_id": "m1", "merchant_category": "grocery", "amount": 12.5, "currency": "EUR",
    "channel": "pos", "device_id": "d1", "latitude": 48.1, "longitude": 11.6,
}  # fmt: skip


@pytest.fixture(scope="module")
def servers(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    with project_servers(
        project, tmp_path_factory, "fuzz", TOPOLOGIES, HEARTH_ADMIN_TOKEN=ADMIN_TOKEN
    ) as started:
        yield started


def _schemathesis(server: ServerProcess, tmp_path: Path, *args: str) -> None:
    """`schemathesis run` against the served /openapi.json; fails the test on any finding."""
    command = [
        SCHEMATHESIS, "run", f"{server.url}/openapi.json", "--checks", CHECKS,
        "--max-examples", str(MAX_EXAMPLES), "--seed", "11", "--workers", "2",
        "--request-timeout", "10", "--phases", "examples,coverage,fuzzing",
        "--report", "junit", "--report-dir", str(tmp_path), *args,
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    print(out.stdout[-1500:])  # the summary, shown with -s
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    # The document is precise enough that generated valid requests are accepted (scored),
    # so the run reaches the model and the store, not only the validation.
    assert "Schema validation mismatch" not in out.stdout, out.stdout[-3000:]


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_schemathesis_finds_no_5xx_and_nothing_off_the_document(
    servers: dict, topology: str, tmp_path: Path
) -> None:
    server = servers[topology]
    # The public routes with the API key; the admin routes without their token: every
    # answer a documented 401/403.
    _schemathesis(server, tmp_path, "-H", f"X-API-Key: {KEY}", "--exclude-path-regex", "^/admin")
    _schemathesis(server, tmp_path, "-H", "X-Admin-Token: wrong", "--include-path-regex", "^/admin")
    # The read-only admin routes with the token.
    _schemathesis(
        server, tmp_path, "-H", f"X-Admin-Token: {ADMIN_TOKEN}", "--include-method", "GET"
    )


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_served_documents_validate(servers: dict, topology: str) -> None:
    for path in ("/openapi.json", "/docs.json"):
        doc = httpx.get(f"{servers[topology].url}{path}", timeout=10).json()
        assert doc["openapi"].startswith("3.0."), path
        validate(doc)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_hostile_requests_get_their_4xx(servers: dict, topology: str) -> None:
    url, headers = servers[topology].url, {"X-API-Key": KEY}

    def post(path: str, body: bytes) -> httpx.Response:
        return httpx.post(f"{url}{path}", content=body, headers=headers, timeout=30)

    # Far over the body limit: read and answered, not a connection reset.
    huge = json.dumps({"transactions": [TXN] * 40_000}).encode()  # ~10 MB
    r = post("/predict_batch", huge)
    assert r.status_code == 413 and "HEARTH_MAX_PAYLOAD_BYTES" in r.json()["error"]
    assert post("/predict", b"[" * 3000 + b"]" * 3000).status_code == 400  # too deep
    for change, field in (
        ({"customer_id": "  "}, "customer_id"),
        ({"amount": 1e308}, "amount"),
        ({"timestamp": "9999-01-01T00:00:00"}, "timestamp"),
    ):
        r = post("/predict", json.dumps({**TXN, **change}).encode())
        assert r.status_code == 422, r.text
        assert r.json()["problems"][0]["field"] == field
    assert post("/predict", json.dumps(TXN).encode()).status_code == 200
