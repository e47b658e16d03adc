"""Test helpers shared across test folders: synthetic feature frames and tiny projects."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pytest
import redis
import uvicorn
import yaml

from hearth.config import Settings
from hearth.features.definitions import SECONDS_SINCE_LAST_CAP
from hearth.launch.hearth_server import ServerProcess
from hearth.launch.launcher import free_port, stop_all
from hearth.params import Params
from hearth.schema import CHANNELS, MERCHANT_CATEGORIES, RISKY_CATEGORIES

TINY_EXPERIMENT = {
    "name": "tiny",
    "description": "A few epochs: enough to beat chance on the tiny data set.",
    "train": {"seed": 1, "epochs": 6, "batch_size": 256, "learning_rate": 0.003, "patience": 3},
}


def write_project(root: Path, params: Params, experiment: dict | None = None) -> None:
    """params.yaml and one experiment file in `root`, as a user's checkout would have."""
    exp_path = root / "experiments" / "tiny.yaml"
    exp_path.parent.mkdir(parents=True, exist_ok=True)
    exp_path.write_text(yaml.safe_dump(experiment or TINY_EXPERIMENT))
    payload = params.model_dump(mode="json")
    payload["train"]["experiment"] = "experiments/tiny.yaml"
    (root / "params.yaml").write_text(yaml.safe_dump(payload))


def synthetic_features(n: int, seed: int, fraud_rate: float = 0.02) -> pd.DataFrame:
    """A processed-split-shaped frame: key columns, every feature, is_fraud."""
    rng = np.random.default_rng(seed)
    fraud = rng.random(n) < fraud_rate

    def signal(p_fraud: float, p_legit: float) -> np.ndarray:
        return rng.random(n) < np.where(fraud, p_fraud, p_legit)

    far, new_device, burst = signal(0.6, 0.03), signal(0.6, 0.05), signal(0.5, 0.03)
    night, risky, big = signal(0.5, 0.2), signal(0.5, 0.15), signal(0.5, 0.0)
    avg = rng.lognormal(3.5, 0.5, n)
    amount = avg * rng.lognormal(0, 0.7, n) * np.where(big, 4.0, 1.0)
    n_1h = rng.poisson(np.where(burst, 4.0, 0.2))
    n_24h = n_1h + rng.poisson(2.0, n)
    n_7d = n_24h + rng.poisson(10.0, n)
    gap = np.where(burst, rng.exponential(300, n), rng.exponential(40_000, n))
    return pd.DataFrame(
        {
            "transaction_id": [f"t{seed}-{i}" for i in range(n)],
            "timestamp": pd.date_range("2026-01-01", periods=n, freq="s"),
            "customer_id": rng.integers(0, 1000, n).astype(str),
            "log_amount": np.log1p(amount),
            "amount_ratio": amount / avg,
            "n_tx_1h": n_1h.astype(float),
            "n_tx_24h": n_24h.astype(float),
            "n_tx_7d": n_7d.astype(float),
            "amount_sum_1h": n_1h * avg,
            "amount_sum_24h": n_24h * avg,
            "amount_sum_7d": n_7d * avg,
            "avg_amount_30d": avg,
            "n_merchants_7d": np.minimum(n_7d, rng.poisson(5.0, n)).astype(float),
            "seconds_since_last": np.minimum(gap, SECONDS_SINCE_LAST_CAP),
            "is_new_device": new_device.astype(float),
            "distance_from_home_km": np.where(
                far, rng.lognormal(6, 1, n), rng.lognormal(1.5, 1, n)
            ),
            "is_cold_start": (rng.random(n) < 0.02).astype(float),
            "channel": rng.choice(np.array(CHANNELS), n),
            "merchant_category": np.where(
                risky,
                rng.choice(np.array(RISKY_CATEGORIES), n),
                rng.choice(np.array(MERCHANT_CATEGORIES), n),
            ),
            "hour": np.where(night, rng.integers(0, 5, n), rng.integers(0, 24, n)).astype(str),
            "is_fraud": fraud.astype(np.int64),
        }
    )


# -- registered versions without models -----------------------------------------------------
def register_versions(settings: Settings, root: Path, name: str, count: int = 3) -> list[str]:
    """`count` versions of `name` in the registry of `settings`, their sources empty folders
    under `root` (enough for tests that only move aliases); the first one is the champion."""
    # lazy: most tests never touch the registry, and mlflow takes seconds to import
    from mlflow.tracking import MlflowClient

    from hearth import registry

    registry.configure(settings)
    client = MlflowClient()
    client.create_registered_model(name)
    made = []
    for i in range(count):
        source = root / f"model-{i}"
        source.mkdir()
        made.append(str(client.create_model_version(name, source=str(source)).version))
    client.set_registered_model_alias(name, "champion", made[0])
    return made


# -- threads released at once -------------------------------------------------------------
T = TypeVar("T")


def run_together(work: Callable[[int], T], threads: int) -> list[T]:
    """`work(i)` in `threads` threads released at once; their results in thread order, the
    threads' errors re-raised (not lost in the threads)."""
    barrier = threading.Barrier(threads)
    results: dict[int, T] = {}
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=60)
    assert not errors, errors
    return [results[i] for i in range(threads)]


# -- a real redis-server for the Redis backends' tests ------------------------------------
REDIS_SERVER = shutil.which("redis-server")
NO_REDIS = "redis-server is not installed (`make system-deps`, or apt-get install redis-server)"
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason=NO_REDIS)


class RedisServer:
    """A real, empty, non-persistent redis-server on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        workdir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._wait_until_ready()

    def _wait_until_ready(self, timeout_s: float = 10.0) -> None:
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {self.process.returncode}")
                try:
                    if client.ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.05)
            raise RuntimeError(f"redis-server on port {self.port} did not answer PING")
        finally:
            client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


# -- real `hearth serve` processes ----------------------------------------------------------
@contextmanager
def serving_topologies(
    topologies: tuple[str, ...],
    new_home: Callable[[str], Path],
    env_for: Callable[[Path], dict[str, str]],
    repo: Path,
) -> Iterator[dict[str, ServerProcess]]:
    """Each topology as a real server on its own fresh home, started together; stopped after."""
    started: dict[str, ServerProcess] = {}
    try:
        for topology in topologies:
            home = new_home(topology)
            started[topology] = ServerProcess.start(
                topology, env_for(home), repo, home / "server.log"
            )
        # Waited on side by side, so each one's readiness is watched from its start.
        with ThreadPoolExecutor(len(started)) as pool:
            for done in [pool.submit(s.wait_ready) for s in started.values()]:
                done.result()
        yield started
    finally:
        stop_all(started.values())


class UvicornThread:
    """An ASGI `app` served by uvicorn in a thread, from enter to exit: on a free loopback
    port, or where `where` says (``host=…, port=…`` or ``uds=…``). Keep-alive connections
    close after 1 s idle. `url` is what `hearth.serving.internal_client` dials."""

    def __init__(self, app: Any, **where: Any) -> None:
        self.where = where or {"host": "127.0.0.1", "port": free_port()}
        config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=1, **self.where)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        if "uds" in self.where:
            return f"unix://{self.where['uds']}"
        return f"tcp://{self.where['host']}:{self.where['port']}"

    def __enter__(self) -> UvicornThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
