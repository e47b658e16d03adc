"""Nothing blocks the event loop: a stalled store call, a stalled state read.

The assertions are structural, not wall-clock thresholds: an unrelated request must be
answered *while* the stalled call is still pending (on the loop, it could not even start).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from hearth.config import Settings
from hearth.features.online import Transaction
from hearth.features.store import SQLiteStore, open_store
from hearth.serving.dependencies import (
    LocalFeatures,
    OffLoop,
    RemoteVersions,
    observe_from_loop,
)
from hearth.serving.errors import FeaturesUnavailable
from hearth.serving.gateway import Gateway
from hearth.serving.http import HttpPolicy, create_app
from hearth.serving.internal import features_app, model_app
from hearth.serving.internal_client import OBSERVE, PREFIX, VERSIONS
from hearth.storage.sqlite import SQLiteFile, WouldBlock
from hearth.traffic.follower import Follower
from hearth.traffic.prediction_log import PredictionLog
from hearth.traffic.rollout_state import Served
from tests.unit.test_serving_http import KEY, TXN, FakeModel, _loaded

STUCK = "stuck-customer"


class StallingStore:
    """The real SQLite store, except that observing STUCK's transactions waits for `release`
    (a store call stuck on a lock, a busy timeout, a hung Redis); on the event loop
    (`observe_nowait`) it would have to wait, so it says so."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.stalled = threading.Event()
        self.release = threading.Event()

    def observe(self, txn: Transaction) -> Any:
        if txn.customer_id == STUCK:
            self.stalled.set()
            self.release.wait(30)
        return self.real.observe(txn)

    def observe_nowait(self, txn: Transaction) -> Any:
        if txn.customer_id == STUCK:
            raise WouldBlock("stuck")
        return self.real.observe_nowait(txn)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.fixture
def stalling(settings: Settings) -> Iterator[StallingStore]:
    store = StallingStore(open_store(settings))
    yield store
    store.release.set()
    store.real.close()


def _app(settings: Settings, store: StallingStore, timeout_s: float) -> Any:
    log = PredictionLog(settings.serving_dir / "serving.sqlite")
    features = LocalFeatures(_loaded(store), timeout_s=timeout_s)
    gateway = Gateway(features, FakeModel(), _loaded(log), timeout_s=timeout_s)
    return create_app(lambda: gateway, lambda: HttpPolicy(KEY, max_payload_bytes=4096))


async def _client(app: Any) -> httpx.AsyncClient:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    client.headers["X-API-Key"] = KEY
    return client


def test_a_stalled_store_call_does_not_delay_an_unrelated_request(
    settings: Settings, stalling: StallingStore
) -> None:
    app = _app(settings, stalling, timeout_s=30.0)

    async def scenario() -> tuple[int, bool, int]:
        async with await _client(app) as client:
            stuck = asyncio.create_task(
                client.post("/predict", json={**TXN, "customer_id": STUCK, "transaction_id": "s"})
            )
            assert await asyncio.to_thread(stalling.stalled.wait, 10), "never reached the store"
            async with asyncio.timeout(10):  # a guard against a hang, not the measure
                other = await client.post("/predict", json={**TXN, "transaction_id": "o"})
            still_pending = not stuck.done()
            stalling.release.set()
            return other.status_code, still_pending, (await stuck).status_code

    other, still_pending, stuck = asyncio.run(scenario())
    assert other == 200
    assert still_pending, "the unrelated request was answered only after the stall ended"
    assert stuck == 200  # the stalled one completes once the store answers


def test_a_store_call_past_its_timeout_is_503_with_retry_after(
    settings: Settings, stalling: StallingStore
) -> None:
    app = _app(settings, stalling, timeout_s=0.2)

    async def scenario() -> tuple[httpx.Response, bool, int]:
        async with await _client(app) as client:
            async with asyncio.timeout(10):
                stuck = await client.post(
                    "/predict", json={**TXN, "customer_id": STUCK, "transaction_id": "s"}
                )
                still_stalled = not stalling.release.is_set()
                after = await client.post("/predict", json={**TXN, "transaction_id": "o"})
        return stuck, still_stalled, after.status_code

    stuck, still_stalled, after = asyncio.run(scenario())
    assert still_stalled  # answered while the store call was still stuck: no hang
    assert stuck.status_code == 503, stuck.text
    assert stuck.headers["Retry-After"] == "1"
    assert "did not answer within 0.2s" in stuck.json()["error"]
    assert after == 200  # other customers are served meanwhile


class CountingCalls(OffLoop):
    """An `OffLoop` that records the transactions it was handed."""

    def __init__(self) -> None:
        super().__init__("feature-store", timeout_s=10.0)
        self.handed: list[list[str]] = []

    async def run(self, unavailable: Any, fn: Any, *args: Any) -> Any:
        self.handed.append([t.transaction_id for t in args[1]])
        return await super().run(unavailable, fn, *args)


def _txns(*ids: str) -> list[Transaction]:
    from tests.unit.test_store import T0, txn

    return [txn("C1", T0 + timedelta(minutes=i), tid=tid) for i, tid in enumerate(ids)]


def test_observes_that_need_not_wait_stay_on_the_loop(settings: Settings) -> None:
    store, calls = SQLiteStore(settings.online_store_path), CountingCalls()
    try:
        rows = asyncio.run(observe_from_loop(calls, FeaturesUnavailable, store, _txns("a", "b")))
        assert calls.handed == []  # no thread was asked
        assert [r.cold_start for r in rows] == [True, False]
        assert rows[1].features["n_tx_24h"] == 1  # the second saw the first
    finally:
        calls.shutdown()
        store.close()


def test_a_locked_file_sends_the_observes_to_a_thread_and_they_finish_after_it(
    settings: Settings,
) -> None:
    """Another process holds the file's write lock: the loop does not wait for it (the
    observes go to a thread, pending while it is held) and they land once it is let go."""
    store, calls = SQLiteStore(settings.online_store_path), CountingCalls()
    other = SQLiteFile(settings.online_store_path, name="other process", error=RuntimeError)
    locked, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        with other.transaction():
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()

    async def scenario() -> tuple[bool, list[Any]]:
        assert await asyncio.to_thread(locked.wait, 10)
        task = asyncio.create_task(observe_from_loop(calls, FeaturesUnavailable, store, _txns("a")))
        await asyncio.sleep(0.2)  # the loop runs on meanwhile: this sleep ends
        pending = not task.done()
        release.set()
        async with asyncio.timeout(10):  # a guard against a hang, not the measure
            return pending, await task

    try:
        pending, rows = asyncio.run(scenario())
        assert pending and calls.handed == [["a"]]
        assert rows[0].cold_start is True
        state = store.get("C1")
        assert state is not None and state.ids == ["a"]
    finally:
        release.set()
        holder.join(10)
        calls.shutdown()
        other.close()
        store.close()


class SlowState:
    """A rollout state store whose reads block until released (a hung Redis)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.reads = 0
        self.now = Served(champion_version="1", revision=1)

    def served(self) -> Served:
        self.reads += 1
        if self.reads > 1:
            self.release.wait(30)
        return self.now


def test_a_started_follower_never_reads_the_state_on_the_callers_thread() -> None:
    state = SlowState()
    follower = Follower(state, refresh_interval=0.05).start()  # type: ignore[arg-type]
    try:
        assert follower.wait_first_read(5)
        assert follower.served().champion_version == "1"
        state.now = Served(champion_version="2", revision=2)
        deadline = threading.Event()
        while state.reads < 2:  # the refresher is now stuck in its second read
            deadline.wait(0.01)
        # Stale and its refresh stuck: the caller still gets the snapshot at once.
        for _ in range(100):
            assert follower.served().champion_version == "1"
        state.release.set()
        for _ in range(500):
            if follower.served().champion_version == "2":
                break
            deadline.wait(0.01)
        assert follower.served().champion_version == "2"  # followed once the store answers
    finally:
        state.release.set()
        follower.stop()


# -- microservices: the gateway routes to a challenger once the model service holds it ------
def test_remote_versions_count_only_what_the_model_service_has_loaded() -> None:
    answers: list[list[str] | Exception | None] = [["1"], RuntimeError("down"), ["1", "2"], None]
    calls = 0

    async def fetch() -> list[str] | None:
        nonlocal calls
        answer = answers[min(calls, len(answers) - 1)]
        calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def scenario() -> list[tuple[bool, bool]]:
        versions = RemoteVersions(fetch, interval_s=0.01)
        seen = [(versions.has("1"), versions.has("2"))]  # nothing said yet: nothing loaded
        for expected_calls in (1, 2, 3, 4):
            while calls < expected_calls:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0)  # let the poll store its answer
            seen.append((versions.has("1"), versions.has("2")))
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == (False, False)
    assert seen[1] == (True, False)  # the service holds v1 only
    assert seen[2] == (True, False)  # a failed poll keeps the last answer
    assert seen[3] == (True, True)  # v2 loaded
    assert seen[4] == (True, True)  # a service that cannot say (older): as before, all


def test_the_model_services_versions_route_lists_what_it_holds() -> None:
    app = model_app(lambda path: None, lambda: True, lambda: ["1", "2"])  # type: ignore[arg-type, return-value]
    with TestClient(app) as client:
        r = client.get(PREFIX + VERSIONS)
    assert r.status_code == 200 and r.json() == ["1", "2"]


def test_the_features_service_answers_while_a_store_call_is_stalled(
    settings: Settings, stalling: StallingStore
) -> None:
    app = features_app(lambda: stalling, lambda: True)

    async def scenario() -> tuple[int, bool, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            url = PREFIX + OBSERVE
            body = [{**TXN, "customer_id": STUCK, "transaction_id": "s"}]
            stuck = asyncio.create_task(client.post(url, json=body))
            assert await asyncio.to_thread(stalling.stalled.wait, 10), "never reached the store"
            async with asyncio.timeout(10):
                other = await client.post(url, json=[{**TXN, "transaction_id": "o"}])
            still_pending = not stuck.done()
            stalling.release.set()
            return other.status_code, still_pending, (await stuck).status_code

    other, still_pending, stuck = asyncio.run(scenario())
    assert other == 200 and still_pending and stuck == 200
