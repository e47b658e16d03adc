"""A real Redis killed mid-load: 503 with Retry-After (no 500, no hang), then recovery.

Both topologies serve from a real redis-server (online store and rollout state) on
loopback. Clients send new transactions continuously; Redis is SIGKILLed, then restarted
on the same port from its last snapshot (as a Redis with persistence would come back).
While it is down every answer is a 503 carrying Retry-After, each within the client's
timeout; once it is back, requests succeed again without restarting anything.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from hearth.launch.hearth_server import ServerProcess
from tests.client_load import Load, metric_samples
from tests.helpers import REDIS_SERVER, RedisServer, needs_redis
from tests.projects import project_servers

pytestmark = [pytest.mark.slow, needs_redis]


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
            ready = metric_samples(servers[topology].url, "hearth_model_ready")
            assert any(
                labels.get("variant") == "champion" and "pid" in labels and value == 1
                for labels, value in ready
            ), ready
        print(  # the figures, with -s
            f"{topology}: {len(outage)} answers while Redis was down ({len(refused)} x 503), "
            f"first 200 {recovered[topology] - back:.2f} s after restart, "  # type: ignore[operator]
            f"{len(after)} x 200 after"
        )
