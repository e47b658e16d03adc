"""Metrics under load, and a killed model service, on a real microservices server.

The load's answers are counted client-side per variant; /metrics must show exactly the
same counts (scraped before and after, so earlier traffic does not matter). Killing the
model service while requests flow gives 503 + Retry-After (never a hang), `hearth ps`
reports it, and BentoML's respawn restores service without restarting the gateway.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from hearth.launch.hearth_server import ServerProcess
from hearth.stack.process import Running, write_state
from hearth.stack.supervisor import ps
from tests.client_load import predictions_by_variant
from tests.projects import API_KEY as KEY
from tests.projects import project_servers

pytestmark = pytest.mark.slow
LOAD_S = 30.0  # the load: counting must stay exact over a sustained load


@pytest.fixture(scope="module")
def server(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with project_servers(project, tmp_path_factory, "home-metrics", ("microservices",)) as started:
        srv = started["microservices"]
        assert srv.home is not None
        # `hearth ps` reads what `hearth up` would have recorded.
        write_state(srv.home, [Running("serving", srv.pid, srv.url, f"{srv.url}/readyz",
                                       str(srv.log_path), time.time())])  # fmt: skip
        yield srv


def _tx(i: int) -> dict:
    return {
        "transaction_id": f"m-{i}", "timestamp": "2026-02-01T12:00:00",
        "customer_id": f"cust-{i % 50}", "merchant_id": "m1", "merchant_category": "grocery",
        "amount": 12.5 + i % 7, "currency": "EUR", "channel": "pos", "device_id": "d1",
        "latitude": 48.1, "longitude": 11.6,
    }  # fmt: skip


def test_a_load_shows_in_metrics_with_exact_counts_per_variant(server: ServerProcess) -> None:
    before = predictions_by_variant(server.url)
    deadline = time.monotonic() + LOAD_S

    def worker(w: int) -> Counter:
        seen: Counter = Counter()
        with httpx.Client(timeout=10) as client:
            i = w * 100_000
            while time.monotonic() < deadline:
                r = client.post(f"{server.url}/predict", json=_tx(i), headers={"X-API-Key": KEY})
                seen[r.json()["variant"] if r.status_code == 200 else r.status_code] += 1
                i += 1
        return seen

    with ThreadPoolExecutor(4) as pool:
        seen = sum((f.result() for f in [pool.submit(worker, w) for w in range(4)]), Counter())
    after = predictions_by_variant(server.url)
    answered = {v: n for v, n in seen.items() if isinstance(v, str)}
    assert answered and sum(answered.values()) > 20
    for variant, n in answered.items():
        assert after[variant] - before[variant] == n, (variant, n, before, after)
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    names = ("hearth_http_request_duration_seconds_bucket", "hearth_score_bucket",
             "hearth_feature_store_lookups_total", "hearth_model_batch_size_bucket")  # fmt: skip
    for name in names:
        assert name in text, name


def test_killing_the_model_gives_503_not_hangs_and_it_recovers(server: ServerProcess) -> None:
    gateway_pids = set(server.worker_pids("Gateway"))
    (pid,) = server.worker_pids("Model")
    os.kill(pid, signal.SIGKILL)
    statuses = []
    with httpx.Client(timeout=15) as client:
        for i in range(20):  # bounded: each answers within the model timeout, never hangs
            r = client.post(f"{server.url}/predict", json=_tx(900_000 + i),
                            headers={"X-API-Key": KEY})  # fmt: skip
            statuses.append(r.status_code)
            if r.status_code == 503:
                assert r.headers["Retry-After"].isdigit()
                break
    assert 503 in statuses, statuses
    report = ps(server.home)  # type: ignore[arg-type]
    assert report and (not report[0].healthy or f"Model:{pid}" not in report[0].detail)
    for _ in range(120):  # BentoML respawns the model worker; at most ~2 minutes
        r = httpx.post(f"{server.url}/predict", json=_tx(950_000), headers={"X-API-Key": KEY},
                       timeout=15)  # fmt: skip
        if r.status_code == 200:
            break
        time.sleep(1)
    assert r.status_code == 200, r.text
    assert set(server.worker_pids("Gateway")) == gateway_pids  # the gateway never restarted
