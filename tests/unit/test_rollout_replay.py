"""The traffic replay against a tiny ASGI gateway (uvicorn on loopback), and its loader."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from hearth.rollout.replay import (
    LabelledTransaction,
    ReplayConfig,
    load_transactions,
    replay,
)
from hearth.serving.schemas import transaction_payload


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeGateway:
    """/predict and /feedback with the real API's shapes; remembers what it saw and when."""

    def __init__(self, fail_every: int = 0) -> None:
        self.predicted: list[tuple[float, dict[str, Any]]] = []
        self.labels: list[tuple[float, str, bool]] = []
        self.fail_every = fail_every
        app = FastAPI()

        @app.post("/predict")
        async def predict(request: Request) -> Any:
            assert request.headers["X-API-Key"] == "k"
            body = await request.json()
            self.predicted.append((time.monotonic(), body))
            if self.fail_every and len(self.predicted) % self.fail_every == 0:
                return JSONResponse({"error": "unavailable"}, status_code=503)
            variant = "challenger" if body["customer_id"].endswith("1") else "champion"
            return {"transaction_id": body["transaction_id"], "variant": variant}

        @app.post("/feedback")
        async def feedback(request: Request) -> Any:
            body = await request.json()
            self.labels.append((time.monotonic(), body["transaction_id"], body["is_fraud"]))
            return {"transaction_id": body["transaction_id"], "matched_prediction": True}

        self.app = app


@pytest.fixture
def gateway() -> Iterator[tuple[FakeGateway, str]]:
    import uvicorn

    fake = FakeGateway(fail_every=10)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(fake.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield fake, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _txns(n: int, customers: int = 5) -> list[LabelledTransaction]:
    return [
        LabelledTransaction(
            {
                "transaction_id": f"t{i:04d}",
                "customer_id": f"c{i % customers}",
                "timestamp": f"2026-03-01T12:{i // 60:02d}:{i % 60:02d}",
            },
            i % 7 == 0,
        )
        for i in range(n)
    ]


def test_replay_keeps_customer_order_and_posts_labels_after_the_delay(
    gateway: tuple[FakeGateway, str],
) -> None:
    fake, url = gateway
    txns = _txns(60)
    config = ReplayConfig(url=url, api_key="k", concurrency=4, feedback_delay_s=0.3)
    seen: list[int] = []
    result = replay(txns, config, progress=lambda r: seen.append(r.sent))
    assert result.sent == 60 and result.answered == 54
    assert result.failed == {"503": 6}
    assert result.variants["challenger"] + result.variants["champion"] == 54
    assert result.labels_posted == result.labels_matched == 54  # failed ones get no label
    assert seen, "progress was reported"
    # Each customer's transactions arrived in their timestamp order.
    for c in range(5):
        ids = [b["transaction_id"] for _, b in fake.predicted if b["customer_id"] == f"c{c}"]
        assert ids == sorted(ids)
    # A label arrives no earlier than the delay after its prediction.
    predicted_at = {b["transaction_id"]: t for t, b in fake.predicted}
    for at, tid, is_fraud in fake.labels:
        assert at - predicted_at[tid] >= 0.3 - 0.01
        assert is_fraud == (int(tid[1:]) % 7 == 0)


def test_replay_stops_at_its_bounds(gateway: tuple[FakeGateway, str]) -> None:
    _, url = gateway
    counted = replay(_txns(50), ReplayConfig(url=url, api_key="k", max_requests=12,
                                             feedback_delay_s=0))  # fmt: skip
    assert counted.sent == 12 and counted.stopped_by == "max_requests 12"
    began = time.monotonic()
    paced = replay(_txns(500), ReplayConfig(url=url, api_key="k", rate_per_s=20,
                                            max_seconds=0.5, feedback_delay_s=0))  # fmt: skip
    assert paced.stopped_by == "max_seconds 0.5" and paced.sent <= 12
    assert time.monotonic() - began < 3
    stop = threading.Event()
    stop.set()
    assert replay(_txns(5), ReplayConfig(url=url, api_key="k"), stop=stop).sent == 0


def test_replay_refuses_anything_but_loopback() -> None:
    with pytest.raises(ValueError, match="loopback only"):
        ReplayConfig(url="http://example.com:3000", api_key="k")
    with pytest.raises(ValueError, match="concurrency"):
        ReplayConfig(url="http://127.0.0.1:3000", api_key="k", concurrency=0)


def test_load_keeps_valid_first_seen_rows_in_time_order(tmp_path: Path) -> None:
    header = ("transaction_id,timestamp,customer_id,merchant_id,merchant_category,amount,"
              "currency,channel,device_id,latitude,longitude,is_fraud")  # fmt: skip
    good = "{tid},{ts},c1,m1,grocery,{amount},EUR,pos,d1,48.1,11.5,{label}"
    rows = [
        good.format(tid="t2", ts="2026-03-02T10:00:00", amount="12.5", label="0"),
        good.format(tid="t1", ts="2026-03-01T09:00:00", amount="99.0", label="1"),
        good.format(tid="t1", ts="2026-03-01T09:00:00", amount="99.0", label="1"),  # resent
        good.format(tid="t3", ts="2026-03-02T11:00:00", amount="abc", label="0"),  # dirty
        good.format(tid="t4", ts="yesterday", amount="5", label="0"),  # dirty
        good.format(tid="t5", ts="2026-03-02T12:00:00", amount="5", label=""),  # no label
    ]
    (tmp_path / "2026-03-02.csv").write_text("\n".join([header, *rows]) + "\n")
    loaded = load_transactions([tmp_path / "2026-03-02.csv"], transaction_payload)
    assert [t.transaction_id for t in loaded.transactions] == ["t1", "t2"]
    assert [t.is_fraud for t in loaded.transactions] == [True, False]
    assert loaded.rows == 6 and loaded.skipped_invalid == 3 and loaded.skipped_duplicate == 1
    assert loaded.transactions[0].payload["amount"] == 99.0
    assert "is_fraud" not in loaded.transactions[0].payload
