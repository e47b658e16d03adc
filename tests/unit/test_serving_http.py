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
from fastapi.testclient import TestClient

from hearth.config import Settings
from hearth.features.store import open_store
from hearth.serving.errors import ModelUnavailable
from hearth.serving.gateway import Background, Gateway, LocalFeatures
from hearth.serving.http import HttpPolicy, create_app
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


@pytest.fixture
def client(settings: Settings, model: FakeModel) -> Iterator[TestClient]:
    store = open_store(settings)
    log = PredictionLog(settings.serving_dir / "serving.sqlite")
    gateway = Gateway(LocalFeatures(_loaded(store)), model, _loaded(log))
    app = create_app(lambda: gateway, lambda: HttpPolicy(KEY, max_payload_bytes=4096))
    with TestClient(app) as c:
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


def test_past_max_in_flight_answers_503_at_once_and_recovers(settings: Settings) -> None:
    store = open_store(settings)
    model = GatedModel()
    log = PredictionLog(settings.serving_dir / "serving.sqlite")
    gateway = Gateway(LocalFeatures(_loaded(store)), model, _loaded(log))
    policy = HttpPolicy(KEY, max_payload_bytes=4096, max_in_flight=2)
    app = create_app(lambda: gateway, lambda: policy)

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
