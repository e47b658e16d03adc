"""The gateway's HTTP contract, in-process: statuses, field-naming errors, auth, limits.

A real `Gateway` runs over the real SQLite online store and a fake model (the scores do not
matter here); the integration tests run the same contract against real servers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import ASGIApp

from hearth.config import Settings
from hearth.features.store import open_store
from hearth.serving.dependencies import Background, LocalFeatures
from hearth.serving.errors import ModelUnavailable
from hearth.serving.gateway import Gateway
from hearth.serving.http import HttpPolicy, create_app, lean_front
from hearth.serving.schemas import Score, ScoreItem
from hearth.traffic.prediction_log import PredictionLog

KEY = "k-123"
TXN = {
    "transaction_id": "t1",
    "timestamp": "2026-02-01T12:00:00",
    "customer_id": "c1",
    "merchant_id": "m1",
    "merchant_category": "grocery",
    "amount": 25.5,
    "currency": "EUR",
    "channel": "pos",
    "device_id": "d1",
    "latitude": 48.1,
    "longitude": 11.5,
}


class FakeModel:
    """Scores by amount; can be switched off to play a dead model service."""

    def __init__(self) -> None:
        self.up = True

    async def score(self, items: list[ScoreItem]) -> list[Score]:
        if not self.up:
            raise ModelUnavailable("model service unavailable")
        return [
            Score(
                variant=i.variant,
                model_version="7",
                data_version="abc.dir",
                probability=min(1.0, float(i.features["log_amount"]) / 10),
                decision="approve",
            )
            for i in items
        ]

    async def ready(self) -> bool:
        return self.up


def _loaded(value: Any) -> Background[Any]:
    bg: Background[Any] = Background("test", lambda: value)
    bg.join()
    return bg


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


def _front(app: FastAPI, front: str) -> ASGIApp:
    """The app as FastAPI serves it, or behind the lean path that the services run."""
    return lean_front(app, app) if front == "lean" else app


# Every test on `client` runs twice: through FastAPI, and on the lean path
# (hearth.serving.public) that the services answer the scoring routes on; same answers.
@pytest.fixture(params=["fastapi", "lean"])
def client(
    settings: Settings, model: FakeModel, request: pytest.FixtureRequest
) -> Iterator[TestClient]:
    store = open_store(settings)
    log = PredictionLog(settings.serving_dir / "serving.sqlite")
    gateway = Gateway(LocalFeatures(_loaded(store)), model, _loaded(log))
    app = create_app(lambda: gateway, lambda: HttpPolicy(KEY, max_payload_bytes=4096))
    with TestClient(_front(app, request.param)) as c:
        c.headers["X-API-Key"] = KEY
        yield c
    store.close()


def _post(client: TestClient, body: Any, path: str = "/predict", **kw: Any) -> Any:
    return client.post(path, content=json.dumps(body), **kw)


def test_predict_answers_with_lineage_and_cold_start(client: TestClient) -> None:
    r = _post(client, TXN)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["transaction_id"] == "t1"
    assert (body["variant"], body["model_version"], body["data_version"]) == (
        "champion",
        "7",
        "abc.dir",
    )
    assert body["cold_start"] is True and len(body["request_id"]) == 32
    # The customer is known now.
    again = _post(client, {**TXN, "transaction_id": "t2"}).json()
    assert again["cold_start"] is False


def test_every_answer_names_the_worker_that_gave_it(client: TestClient) -> None:
    import os

    for r in (_post(client, TXN), _post(client, {"x": 1})):
        assert r.headers["X-Hearth-Worker"] == str(os.getpid())
        assert r.headers["content-type"] == "application/json"


def test_the_lean_path_writes_an_access_log_line_with_the_request_id(
    settings: Settings, model: FakeModel, caplog: pytest.LogCaptureFixture
) -> None:
    from hearth.observability.logging import ContextFilter

    store = open_store(settings)
    log = PredictionLog(settings.serving_dir / "serving.sqlite")
    gateway = Gateway(LocalFeatures(_loaded(store)), model, _loaded(log))
    public = create_app(lambda: gateway, lambda: HttpPolicy(KEY, 4096))
    app = lean_front(public, public)
    caplog.handler.addFilter(ContextFilter())
    with TestClient(app) as client, caplog.at_level("INFO", logger="bentoml.access"):
        answer = _post(client, TXN, headers={"X-API-Key": KEY}).json()
    store.close()
    lines = [r for r in caplog.records if r.name == "bentoml.access"]
    assert len(lines) == 1 and "path=/predict" in lines[0].getMessage()
    assert "status=200" in lines[0].getMessage()
    assert getattr(lines[0], "request_id", None) == answer["request_id"]


def test_batch_scores_in_order(client: TestClient) -> None:
    txns = [{**TXN, "transaction_id": f"b{i}", "customer_id": "cb"} for i in range(3)]
    r = _post(client, {"transactions": txns}, "/predict_batch")
    assert r.status_code == 200, r.text
    out = r.json()["predictions"]
    assert [p["transaction_id"] for p in out] == ["b0", "b1", "b2"]
    assert len({p["request_id"] for p in out}) == 1


def test_auth(client: TestClient) -> None:
    assert (
        client.post("/predict", content=json.dumps(TXN), headers={"X-API-Key": ""}).status_code
        == 401
    )
    del client.headers["X-API-Key"]
    assert _post(client, TXN).status_code == 401
    assert _post(client, TXN, headers={"X-API-Key": "nope"}).status_code == 403


def test_invalid_json_is_400(client: TestClient) -> None:
    r = client.post("/predict", content=b"{not json")
    assert r.status_code == 400
    assert "invalid JSON" in r.json()["error"]


def test_oversized_body_is_413(client: TestClient) -> None:
    r = _post(client, {**TXN, "merchant_id": "m" * 5000})
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": -5}, "amount"),
        ({"amount": "12"}, "amount"),
        ({"currency": "XYZ"}, "currency"),
        ({"timestamp": "01/02/2026 12:00"}, "timestamp"),
        ({"channel": "fax"}, "channel"),
        ({"latitude": 123.0}, "latitude"),
        ({"customer_id": 42}, "customer_id"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_bad_field_is_422_naming_it(client: TestClient, change: dict, field: str) -> None:
    r = _post(client, {**TXN, **change})
    assert r.status_code == 422, r.text
    assert [p["field"] for p in r.json()["problems"]] == [field]


def test_missing_and_non_finite_fields_are_422(client: TestClient) -> None:
    missing = {k: v for k, v in TXN.items() if k != "device_id"}
    assert _post(client, missing).json()["problems"][0]["field"] == "device_id"
    # Python's json accepts NaN/Infinity tokens; the schema must not.
    for token in ("NaN", "Infinity"):
        raw = json.dumps(TXN).replace("25.5", token)
        r = client.post("/predict", content=raw)
        assert r.status_code == 422 and r.json()["problems"][0]["field"] == "amount"


def test_batch_field_errors_name_the_item(client: TestClient) -> None:
    r = _post(client, {"transactions": [TXN, {**TXN, "currency": "ZZZ"}]}, "/predict_batch")
    assert r.status_code == 422
    assert r.json()["problems"][0]["field"] == "transactions.1.currency"


def test_model_down_is_503_with_retry_after(client: TestClient, model: FakeModel) -> None:
    model.up = False
    r = _post(client, TXN)
    assert r.status_code == 503
    assert int(r.headers["Retry-After"]) >= 1


def test_feedback_is_stored_and_matched(client: TestClient, settings: Settings) -> None:
    _post(client, TXN)
    r = _post(client, {"transaction_id": "t1", "is_fraud": True}, "/feedback")
    assert r.status_code == 200 and r.json()["matched_prediction"] is True
    unknown = _post(client, {"transaction_id": "nope", "is_fraud": False}, "/feedback")
    assert unknown.json()["matched_prediction"] is False
    log = PredictionLog(settings.serving_dir / "serving.sqlite")
    assert [r["transaction_id"] for r in log.rows("feedback")] == ["t1", "nope"]
    assert log.rows("predictions")[0]["variant"] == "champion"


def test_serving_logic_does_not_import_bentoml_or_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, hearth.serving.http, hearth.serving.graph, hearth.serving.packaging; "
        "print(sorted(m for m in ('bentoml', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_openapi_documents_the_routes(client: TestClient, tmp_path: Path) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/predict_batch", "/feedback"} <= set(paths)
    assert "requestBody" in paths["/predict"]["post"]


class GatedModel(FakeModel):
    """Holds every call until `gate` opens: requests pile up in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0

    async def score(self, items: list[ScoreItem]) -> list[Score]:
        self.waiting += 1
        await self.gate.wait()
        return await super().score(items)


@pytest.mark.parametrize("front", ["fastapi", "lean"])
def test_past_max_in_flight_answers_503_at_once_and_recovers(
    settings: Settings, front: str
) -> None:
    store = open_store(settings)
    model = GatedModel()
    log = PredictionLog(settings.serving_dir / "serving.sqlite")
    gateway = Gateway(LocalFeatures(_loaded(store)), model, _loaded(log))
    policy = HttpPolicy(KEY, max_payload_bytes=4096, max_in_flight=2)
    app = _front(create_app(lambda: gateway, lambda: policy), front)

    async def scenario() -> tuple[list[int], httpx.Response, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            client.headers["X-API-Key"] = KEY

            def send(i: int) -> Any:
                return client.post("/predict", json={**TXN, "transaction_id": f"t{i}"})

            held = [asyncio.create_task(send(i)) for i in range(2)]
            while model.waiting < 2:  # both are inside the gateway, waiting on the model
                await asyncio.sleep(0.01)
            async with asyncio.timeout(5):  # answered while the two are still held
                refused = await send(3)
            model.gate.set()
            done = [(await t).status_code for t in held]
            after = (await send(4)).status_code
        return done, refused, after

    done, refused, after = asyncio.run(scenario())
    store.close()
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "1"
    assert "HEARTH_MAX_IN_FLIGHT" in refused.json()["error"]
    assert done == [200, 200]
    assert after == 200  # the slots were given back


# -- the input domain at the gate (issue #11) ---------------------------------------------------
def _app_client(settings: Settings, policy: HttpPolicy, model: Any = None) -> TestClient:
    store = open_store(settings)
    log = PredictionLog(settings.serving_dir / "serving.sqlite")
    gateway = Gateway(LocalFeatures(_loaded(store)), model or FakeModel(), _loaded(log))
    client = TestClient(create_app(lambda: gateway, lambda: policy), raise_server_exceptions=False)
    client.headers["X-API-Key"] = KEY
    return client


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("body", [_nested(40), b"[" * 2000 + b"]" * 2000, b"[" * 4000])
def test_json_nested_too_deep_is_400_not_500(client: TestClient, body: bytes) -> None:
    r = client.post("/predict", content=body)  # 2000 levels: RecursionError in json
    assert r.status_code == 400, r.text
    assert "nested deeper than 32" in r.json()["error"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customer_id": "   "}, "customer_id"),  # whitespace only: was a 500 from the store
        ({"merchant_id": "m 1"}, "merchant_id"),
        ({"device_id": "d\n1"}, "device_id"),
        ({"transaction_id": "t" * 129}, "transaction_id"),
        ({"customer_id": ""}, "customer_id"),
        ({"amount": 1e308}, "amount"),  # was stored, and overflowed float32 sums later
        ({"amount": 1e9 + 1}, "amount"),
        ({"timestamp": "9999-12-31T23:59:59"}, "timestamp"),  # was the customer's "newest"
        ({"timestamp": "2026-2-01T12:00:00"}, "timestamp"),
    ],
)
def test_out_of_domain_is_422_naming_the_field(
    client: TestClient, change: dict, field: str
) -> None:
    r = _post(client, {**TXN, **change})
    assert r.status_code == 422, r.text
    assert [p["field"] for p in r.json()["problems"]] == [field]


def test_the_domain_is_configurable(settings: Settings) -> None:
    from datetime import UTC, datetime, timedelta

    from hearth.features.online import InputDomain

    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    domain = InputDomain(max_amount=100, max_ahead_s=60, max_behind_s=3600)
    client = _app_client(settings, HttpPolicy(KEY, 4096, domain=domain))

    def at(when: datetime, **change: Any) -> dict[str, Any]:
        return {**TXN, **change, "timestamp": when.strftime("%Y-%m-%dT%H:%M:%S")}

    assert _post(client, at(now, amount=100.0)).status_code == 200
    for body, field in (
        (at(now, amount=100.5, transaction_id="t2"), "amount"),
        (at(now + timedelta(minutes=5), transaction_id="t3"), "timestamp"),
        (at(now - timedelta(hours=2), transaction_id="t4"), "timestamp"),
    ):
        r = _post(client, body)
        assert r.status_code == 422, r.text
        assert r.json()["problems"][0]["field"] == field
        assert "server's clock" in r.text or "<= 100" in r.text
    batch = {"transactions": [at(now, transaction_id="t5"), at(now, amount=1e6)]}
    r = _post(client, batch, "/predict_batch")
    assert r.status_code == 422 and r.json()["problems"][0]["field"] == "transactions.1.amount"


def test_settings_configure_the_domain(settings: Settings) -> None:
    policy = HttpPolicy.from_settings(
        settings.model_copy(update={"max_amount": 5.0, "max_clock_skew_s": 1.0, "max_batch": 7})
    )
    assert (policy.domain.max_amount, policy.domain.max_ahead_s) == (5.0, 1.0)
    assert policy.max_batch == 7
    assert policy.domain.max_behind_s is None  # development: demos replay past periods
    prod = settings.model_copy(update={"env": "production"})
    assert HttpPolicy.from_settings(prod).domain.max_behind_s == 30 * 86400  # the store's


def test_a_batch_over_the_limit_is_413_before_validation(settings: Settings) -> None:
    client = _app_client(settings, HttpPolicy(KEY, 4096, max_batch=3))
    r = _post(client, {"transactions": [{"x": i} for i in range(4)]}, "/predict_batch")
    assert r.status_code == 413, r.text
    assert "HEARTH_MAX_BATCH" in r.json()["error"]


def test_a_body_far_over_the_limit_is_read_and_answered_413(client: TestClient) -> None:
    r = client.post("/predict_batch", content=b"x" * (4 * 1024 * 1024))
    assert r.status_code == 413
    assert "HEARTH_MAX_PAYLOAD_BYTES" in r.json()["error"]


def test_an_unexpected_error_is_a_json_500_with_the_request_id(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(FakeModel):
        async def score(self, items: list[ScoreItem]) -> list[Score]:
            raise KeyError("a bug")

    client = _app_client(settings, HttpPolicy(KEY, 4096), Broken())
    with caplog.at_level("ERROR"):
        r = _post(client, TXN)
    assert r.status_code == 500
    body = r.json()
    assert len(body["request_id"]) == 32 and body["request_id"] in body["error"]
    logged = [rec for rec in caplog.records if body["request_id"] in rec.getMessage()]
    assert logged and logged[0].exc_info is not None  # with its traceback


def test_the_store_refuses_what_the_gate_let_through(settings: Settings) -> None:
    """Defence in depth: a gate configured wider than its store still writes nothing."""
    from hearth.features.online import InputDomain

    client = _app_client(settings, HttpPolicy(KEY, 4096, domain=InputDomain(max_amount=1e12)))
    r = _post(client, {**TXN, "amount": 1e10})
    assert r.status_code == 422, r.text
    assert r.json()["problems"][0]["field"] == "amount"
    store = open_store(settings)
    assert store.get("c1") is None
    store.close()


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _assert_valid_openapi(doc: dict[str, Any]) -> None:
    from openapi_spec_validator import validate

    doc = json.loads(json.dumps(doc))  # as served
    assert doc["openapi"].startswith("3.0.")
    validate(doc)  # as the version it declares
    for ref in _refs(doc):
        _resolve(doc, ref)  # every reference resolves


def test_openapi_json_validates_as_its_version(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    _assert_valid_openapi(doc)
    batch = doc["paths"]["/predict_batch"]["post"]
    items = batch["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert items["transactions"]["items"]["properties"]["amount"]["exclusiveMinimum"] is True
    assert {"400", "413", "422", "500", "503"} <= set(batch["responses"])


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("monolith", "Monolith"),
        ("gateway", "Gateway"),
        ("features", "Features"),
        ("model", "Model"),
    ],
)
def test_bentoml_docs_json_validates_as_its_version(module: str, name: str) -> None:
    import importlib

    service = getattr(importlib.import_module(f"bentos.{module}"), name)
    _assert_valid_openapi(service.openapi_spec.asdict())


def test_decide_never_approves_a_non_finite_probability() -> None:
    from hearth.serving.pool import decide

    for bad in (float("nan"), float("inf"), -0.1, 1.5):
        with pytest.raises(ValueError, match="not a number in"):
            decide(bad, 0.3, 0.7)
    assert decide(0.0, 0.3, 0.7) == "approve"


def test_an_unexpected_error_on_an_admin_route_is_a_json_500_too(settings: Settings) -> None:
    from hearth.serving.admin import Admin

    class Ops:
        def status(self) -> dict[str, Any]:
            raise KeyError("a bug in the rollout controls")

    store = open_store(settings)
    log = PredictionLog(settings.serving_dir / "serving.sqlite")
    gateway = Gateway(LocalFeatures(_loaded(store)), FakeModel(), _loaded(log))
    admin = Admin(Ops)  # type: ignore[arg-type]
    policy = HttpPolicy(KEY, 4096, admin_token="adm")
    app = create_app(lambda: gateway, lambda: policy, lambda: admin)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/admin/rollout", headers={"X-Admin-Token": "adm"})
        unknown = client.get("/no/such/route")
    store.close()
    assert r.status_code == 500, r.text
    assert len(r.json()["request_id"]) == 32
    assert unknown.status_code == 404  # not an error: Starlette's own answer


@pytest.mark.parametrize(
    "text",
    ["2026-02-01T12:00:00", "2026-02-30T12:00:00", "2026-2-01T12:00:00", "2026-02-01 12:00:00",
     "2026-02-01T12:00+01", "2026-02-01T12:00:0Z", "2026-02-01T25:00:00", "٢٠٢٦-02-01T12:00:00",
     "2026-02-01T12:00:00Z", ""],
)  # fmt: skip
def test_the_fast_timestamp_parse_agrees_with_strptime(text: str) -> None:
    from datetime import datetime

    from hearth.schema import TIMESTAMP_FORMAT, parse_timestamp

    try:
        expected: object = datetime.strptime(text, TIMESTAMP_FORMAT)
    except ValueError:
        expected = ValueError
    try:
        got: object = parse_timestamp(text)
    except ValueError:
        got = ValueError
    assert got == expected
