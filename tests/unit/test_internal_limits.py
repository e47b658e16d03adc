"""The features and model services check their input as the gateway does (issue #11).

On the hop (`features_app`, `model_app`) and on their BentoML APIs (`internal_first` caps
the body before BentoML reads it): 413 for a body or batch over the limit, 400 for what is
not JSON, 422 naming the field out of the input domain, never a 500 or a write.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from hearth.features.online import InputDomain, InvalidTransaction
from hearth.features.store import SQLiteStore, StoreError
from hearth.serving.auth import INTERNAL_TOKEN_HEADER
from hearth.serving.internal import features_app, internal_first, model_app
from hearth.serving.internal_client import PREFIX, FeaturesCalls, InternalClient
from hearth.serving.limits import InternalLimits
from hearth.serving.schemas import Score, ScoreItem
from tests.helpers import UvicornThread

TOKEN = "t0ken"
LIMITS = InternalLimits(max_body_bytes=8192, max_items=3)
TXN = {
    "transaction_id": "t1", "timestamp": "2026-02-01T12:00:00", "customer_id": "c1",
    "merchant_id": "m1", "merchant_category": "grocery", "amount": 25.5, "currency": "EUR",
    "channel": "pos", "device_id": "d1", "latitude": 48.1, "longitude": 11.5,
}  # fmt: skip


class Lane:
    def __init__(self) -> None:
        self.items: list[ScoreItem] = []

    async def submit(self, items: list[ScoreItem]) -> list[Score]:
        self.items += items
        return [Score(variant=i.variant, model_version="1", data_version="d") for i in items]


async def _bentoml(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"bentoml read {len(await request.body())} bytes")


BENTOML_APP = Starlette(routes=[Route("/{path:path}", _bentoml, methods=["GET", "POST"])])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "online.sqlite")
    yield s
    s.close()


@pytest.fixture
def features(store: SQLiteStore) -> Iterator[TestClient]:
    app = internal_first(
        BENTOML_APP, features_app(lambda: store, lambda: True, lambda: LIMITS), token=TOKEN
    )
    with TestClient(app, headers={INTERNAL_TOKEN_HEADER: TOKEN}) as client:
        yield client


@pytest.fixture
def lane() -> Lane:
    return Lane()


@pytest.fixture
def model(lane: Lane) -> Iterator[TestClient]:
    app = internal_first(
        BENTOML_APP, model_app(lambda _: lane, lambda: True, limits=lambda: LIMITS), token=TOKEN
    )  # type: ignore[arg-type]
    with TestClient(app, headers={INTERNAL_TOKEN_HEADER: TOKEN}) as client:
        yield client


def _observe(client: TestClient, body: Any) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return client.post(f"{PREFIX}/observe", content=raw)


def test_observe_accepts_what_the_gateway_accepts(features: TestClient) -> None:
    r = _observe(features, [TXN])
    assert r.status_code == 200, r.text
    assert r.json()[0]["cold_start"] is True


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ([{**TXN, "customer_id": "   "}], 422, "0.customer_id"),
        ([TXN, {**TXN, "amount": 1e308}], 422, "1.amount"),
        ([{**TXN, "timestamp": "9999-01-01T00:00:00"}], 422, "0.timestamp"),
        ([{**TXN, "customer_id": 42}], 422, "0.customer_id"),
        ([{**TXN, "extra": 1}], 422, "0.extra"),
        ([TXN] * 4, 413, None),  # over max_items
        (b"[" * 3000 + b"]" * 3000, 400, None),  # too deep
        (b"{not json", 400, None),
        ({"not": "a list"}, 400, None),
    ],
)
def test_observe_refuses_bad_input_without_writing(
    features: TestClient, store: SQLiteStore, body: Any, status: int, field: str | None
) -> None:
    r = _observe(features, body)
    assert r.status_code == status, r.text
    if field is not None:
        assert [p["field"] for p in r.json()["problems"]] == [field]
    assert store.count() == 0


def test_bodies_over_the_limit_are_413_on_the_hop_and_the_bentoml_apis(
    features: TestClient, model: TestClient
) -> None:
    huge = b"x" * 100_000
    for client, path in ((features, f"{PREFIX}/observe"), (model, f"{PREFIX}/predict")):
        r = client.post(path, content=huge)
        assert r.status_code == 413 and "over 8192 bytes" in r.json()["error"]
    # A BentoML API (`/observe`, `/predict`) gets the cap before BentoML reads the body.
    assert features.post("/observe", content=huge).status_code == 413
    assert features.post("/observe", content=b"[1]").text == "bentoml read 3 bytes"
    assert model.post("/predict", content=iter([b"x" * 5000] * 3)).status_code == 413


def _items(n: int, **features: Any) -> bytes:
    row = {"log_amount": 1.0, "channel": "pos", **features}
    return json.dumps([{"variant": "champion", "features": row}] * n).encode()


def test_model_routes_refuse_bad_items(model: TestClient, lane: Lane) -> None:
    assert model.post(f"{PREFIX}/predict", content=_items(2)).status_code == 200
    assert len(lane.items) == 2
    for body, status in (
        (_items(4), 413),
        (_items(1).replace(b"1.0", b"NaN"), 422),
        (_items(1).replace(b"1.0", b"Infinity"), 422),
        (_items(1, channel="x" * 500), 422),
        (b'[{"variant": "champion"}]', 422),
        (b"[{", 400),
    ):
        r = model.post(f"{PREFIX}/predict_challenger", content=body)
        assert r.status_code == status, (body[:60], r.text)
        assert "error" in r.json()
    assert len(lane.items) == 2  # nothing refused reached the lane


def test_an_unexpected_error_is_a_logged_json_500(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> Any:
        raise KeyError("a bug")

    app = features_app(broken, lambda: True, lambda: LIMITS)
    with TestClient(app) as client, caplog.at_level("ERROR"):
        r = client.post(f"{PREFIX}/observe", content=json.dumps([TXN]).encode())
    assert r.status_code == 500 and "error" in r.json()
    assert any(rec.exc_info for rec in caplog.records)


def test_a_refusal_by_the_features_service_is_a_422_at_the_gateway(tmp_path: Path) -> None:
    """The service's own domain (a stricter clock, say) refuses what the gateway let
    through: its client raises InvalidTransaction (→ 422), not a 503."""
    store = SQLiteStore(tmp_path / "s.sqlite", domain=InputDomain(max_amount=10))
    app = internal_first(BENTOML_APP, features_app(lambda: store, lambda: True), token=TOKEN)

    async def go(url: str) -> None:
        client = InternalClient(url, token=TOKEN)
        try:
            with pytest.raises(InvalidTransaction) as refused:
                await FeaturesCalls(client).observe([TXN])
        finally:
            await client.close()
        assert [f for f, _ in refused.value.problems] == ["amount"]

    with UvicornThread(app) as server:
        asyncio.run(go(server.url))
    store.close()


def test_the_features_services_bentoml_api_checks_as_its_hop_does(
    settings: Any, monkeypatch: pytest.MonkeyPatch, bentoml_app_metrics: None
) -> None:
    """The real Features service (its BentoML app behind `internal_first`)."""
    import time

    from bentos.features import Features

    token = "t" * 32
    monkeypatch.setenv("HEARTH_INTERNAL_TOKEN", token)
    with TestClient(Features.to_asgi(), headers={INTERNAL_TOKEN_HEADER: token}) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the store did not load"
            time.sleep(0.1)
        first = client.post("/observe", json={"transactions": [TXN]})
        assert first.status_code == 200 and first.json()[0]["cold_start"] is True
        later = {**TXN, "transaction_id": "t2", "timestamp": "2026-02-01T12:05:00"}
        second = client.post("/observe", json={"transactions": [later]}).json()[0]
        assert second["cold_start"] is False  # the first one was stored
        assert second["features"] != first.json()[0]["features"]
        bad = client.post("/observe", json={"transactions": [{**TXN, "amount": 1e308}]})
        assert bad.status_code == 422 and "0.amount: must be > 0" in bad.text
        many = client.post("/observe", json={"transactions": [TXN] * 1001})
        assert many.status_code == 413 and "HEARTH_MAX_BATCH" in many.text
        assert client.post("/observe", content=b"x" * 2_000_000).status_code == 413

        async def store_down(*_: Any) -> None:
            raise StoreError("the online store at /nowhere is gone")

        # The store's trouble is a 503 (retry later), not a 500; BentoML words every 5xx
        # alike. The store itself is not under test here: its failures are in test_store_*.
        monkeypatch.setattr("bentos.features.observe_from_loop", store_down)
        assert client.post("/observe", json={"transactions": [TXN]}).status_code == 503
