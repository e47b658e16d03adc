"""A real Redis killed mid-load: 503 with Retry-After (no 500, no hang), then recovery.

Both topologies serve from a real redis-server (online store and rollout state) on
loopback. Clients send new transactions continuously; Redis is SIGKILLed, then restarted
on the same port from its last snapshot (as a Redis with persistence would come back).
While it is down every answer is a 503 carrying Retry-After, each within the client's
timeout; once it is back, requests succeed again without restarting anything.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from hearth.launch.hearth_server import ServerProcess
from tests.helpers import REDIS_SERVER, RedisServer, needs_redis
from tests.projects import API_KEY as KEY
from tests.projects import project_servers

pytestmark = [pytest.mark.slow, needs_redis]
CLIENT_TIMEOUT_S = 10.0  # a request still unanswered after this is a hang
CLIENTS = 3


class RestartableRedis(RedisServer):
    """A redis-server that can be killed and started again on the same port and directory."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        super().__init__(workdir)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def restart(self) -> None:
        self.process = subprocess.Popen(
            [str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._wait_until_ready()


@pytest.fixture(scope="module")
def redis_down_and_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path_factory.mktemp("redis-outage"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def servers(
    project: Path, tmp_path_factory: pytest.TempPathFactory, redis_down_and_up: RestartableRedis
) -> Iterator[dict[str, ServerProcess]]:
    with project_servers(
        project, tmp_path_factory, "home-redis-outage", ("monolith", "microservices"),
        HEARTH_STORE_BACKEND="redis", HEARTH_REDIS_URL=redis_down_and_up.url,
    ) as started:  # fmt: skip
        yield started


@dataclass(frozen=True)
class Answer:
    at: float
    status: int  # 0: no answer within CLIENT_TIMEOUT_S (a hang) or a broken connection
    retry_after: str | None
    error: str


class Load:
    """CLIENTS threads posting new transactions to /predict until stopped."""

    def __init__(self, url: str, tag: str) -> None:
        self.url, self.tag = url, tag
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=CLIENT_TIMEOUT_S + 5)

    def _run(self, worker: int) -> None:
        n = 0
        with httpx.Client(timeout=CLIENT_TIMEOUT_S, headers={"X-API-Key": KEY}) as client:
            while not self._stop.is_set():
                n += 1
                body = {
                    "transaction_id": f"{self.tag}-{worker}-{n}",
                    "timestamp": "2026-02-01T12:00:00", "customer_id": f"{self.tag}-c{n % 20}",
                    "merchant_id": "m1", "merchant_category": "grocery", "amount": 12.5,
                    "currency": "EUR", "channel": "pos", "device_id": "d1",
                    "latitude": 48.1, "longitude": 11.6,
                }  # fmt: skip
                try:
                    r = client.post(f"{self.url}/predict", json=body)
                    answer = Answer(time.monotonic(), r.status_code,
                                    r.headers.get("Retry-After"), r.text[:200])  # fmt: skip
                except httpx.HTTPError as exc:
                    answer = Answer(time.monotonic(), 0, None, f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.answers.append(answer)

    def since(self, at: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.at >= at]

    def wait_for(self, status: int, after: float, timeout_s: float) -> float | None:
        """When the first answer with `status` after `after` came; None if none in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            hit = next((a.at for a in self.since(after) if a.status == status), None)
            if hit is not None:
                return hit
            time.sleep(0.05)
        return None


def test_redis_killed_mid_load_gives_503_with_retry_after_and_recovers(
    servers: dict[str, ServerProcess], redis_down_and_up: RestartableRedis
) -> None:
    loads = {topology: Load(s.url, f"ro-{topology}") for topology, s in servers.items()}
    for load in loads.values():
        load.__enter__()
    try:
        start = time.monotonic()
        for topology, load in loads.items():
            assert load.wait_for(200, start, 30) is not None, servers[topology].log_tail()
        # The last snapshot of customer states and rollout state, as persistence keeps it.
        redis.Redis.from_url(redis_down_and_up.url).save()
        redis_down_and_up.kill()
        killed = time.monotonic()
        for load in loads.values():
            assert load.wait_for(503, killed, 15) is not None, "no 503 after Redis died"
        time.sleep(2.0)  # requests keep coming while Redis is down
        redis_down_and_up.restart()
        back = time.monotonic()
        recovered = {t: load.wait_for(200, back, 30) for t, load in loads.items()}
        time.sleep(1.0)
    finally:
        for load in loads.values():
            load.__exit__()

    for topology, load in loads.items():
        log = servers[topology].log_tail()
        outage = [a for a in load.since(killed) if a.at < back]
        refused = [a for a in outage if a.status != 200]
        assert refused, f"{topology}: nothing failed while Redis was down"
        bad = [a for a in load.answers if a.status not in (200, 503)]
        assert not bad, f"{topology}: not 200/503 (0 = no answer within 10 s): {bad[:3]}\n{log}"
        no_retry_after = [a for a in refused if a.retry_after is None]
        assert not no_retry_after, f"{topology}: 503 without Retry-After: {no_retry_after[:3]}"
        assert recovered[topology] is not None, f"{topology}: never recovered\n{log}"
        after = [a for a in load.since(recovered[topology] + 0.5)]  # type: ignore[operator]
        assert after and all(a.status == 200 for a in after), f"{topology}: {after[:3]}"
        if topology == "monolith":  # the process that loads models says it is ready
            ready = _samples(servers[topology].url, "hearth_model_ready")
            assert any(
                labels.get("variant") == "champion" and "pid" in labels and value == 1
                for labels, value in ready
            ), ready
        print(  # the figures, with -s
            f"{topology}: {len(outage)} answers while Redis was down ({len(refused)} x 503), "
            f"first 200 {recovered[topology] - back:.2f} s after restart, "  # type: ignore[operator]
            f"{len(after)} x 200 after"
        )


def _samples(url: str, name: str) -> list[tuple[dict[str, str], float]]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]
