"""Both serving topologies as real processes on loopback (`hearth serve` in a subprocess).

One tiny trained project (generate → ETL → train → register, ~20 s) feeds both servers;
each server has its own fresh HEARTH_HOME (BentoML store, online store, serving state), so
the same input sequence must give the same answers from both.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import torch

from hearth.config import Settings
from hearth.features.online import Transaction
from hearth.features.store import open_store
from hearth.launch.hearth_server import ServerProcess
from hearth.model.scorer import FraudScorer
from hearth.params import Params
from hearth.schema import TIMESTAMP_FORMAT
from hearth.serving.faults import FAULT_TAG
from hearth.serving.model_cache import RegistryCatalog
from hearth.serving.pool import best_device, decide
from hearth.traffic.prediction_log import DB_FILE, PredictionLog
from hearth.traffic.state_sqlite import STATE_FILE, SQLiteStateStore
from tests.projects import API_KEY as KEY
from tests.projects import (
    REPO,
    in_project,
    project_servers,
    project_settings,
    registry_uri,
    server_env,
)

pytestmark = pytest.mark.slow

TOPOLOGIES = ("monolith", "microservices")
NAME = Params().registry.model_name


# -- fixtures (the tiny `project` is tests/conftest.py's) -----------------------------------
@pytest.fixture(scope="module")
def servers(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Both topologies, started together, each on a fresh home; stopped at teardown."""
    with project_servers(project, tmp_path_factory, "home", TOPOLOGIES) as started:
        yield started


@pytest.fixture(scope="module")
def history(project: Path) -> pd.DataFrame:
    return pd.read_parquet(project / "data" / "processed" / "transactions.parquet")


class Customers:
    """Known customers with history, handed out one per test so states never interfere."""

    def __init__(self, history: pd.DataFrame) -> None:
        counts = history["customer_id"].value_counts()
        self.ids = [c for c in counts.index if counts[c] >= 8]
        self.history = history
        last_day = history["timestamp"].max().to_pydatetime() + timedelta(days=1)
        self.after = last_day.replace(hour=12, minute=0, second=0)  # noon, after the data

    def take(self) -> pd.Series:
        cid = self.ids.pop()
        return self.history[self.history["customer_id"] == cid].iloc[-1]


@pytest.fixture(scope="module")
def customers(history: pd.DataFrame) -> Customers:
    return Customers(history)


def normal(last: pd.Series, at: datetime, tid: str, **change: Any) -> dict[str, Any]:
    """A purchase like the customer's last one (same device and place), at `at`."""
    txn = {
        "transaction_id": tid,
        "timestamp": at.strftime(TIMESTAMP_FORMAT),
        "customer_id": str(last["customer_id"]),
        "merchant_id": str(last["merchant_id"]),
        "merchant_category": "grocery",
        "amount": round(float(last["amount_eur"]), 2) or 20.0,
        "currency": "EUR",
        "channel": "pos",
        "device_id": str(last["device_id"]),
        "latitude": float(last["latitude"]),
        "longitude": float(last["longitude"]),
    }
    return txn | change


def fraud_like(last: pd.Series, at: datetime, tid: str) -> dict[str, Any]:
    """Far from home, a new device, a large amount, at night, in a risky category."""
    return normal(
        last,
        at,
        tid,
        timestamp=at.replace(hour=3).strftime(TIMESTAMP_FORMAT),
        merchant_id="m-fraud-shop",
        merchant_category="electronics",
        amount=round(float(last["amount_eur"]) * 25 + 2000, 2),
        channel="online",
        device_id="d-never-seen",
        latitude=-33.9,
        longitude=151.2 if float(last["longitude"]) < 60 else -70.0,
    )


def post(server: ServerProcess, path: str, body: Any, key: str | None = KEY, **kw: Any) -> Any:
    headers = {"X-API-Key": key} if key is not None else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}{path}", content=content, headers=headers, timeout=30, **kw)


def thresholds(server: ServerProcess) -> tuple[float, float]:
    assert server.home is not None
    home = server.home
    # The champion's scorer, as the server cached it from the registry (hearth.serving.model_cache).
    (path,) = (home / "model-cache" / NAME).glob("*/thresholds.json")
    t = json.loads(path.read_text())
    return t["review"], t["decline"]


# -- readiness --------------------------------------------------------------------------------
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_not_ready_until_model_and_store_are_loaded(servers: dict, topology: str) -> None:
    server = servers[topology]
    assert server.readyz[-1] == 200
    # Live before ready: the server answered 503 while loading, then 200.
    assert 503 in server.readyz, server.readyz
    assert httpx.get(f"{server.url}/livez").status_code == 200


# -- the same answers from both topologies ------------------------------------------------------
def test_both_topologies_answer_identically(servers: dict, customers: Customers) -> None:
    a, b = customers.take(), customers.take()
    t0 = customers.after
    sequence: list[tuple[str, Any]] = [
        ("/predict", normal(a, t0, "p1")),
        ("/predict", fraud_like(a, t0, "p2")),
        *[("/predict", normal(b, t0 + timedelta(minutes=i), f"p3-{i}")) for i in range(4)],
        ("/predict", normal(a, t0, "p4", customer_id="never-seen-customer")),
        ("/predict_batch", {"transactions": [normal(b, t0, f"p5-{i}") for i in range(3)]}),
    ]
    answers = {}
    for topology, server in servers.items():
        answers[topology] = []
        for path, body in sequence:
            r = post(server, path, body)
            assert r.status_code == 200, (topology, r.text)
            payload = r.json()
            for p in payload.get("predictions", [payload]):
                p.pop("request_id")
                answers[topology].append(p)
    assert answers["monolith"] == answers["microservices"]


# -- behaviour ----------------------------------------------------------------------------------
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_fraud_like_scores_higher_and_decisions_follow_thresholds(
    servers: dict, customers: Customers, topology: str
) -> None:
    server, last = servers[topology], customers.take()
    ok = post(server, "/predict", normal(last, customers.after, "n1")).json()
    bad = post(server, "/predict", fraud_like(last, customers.after, "f1")).json()
    assert bad["fraud_probability"] > ok["fraud_probability"]
    assert ok["cold_start"] is False
    review, decline = thresholds(server)
    for p in (ok, bad):
        assert p["decision"] == decide(p["fraud_probability"], review, decline)
        assert (p["variant"], p["model_version"]) == ("champion", "1")
        assert p["data_version"].endswith(".dir")


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_a_burst_raises_n_tx_1h_and_reaches_the_model(
    servers: dict, customers: Customers, topology: str
) -> None:
    """Eight transactions in four minutes: the store counts them, and the eighth is scored
    on exactly the features the store computes for it: its score is the served model's
    score of those features, to the last bit (which way a burst moves the score is the
    model's behaviour, not serving's). The features are peeked just before the eighth is
    sent: a peek changes nothing, and no other test touches this customer."""
    server, last = servers[topology], customers.take()
    assert server.home is not None
    settings = Settings(home=server.home)
    burst = [normal(last, customers.after + timedelta(seconds=30 * i), f"b{i}") for i in range(8)]
    for body in burst[:-1]:
        assert post(server, "/predict", body).status_code == 200
    store = open_store(settings)
    try:
        features, cold = store.peek(Transaction.from_mapping(burst[-1]))
        answer = post(server, "/predict", burst[-1]).json()
        probe = normal(last, customers.after + timedelta(minutes=5), "probe")
        counted, _ = store.peek(Transaction.from_mapping(probe))
    finally:
        store.close()
    assert not cold and features["n_tx_1h"] == 7.0 and counted["n_tx_1h"] == 8.0
    # The version that answered, as the server cached it (hearth.serving.model_cache), scored
    # here as the serving pool scores (its device; on the CPU, one thread).
    version = RegistryCatalog(settings, NAME).record(answer["model_version"])
    device = best_device()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scorer = FraudScorer.from_dir(version.path, device=device)
        expected = float(scorer.predict_records([features])[0])
    finally:
        torch.set_num_threads(threads)
    assert answer["fraud_probability"] == expected, (answer, features)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_unknown_customer_is_a_cold_start_not_an_error(
    servers: dict, customers: Customers, topology: str
) -> None:
    body = normal(customers.take(), customers.after, "u1", customer_id=f"new-{topology}")
    r = post(servers[topology], "/predict", body)
    assert r.status_code == 200 and r.json()["cold_start"] is True


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_feedback_joins_the_prediction_log(
    servers: dict, customers: Customers, topology: str
) -> None:
    server = servers[topology]
    post(server, "/predict", normal(customers.take(), customers.after, f"fb-{topology}"))
    r = post(server, "/feedback", {"transaction_id": f"fb-{topology}", "is_fraud": True})
    assert r.status_code == 200 and r.json()["matched_prediction"] is True


# -- errors --------------------------------------------------------------------------------------
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_every_error_has_its_status(servers: dict, customers: Customers, topology: str) -> None:
    server = servers[topology]
    good = normal(customers.take(), customers.after, "e1")
    assert post(server, "/predict", good, key=None).status_code == 401
    assert post(server, "/predict", good, key="wrong").status_code == 403
    assert post(server, "/predict", b"{nope").status_code == 400
    assert post(server, "/predict", {**good, "merchant_id": "m" * 70_000}).status_code == 413
    for change, field in (
        ({"amount": -1.0}, "amount"),
        ({"currency": "DOGE"}, "currency"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"device_id": None}, "device_id"),
    ):
        r = post(server, "/predict", {**good, **change})
        assert r.status_code == 422, r.text
        assert r.json()["problems"][0]["field"] == field
    missing = {k: v for k, v in good.items() if k != "latitude"}
    assert post(server, "/predict", missing).json()["problems"][0]["field"] == "latitude"
    nan = json.dumps(good).replace(json.dumps(good["amount"]), "NaN", 1).encode()
    assert post(server, "/predict", nan).status_code == 422


def test_metrics_and_openapi(servers: dict) -> None:
    for server in servers.values():
        metrics = httpx.get(f"{server.url}/metrics").text
        assert "hearth_predictions_total" in metrics
        paths = httpx.get(f"{server.url}/docs.json").json()["paths"]
        assert {"/predict", "/predict_batch", "/feedback", "/readyz"} <= set(paths)


# -- a model that cannot answer: 503 + Retry-After, then recovery (runs last) -------------
def _wait_for(server: ServerProcess, body: dict, status: int, timeout_s: float = 90) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        r = post(server, "/predict", body)
        if r.status_code == status:
            return r
        time.sleep(0.3)
    raise AssertionError(f"no {status} within {timeout_s}s; last {r.status_code}: {r.text}")


def test_monolith_whose_champion_cannot_answer_answers_503_then_recovers(
    servers: dict, customers: Customers, project: Path
) -> None:
    import mlflow

    from hearth import registry

    server = servers["monolith"]
    assert server.home is not None
    # A copy of the champion that fails every item (a drill fault), registered and made the
    # champion in this server's rollout state: one write, no restart.
    with in_project(project, project_settings(project)):
        client = mlflow.tracking.MlflowClient()
        champion = client.get_model_version_by_alias(NAME, "champion")
        uri = registry.model_uri_of_run(str(champion.run_id))
        broken = str(mlflow.register_model(uri, NAME).version)
        client.set_model_version_tag(NAME, broken, FAULT_TAG, json.dumps({"error_rate": 1.0}))
    store = SQLiteStateStore(server.home / STATE_FILE)
    try:
        store.set_champion(broken, "test", "drill", expected=str(champion.version))
        last = customers.take()
        r = _wait_for(server, normal(last, customers.after, "m503"), 503)
        assert int(r.headers["Retry-After"]) >= 1
        store.set_champion(str(champion.version), "test", "drill over", expected=broken)
        r = _wait_for(server, normal(last, customers.after, "m200"), 200)
        assert r.json()["model_version"] == str(champion.version)
    finally:
        store.close()


def test_a_monolith_with_a_database_url_logs_to_postgres(
    project: Path,
    tmp_path_factory: pytest.TempPathFactory,
    customers: Customers,
    postgres_url: str,
) -> None:
    """HEARTH_DATABASE_URL: predictions and labels land in PostgreSQL, not in a home file."""
    last = customers.take()
    with project_servers(
        project, tmp_path_factory, "home-postgres", ("monolith",), HEARTH_DATABASE_URL=postgres_url
    ) as started:
        server = started["monolith"]
        for tid in ("pg-1", "pg-2"):
            assert post(server, "/predict", normal(last, customers.after, tid)).status_code == 200
        r = post(server, "/feedback", {"transaction_id": "pg-1", "is_fraud": True})
        assert r.status_code == 200 and r.json()["matched_prediction"] is True
        assert server.home is not None
        assert not (server.home / "serving" / DB_FILE).exists()
    log = PredictionLog(database_url=postgres_url)
    try:
        assert {r["transaction_id"] for r in log.rows("predictions")} == {"pg-1", "pg-2"}
        assert log.counts()["champion"] == {"requests": 2, "errors": 0, "labelled": 1, "frauds": 1}
    finally:
        log.close()


def test_microservices_with_the_model_process_killed_answers_503(
    servers: dict, customers: Customers
) -> None:
    server = servers["microservices"]
    (pid,) = server.worker_pids("Model")
    os.kill(pid, signal.SIGKILL)
    last = customers.take()
    r = post(server, "/predict", normal(last, customers.after, "k503"))
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1
    # BentoML respawns the worker; the gateway serves again without a restart.
    _wait_for(server, normal(last, customers.after, "k200"), 200, timeout_s=120)


# -- packaging ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`hearth build` into a fresh BENTOML_HOME; returns that home's bentoml dir."""
    home = tmp_path_factory.mktemp("build-home")
    done = _hearth(project, home, "build", timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return home / "bentoml"


def _hearth(
    project: Path, home: Path, *args: str, timeout: float
) -> subprocess.CompletedProcess[str]:
    """`hearth ARGS` as a user runs it, on the project with `home` as HEARTH_HOME."""
    return subprocess.run(
        [sys.executable, "-m", "hearth", *args],
        cwd=REPO,
        env=server_env(project, home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _bento_file(bentoml_home: Path, name: str, *parts: str) -> str:
    (bento,) = [p for p in (bentoml_home / "bentos" / name).iterdir() if p.name != "latest"]
    return bento.joinpath(*parts).read_text()


def test_build_makes_four_bentos_with_lineage(built: Path, project: Path) -> None:
    import yaml
    from mlflow import MlflowClient

    names = {p.name for p in (built / "bentos").iterdir()}
    assert names == {"hearth-monolith", "hearth-gateway", "hearth-features", "hearth-model"}
    client = MlflowClient(registry_uri(project))
    champion = client.get_model_version_by_alias("fraud-detector", "champion")
    data_version = client.get_run(champion.run_id).data.tags["hearth.data_version"]
    for name in ("hearth-monolith", "hearth-model"):
        info = yaml.safe_load(_bento_file(built, name, "bento.yaml"))
        assert info["labels"]["mlflow_run"] == champion.run_id
        assert info["labels"]["data_version"] == data_version
        assert info["labels"]["champion_registry_version"] == str(champion.version)
        assert [m["tag"].split(":")[0] for m in info["models"]] == ["fraud-detector"]


@pytest.mark.parametrize("name", ["hearth-monolith", "hearth-model"])
def test_model_bentos_take_torch_cuda_from_pypi_on_hearths_base(built: Path, name: str) -> None:
    from hearth.containers.recipes import LOCAL_BASE

    dockerfile = _bento_file(built, name, "env", "docker", "Dockerfile")
    assert f"FROM {LOCAL_BASE}" in dockerfile and "nvidia/cuda" not in dockerfile
    requirements = _bento_file(built, name, "env", "python", "requirements.txt")
    assert "download.pytorch.org" not in requirements
    # PyPI's torch wheel is the CUDA build (it brings the nvidia-* runtime wheels).
    assert any(line.startswith("torch==") and "+" not in line for line in requirements.splitlines())


@pytest.mark.parametrize(
    "name", ["hearth-monolith", "hearth-gateway", "hearth-features", "hearth-model"]
)
def test_images_run_in_production_mode(built: Path, name: str) -> None:
    # A container serves on every interface: no development default secret may serve there.
    dockerfile = _bento_file(built, name, "env", "docker", "Dockerfile")
    assert "HEARTH_ENV=production" in dockerfile


@pytest.mark.parametrize("name", ["hearth-gateway", "hearth-features"])
def test_gateway_and_features_images_are_small_and_cpu_only(built: Path, name: str) -> None:
    from hearth.containers.recipes import LOCAL_BASE

    dockerfile = _bento_file(built, name, "env", "docker", "Dockerfile")
    assert f"FROM {LOCAL_BASE}" in dockerfile and "cuda" not in dockerfile.lower()
    requirements = _bento_file(built, name, "env", "python", "requirements.txt").lower()
    for heavy in ("torch", "mlflow", "scikit-learn", "cu128"):
        assert heavy not in requirements


# Building images (the gateway among the four) is make test-containers' job
# (tests/containers/test_image_builds.py): minutes of docker build do not belong in make test.
def test_containerize_without_an_engine_says_what_is_missing(project: Path, tmp_path: Path) -> None:
    done = _hearth(
        project, tmp_path / "home", "containerize", "--engine", "no-such-engine", timeout=120
    )
    assert done.returncode == 1
    assert "no container engine" in done.stderr and "hint" in done.stderr
