"""deploy/compose.yaml for real: `hearth up --containers` on the local engine, end to end.

One stack for the module (its own home, project and free host ports): the infrastructure
first, then a champion and a challenger trained on this machine into the containers' MLflow
(the state on their PostgreSQL), then the microservices. What is checked (issue #13): the
containers answer the same transactions as the local microservices topology with the same
scores; a canary started from the CLI here is followed by the containers, and a rollback under
load fails no request and stops challenger answers within a second; a killed model container
gives 503 + Retry-After until Compose has restarted it; the pipeline deployment, started
here through the containers' Prefect API, runs on the Compose worker (hearth/worker) and
logs its run to the containers' MLflow; `hearth down` leaves nothing but the named data
volumes. Opt-in: `make test-containers` (conftest.py says when it skips).
"""

from __future__ import annotations

import base64
import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.launch.launcher import free_port
from hearth.params import Params
from hearth.secrets_file import ensure_secrets, read_secrets, secrets_path
from hearth.stack import compose
from hearth.stack.compose import ContainerStack
from tests.projects import (
    REPO,
    SMALL_DATA,
    in_project,
    project_servers,
    project_settings,
    train,
    train_and_register,
    write_project,
)

# The module fixture (images, stack, training) counts against the first test: up to ~30 min.
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(3600)]

NAME = Params().registry.model_name
DATA_VOLUMES = ("postgres-data", "redis-data", "mlflow-artifacts", "worker-home")


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120,
                          check=True)  # fmt: skip
    return done.stdout


@dataclass
class Up:
    stack: ContainerStack
    root: Path
    url: str  # the gateway, published on loopback
    secrets: dict[str, str]
    versions: dict[str, str]
    volumes_before: set[str]
    seconds: dict[str, float] = field(default_factory=dict)  # how long each phase took

    def env(self) -> dict[str, str]:
        """The environment of a `hearth` command on this machine, in the project."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "MLFLOW_"))}
        return keep | {"HEARTH_HOME": str(self.root / ".hearth")}

    def hearth(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "hearth", *args]
        return subprocess.run(
            cmd, cwd=self.root, env=self.env(), capture_output=True, text=True, timeout=300
        )


def _ports() -> dict[str, int]:
    names = ("postgres_port", "redis_port", "mlflow_port", "prefect_port", "serving_port")
    return {name: free_port() for name in names}


def _train_two_versions(root: Path, ports: dict[str, int]) -> dict[str, str]:
    """A champion and a challenger in the containers' registry; the state adopts the champion."""
    import mlflow

    from hearth import registry, steps
    from hearth.features.store import materialize, open_store
    from hearth.rollout import promotion

    write_project(root, Params.model_validate(SMALL_DATA))
    # The home's secrets file now names the containers' servers: Settings read them.
    with in_project(root, project_settings(root, **ports)) as ctx:
        assert ctx.settings.mlflow_uri.startswith("http://")
        steps.generate_data(ctx)
        steps.etl(ctx)
        assert train_and_register(ctx).alias == "champion"
        run = train(ctx, seed_offset=1)
        challenger = mlflow.register_model(registry.model_uri_of_run(run.run_id), NAME)
        promotion.reconciled(ctx.settings, ctx.params)
        store = open_store(ctx.settings)  # the containers' Redis, as `hearth serve` fills its own
        try:
            materialize(store, ctx.settings.processed_dir)
        finally:
            store.close()
    return {"champion": "1", "challenger": str(challenger.version)}


def _images() -> dict[str, float]:
    """The microservices' and the worker's images must be there (test_image_builds.py,
    `hearth containerize`); the PostgreSQL/Redis and MLflow/Prefect ones are built here when
    missing (their build time, s)."""
    images = compose.images()
    ours = {compose.IMAGES["hearth/services"], compose.IMAGES["hearth/stack"]}
    serving = {compose.SERVICE_IMAGES[s] for s in compose.TOPOLOGY_SERVICES["microservices"]}
    theirs = {var: images[var] for var in serving | {compose.IMAGES["hearth/worker"]}}
    if missing := compose.missing_images(theirs):
        pytest.skip(f"images missing: {', '.join(missing)}; {compose.HOW_TO_GET_IMAGES}")
    if not compose.missing_images({v: images[v] for v in ours}):
        return {}
    t0 = time.monotonic()
    done = subprocess.run(["make", "--no-print-directory", "stack-images"], cwd=REPO,
                          capture_output=True, text=True, timeout=1800, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return {"make stack-images": time.monotonic() - t0}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    built = _images()
    root = tmp_path_factory.mktemp("containers")
    ports = _ports()
    settings = project_settings(root, **ports)
    ensure_secrets(settings.home_abs)
    stack = ContainerStack(settings, REPO, compose.images())
    before = set(docker("volume", "ls", "-q").split())
    try:
        t0 = time.monotonic()
        compose.up(stack, serve=False)
        t1 = time.monotonic()
        versions = _train_two_versions(root, ports)
        t2 = time.monotonic()
        compose.up(stack, "microservices", serve=True)
        t3 = time.monotonic()
        yield Up(
            stack, root, f"http://127.0.0.1:{ports['serving_port']}",
            read_secrets(secrets_path(settings.home_abs)), versions, before,
            built | {"infrastructure up": t1 - t0, "train two versions": t2 - t1,
                     "serving up": t3 - t2},
        )  # fmt: skip
    finally:
        compose.down(settings, REPO)
        for volume in DATA_VOLUMES:
            subprocess.run(["docker", "volume", "rm", f"{stack.project}_{volume}"],
                           capture_output=True, timeout=60, check=False)  # fmt: skip


# -- requests -------------------------------------------------------------------------------
_sent = iter(range(10**9))


def transaction(customer_id: str, n: int | None = None) -> dict[str, Any]:
    """A purchase of `customer_id` in the last hour (production refuses old timestamps)."""
    n = next(_sent) if n is None else n
    at = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1) + timedelta(seconds=n)
    return {
        "transaction_id": f"ct-{n}", "timestamp": at.strftime("%Y-%m-%dT%H:%M:%S"),
        "customer_id": customer_id, "merchant_id": "m00042", "merchant_category": "grocery",
        "amount": 23.5 + n % 7 * 41.0, "currency": "EUR", "channel": "pos",
        "device_id": "d0000002", "latitude": 48.11, "longitude": 16.84,
    }  # fmt: skip


def predict(client: httpx.Client, url: str, key: str, body: dict[str, Any]) -> httpx.Response:
    return client.post(f"{url}/predict", content=json.dumps(body),
                       headers={"X-API-Key": key}, timeout=30)  # fmt: skip


# -- the tests, in order --------------------------------------------------------------------
def test_the_containers_score_as_the_local_microservices_do(
    up: Up, tmp_path_factory: pytest.TempPathFactory
) -> None:
    print(f"\ntimings on this machine (load {os.getloadavg()[0]:.1f}): {up.seconds}")
    mlflow_url = up.stack.host_settings()["HEARTH_MLFLOW_TRACKING_URI"]
    with (up.root / "data" / "raw" / "customers.csv").open() as f:
        known = [row["customer_id"] for row in itertools.islice(csv.DictReader(f), 5)]
    customers = [*known, *(f"new-{i}" for i in range(5))]  # with a history, and without
    # Timestamps i seconds into the last hour; ids of their own (the load tests count on).
    bodies = [transaction(customers[i % 10], i) | {"transaction_id": f"same-{i}"}
              for i in range(40)]  # fmt: skip
    with project_servers(up.root, tmp_path_factory, "local", ("microservices",),
                         HEARTH_MLFLOW_TRACKING_URI=mlflow_url) as local:  # fmt: skip
        server = local["microservices"]
        with httpx.Client() as client:
            here = [predict(client, server.url, "integration-key", b) for b in bodies]
            there = [predict(client, up.url, up.secrets["HEARTH_API_KEY"], b) for b in bodies]
    assert [r.status_code for r in here + there] == [200] * 80, [r.text for r in there][:3]
    for a, b in zip((r.json() for r in here), (r.json() for r in there), strict=True):
        assert (a["model_version"], a["variant"], a["decision"], a["cold_start"]) == (
            b["model_version"], b["variant"], b["decision"], b["cold_start"])  # fmt: skip
        assert b["fraud_probability"] == pytest.approx(a["fraud_probability"], abs=1e-6)


@dataclass(frozen=True)
class Sent:
    at: float  # when it was sent
    status: int
    variant: str | None


def _load(up: Up, stop: threading.Event, sent: list[Sent], k: int) -> None:
    key = up.secrets["HEARTH_API_KEY"]
    with httpx.Client() as client:
        i = k
        while not stop.is_set():
            at = time.monotonic()
            try:
                r = predict(client, up.url, key, transaction(f"load-{i % 200}"))
                variant = r.json().get("variant") if r.status_code == 200 else None
                sent.append(Sent(at, r.status_code, variant))
            except httpx.HTTPError as exc:
                sent.append(Sent(at, 0, repr(exc)))
            i += 2


@contextmanager
def loaded(up: Up, clients: int = 2) -> Iterator[list[Sent]]:
    """`clients` threads sending /predict to the gateway while the block runs; what they saw."""
    sent: list[Sent] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_load, args=(up, stop, sent, k)) for k in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield sent
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def test_a_canary_from_this_machine_and_a_rollback_under_load(up: Up) -> None:
    challenger = up.versions["challenger"]
    started = up.hearth("rollout", "start", "--challenger", challenger, "--mode", "canary",
                        "--steps", "50,100", "--reason", "containers")  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    with loaded(up) as sent:
        deadline = time.monotonic() + 180  # the model container loads v2 from MLflow first
        while not any(s.variant == "challenger" for s in sent):
            assert time.monotonic() < deadline, "no challenger answer in 180 s"
            time.sleep(0.5)
        time.sleep(2)
        called = time.monotonic()
        rolled = up.hearth("rollback", "--reason", "containers: rollback under load")
        done = time.monotonic()
        time.sleep(3)
    assert rolled.returncode == 0, rolled.stdout + rolled.stderr
    failed = [s for s in sent if s.status != 200]
    assert not failed, failed[:5]
    last = max(s.at for s in sent if s.variant == "challenger")
    print(f"\n{len(sent)} requests, 0 failed; last challenger answer sent "
          f"{last - done:+.2f} s after `hearth rollback` returned ({done - called:.1f} s "
          "for the command)")  # fmt: skip
    assert last <= done + 1.0
    assert any(s.at > done + 1.0 for s in sent)  # the load went on after it


def test_a_killed_model_container_gives_503_then_compose_restarts_it(up: Up) -> None:
    (model,) = [c for c in up.stack.containers() if c.service == "model"]
    restarts = int(docker("inspect", "-f", "{{.RestartCount}}", model.id))
    pid = int(docker("inspect", "-f", "{{.State.Pid}}", model.id))
    os.kill(pid, signal.SIGKILL)  # a crash, not `docker stop`: the restart policy applies
    key, seen_503, recovered = up.secrets["HEARTH_API_KEY"], None, None
    deadline = time.monotonic() + 300
    with httpx.Client() as client:
        while time.monotonic() < deadline and recovered is None:
            r = predict(client, up.url, key, transaction("after-kill"))
            if r.status_code == 503 and seen_503 is None:
                seen_503 = r
            elif r.status_code == 200 and seen_503 is not None:
                recovered = r
            else:
                assert r.status_code in (200, 503), r.text
            time.sleep(0.2)
    assert seen_503 is not None, "no 503 while the model container was down"
    assert seen_503.headers.get("Retry-After"), seen_503.headers
    assert recovered is not None, "no recovery in 300 s"
    assert int(docker("inspect", "-f", "{{.RestartCount}}", model.id)) > restarts


# -- a flow on the Compose worker -----------------------------------------------------------
FLOW, DEPLOYMENT = "pipeline", "pipeline-daily"  # prefect.yaml's; the flow generates its data
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _prefect(up: Up) -> tuple[str, dict[str, str]]:
    """The containers' Prefect API as published here, and the header of its auth string."""
    token = base64.b64encode(up.secrets["HEARTH_PREFECT_AUTH_STRING"].encode()).decode()
    return up.stack.urls(None)["prefect"] + "/api", {"Authorization": f"Basic {token}"}


def _flow_run_logs(api: str, headers: dict[str, str], run_id: str) -> str:
    r = httpx.post(f"{api}/logs/filter", headers=headers, timeout=30,
                   json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})  # fmt: skip
    return "\n".join(line["message"] for line in r.json()) if r.status_code == 200 else r.text


def test_a_flow_deployment_runs_on_the_compose_worker(up: Up) -> None:
    api, headers = _prefect(up)
    mlflow = up.stack.host_settings()["HEARTH_MLFLOW_TRACKING_URI"]
    assert httpx.get(f"{api}/deployments/name/{FLOW}/{DEPLOYMENT}", timeout=30).status_code == 401
    deployment = httpx.get(f"{api}/deployments/name/{FLOW}/{DEPLOYMENT}", headers=headers,
                           timeout=30)  # fmt: skip
    assert deployment.status_code == 200, deployment.text  # the worker registered it
    assert deployment.json()["work_pool_name"] == "hearth-process"
    assert deployment.json()["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
    started_ms = int(time.time() * 1000)
    t0 = time.monotonic()
    created = httpx.post(
        f"{api}/deployments/{deployment.json()['id']}/create_flow_run", headers=headers,
        json={"parameters": {"generate_if_missing": True}}, timeout=30,
    )  # fmt: skip
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    state, deadline = "SCHEDULED", time.monotonic() + 1200
    while state not in FINAL and time.monotonic() < deadline:
        time.sleep(5)
        run = httpx.get(f"{api}/flow_runs/{run_id}", headers=headers, timeout=30).json()
        state = run["state"]["type"]
    logs = _flow_run_logs(api, headers, run_id)
    worker = up.stack.compose("logs", "--tail", "40", "prefect-worker").stdout
    assert state == "COMPLETED", f"{state}\n{logs[-4000:]}\n{worker[-3000:]}"
    print(f"\n{FLOW}/{DEPLOYMENT} completed on the Compose worker in "
          f"{time.monotonic() - t0:.0f} s (load {os.getloadavg()[0]:.1f})")  # fmt: skip
    # Its run is on the containers' MLflow: a version registered after the trigger, from a
    # run the worker's user (the image's `hearth`, not this machine's) logged, with lineage.
    r = httpx.get(f"{mlflow}/api/2.0/mlflow/model-versions/search", timeout=30,
                  params={"filter": f"name='{NAME}'", "max_results": 100})  # fmt: skip
    assert r.status_code == 200, r.text
    ours = [v for v in r.json()["model_versions"] if int(v["creation_timestamp"]) >= started_ms]
    assert len(ours) == 1, r.json()
    got = httpx.get(f"{mlflow}/api/2.0/mlflow/runs/get", params={"run_id": ours[0]["run_id"]},
                    timeout=30).json()["run"]  # fmt: skip
    tags = {t["key"]: t["value"] for t in got["data"]["tags"]}
    assert got["info"]["status"] == "FINISHED"
    assert tags["mlflow.user"] == "hearth", tags.get("mlflow.user")
    assert tags["hearth.data_version"].endswith(".dir"), tags
    assert any(m["key"] == "test_pr_auc" for m in got["data"]["metrics"]), got["data"]["metrics"]


def test_down_leaves_only_the_named_data_volumes(up: Up) -> None:
    assert up.hearth("down").returncode == 0
    assert up.stack.containers() == []
    left = set(docker("volume", "ls", "-q").split()) - up.volumes_before
    assert left == {f"{up.stack.project}_{v}" for v in DATA_VOLUMES}
