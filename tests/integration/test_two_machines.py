"""Two machines simulated on one box: two serving processes that share nothing but servers.

Each `hearth serve` (monolith) has its own HEARTH_HOME (no shared files: each downloads the
models into its own cache). They share one PostgreSQL (the rollout state, the heartbeats),
one Redis (the online features) and one MLflow tracking server on PostgreSQL that serves the
model files itself (``--serve-artifacts``), all started here, on loopback. What is checked
(issue #12's "two machines"): a canary started on one machine serves the challenger on both
at its weight, sticky per customer across machines; its analysis counts both machines'
requests and labels; a rollback through the second machine's
admin API stops challenger answers on both within a second with no failed request; killing
one machine's gateway leaves the other serving, and the status names the quiet one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.config import MLFLOW_SERVER_ENV
from hearth.launch.hearth_server import ServerProcess
from hearth.launch.launcher import Launched, free_port, launch, stop_all
from hearth.params import Params
from hearth.stack.services import mlflow_server_command
from hearth.traffic.assignment import assign
from hearth.traffic.prediction_log import PredictionLog
from tests.helpers import RedisServer
from tests.postgres_server import PostgresServer
from tests.projects import (
    REPO,
    SMALL_DATA,
    clean_environ,
    in_project,
    project_settings,
    server_env,
    train,
    train_and_register,
    write_project,
)

pytestmark = pytest.mark.slow

ADMIN = "two-machines-admin-token"
KEY = "integration-key"
NAME = Params().registry.model_name
WINDOW_S = 3.0  # a process not heard from for longer is quiet (heartbeats every 0.5 s)


@dataclass
class Fleet:
    machines: dict[str, ServerProcess]  # "a", "b"
    versions: dict[str, str]  # champion, challenger
    database_url: str  # the shared PostgreSQL database: rollout state, prediction log


def _mlflow_server(pg: PostgresServer, root: Path) -> tuple[Launched, str]:
    """MLflow's tracking server on PostgreSQL, serving the model files it stores under root."""
    backend = pg.create_database("two_machines_mlflow")
    port = free_port()
    cmd = mlflow_server_command(backend, root / "mlflow-artifacts", "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    env = clean_environ("HEARTH_", "MLFLOW_") | MLFLOW_SERVER_ENV
    return launch("mlflow", cmd, env, REPO, root / "mlflow.log", f"{url}/health"), url


@pytest.fixture(scope="module")
def fleet(
    postgres_server: PostgresServer,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("two-machines")
    started: list[Any] = []
    try:
        mlflow, mlflow_url = _mlflow_server(postgres_server, root)
        started.append(mlflow)
        # The project (code, params, data) is on both machines; its registry is the server.
        write_project(root, Params.model_validate(SMALL_DATA))
        settings = project_settings(root, mlflow_tracking_uri=mlflow_url)
        with in_project(root, settings) as ctx:
            from hearth import steps

            steps.generate_data(ctx)
            steps.etl(ctx)
            mlflow.wait_ready(300)
            import mlflow as mlflow_client

            from hearth import registry

            assert train_and_register(ctx).alias == "champion"
            run = train(ctx, seed_offset=1)
            challenger = mlflow_client.register_model(registry.model_uri_of_run(run.run_id), NAME)
        state_url = postgres_server.create_database("two_machines_state")
        machines = {}
        for name in ("a", "b"):
            home = root / f"machine-{name}"  # nothing under it is shared
            env = server_env(
                root, home,
                HEARTH_MLFLOW_TRACKING_URI=mlflow_url,
                HEARTH_DATABASE_URL=state_url,
                HEARTH_STORE_BACKEND="redis",
                HEARTH_REDIS_URL=redis_server.url,
                HEARTH_ADMIN_TOKEN=ADMIN,
                HEARTH_HEARTBEAT_INTERVAL_S="0.5",
                HEARTH_HEARTBEAT_WINDOW_S=str(WINDOW_S),
            )  # fmt: skip
            machines[name] = ServerProcess.start("monolith", env, REPO, root / f"{name}.log")
            started.append(machines[name])
        with ThreadPoolExecutor(2) as pool:
            for done in [pool.submit(m.wait_ready) for m in machines.values()]:
                done.result()
        versions = {"champion": "1", "challenger": str(challenger.version)}
        yield Fleet(machines, versions, state_url)
    finally:
        stop_all(reversed(started))


# -- helpers --------------------------------------------------------------------------------
def admin(machine: ServerProcess, method: str, path: str, body: Any = None) -> httpx.Response:
    content = None if body is None else json.dumps(body)
    return httpx.request(method, f"{machine.url}{path}", content=content,
                         headers={"X-Admin-Token": ADMIN}, timeout=60)  # fmt: skip


_sent = iter(range(10**9))


def transaction(customer_id: str) -> dict[str, Any]:
    """A purchase of `customer_id`, with a new transaction id (``tm-<n>``) each time."""
    n = next(_sent)
    at = datetime(2026, 1, 20, 12, 0) + timedelta(seconds=n)
    return {
        "transaction_id": f"tm-{n}", "timestamp": at.strftime("%Y-%m-%dT%H:%M:%S"),
        "customer_id": customer_id, "merchant_id": "m00042", "merchant_category": "grocery",
        "amount": 23.5, "currency": "EUR", "channel": "pos", "device_id": "d0000002",
        "latitude": 48.11, "longitude": 16.84,
    }  # fmt: skip


def predict(client: httpx.Client, machine: ServerProcess, customer_id: str) -> httpx.Response:
    return client.post(f"{machine.url}/predict", content=json.dumps(transaction(customer_id)),
                       headers={"X-API-Key": KEY}, timeout=30)  # fmt: skip


def wait_until_loaded(machine: ServerProcess, variant: str, timeout_s: float = 120) -> None:
    """Until the machine's serving process says it has the version of `variant` loaded (it
    loads a challenger when the state names it, from the registry into its own cache)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client() as client:
        while time.monotonic() < deadline:
            assert predict(client, machine, "warm-up").status_code == 200
            serving = admin(machine, "GET", "/admin/rollout").json()["serving_process"]
            if serving["versions"].get(variant, {}).get("loaded"):
                return
            time.sleep(0.3)
    raise AssertionError(f"{variant} never loaded on {machine.url}:\n{machine.log_tail()}")


def analysis_rows(database_url: str, rollout_id: str) -> list[dict[str, Any]]:
    """The rollout's analysis input from the shared log, once both machines' writers have
    written what they buffer (they write in the background: polled, at most 30 s)."""
    log = PredictionLog(database_url=database_url)
    try:
        deadline, last = time.monotonic() + 30, -1
        while True:
            rows = log.analysis_rows(rollout_id)
            if len(rows) == last or time.monotonic() > deadline:
                return rows
            last = len(rows)
            time.sleep(1.0)
    finally:
        log.close()


def fleet_of(machine: ServerProcess) -> dict[str, Any]:
    return dict(admin(machine, "GET", "/admin/rollout").json()["fleet"])


# -- the test -------------------------------------------------------------------------------
def test_two_machines_follow_one_rollout_and_name_the_one_that_went_quiet(fleet: Fleet) -> None:
    a, b = fleet.machines["a"], fleet.machines["b"]
    customers = [f"c{i:06d}" for i in range(80)]

    # Both report in, each from its own home, with the champion loaded from the registry.
    live = fleet_of(a)["live"]
    assert {p["home"] for p in live} == {str(a.home), str(b.home)}, live
    for machine in (a, b):
        assert machine.home is not None
        assert (machine.home / "model-cache" / NAME / "1" / "record.json").exists()

    # A canary started on machine A serves the challenger on both, sticky per customer.
    r = admin(a, "POST", "/admin/rollout/start",
              {"challenger_version": fleet.versions["challenger"], "steps": [30, 100]})  # fmt: skip
    assert r.status_code == 200, r.text
    state = r.json()
    for machine in (a, b):
        wait_until_loaded(machine, "challenger")
    expected = {c: assign(state["salt"], c, state["challenger_percent"]) for c in customers}
    scored: dict[str, list[str]] = {}  # machine → the transactions it scored
    with httpx.Client() as client:
        for name, machine in (("a", a), ("b", b)):
            answers = [predict(client, machine, c) for c in customers]
            scored[name] = [x.json()["transaction_id"] for x in answers]
            assert [x.status_code for x in answers] == [200] * len(customers)
            got = {c: x.json()["variant"] for c, x in zip(customers, answers, strict=True)}
            assert got == expected, machine.url
            versions = {
                x.json()["model_version"] for x in answers if x.json()["variant"] == "challenger"
            }
            assert versions == {fleet.versions["challenger"]}
    assert 0 < sum(v == "challenger" for v in expected.values()) < len(customers)
    for machine in (a, b):
        assert (machine.home / "model-cache" / NAME / fleet.versions["challenger"]).is_dir()  # type: ignore[operator]

    # The analysis counts both machines' requests and labels (one log, in PostgreSQL): a
    # label sent to either machine counts, whichever machine scored the transaction.
    labelled = scored["a"][:10] + scored["b"][:10]
    with httpx.Client() as client:
        for i, tid in enumerate(labelled):
            machine = (a, b)[i % 2]  # half of them to the machine that did not score it
            label = {"transaction_id": tid, "is_fraud": i % 3 == 0}
            r = client.post(f"{machine.url}/feedback", headers={"X-API-Key": KEY},
                            content=json.dumps(label))  # fmt: skip
            assert r.status_code == 200, r.text
    rows = analysis_rows(fleet.database_url, state["rollout_id"])
    ids = {r["transaction_id"] for r in rows}
    assert set(scored["a"]) <= ids and set(scored["b"]) <= ids
    assert sum(r["is_fraud"] is not None for r in rows) == len(labelled)
    live = admin(b, "GET", "/admin/rollout").json()["live"]
    assert sum(v["requests"] for v in live.values()) == len(rows)
    assert sum(v["labelled"] for v in live.values()) == len(labelled)

    # A rollback through machine B's admin API: both stop answering with the challenger
    # within a second, and no request fails on either.
    seen = rollback_under_load(a, b, customers)
    assert seen.response.status_code == 200, seen.response.text
    failed = [s for s in seen.sent if s.status != 200]
    assert failed == []
    for name in ("a", "b"):
        mine = [s for s in seen.sent if s.machine == name]
        assert any(s.variant == "challenger" for s in mine if s.at < seen.called), name
        last = max(s.at for s in mine if s.variant == "challenger")
        print(f"\nmachine {name}: {len(mine)} requests, the last one the challenger answered "
              f"was sent {last - seen.called:.3f} s after the rollback call")  # fmt: skip
        assert last - seen.called < 1.0
        assert all(s.variant == "champion" for s in mine if s.at > seen.called + 1.0)

    # Killing machine A's gateway leaves B serving; B's status names A as quiet (each of
    # its serving processes: one per worker).
    a_processes = {p["process"] for p in fleet_of(b)["live"] if p["home"] == str(a.home)}
    assert a_processes
    a.process.stop(timeout_s=0)  # SIGTERM then at once SIGKILL: a machine that drops off
    with httpx.Client() as client:
        assert all(predict(client, b, c).status_code == 200 for c in customers[:10])
    deadline = time.monotonic() + 30
    while True:
        quiet = {p["process"] for p in fleet_of(b)["quiet"]}
        if quiet == a_processes or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert quiet == a_processes
    assert {p["home"] for p in fleet_of(b)["live"]} == {str(b.home)}


@dataclass(frozen=True)
class Sent:
    machine: str
    at: float  # when the request was sent
    status: int
    variant: str | None


@dataclass
class UnderLoad:
    sent: list[Sent]
    called: float
    response: httpx.Response


def rollback_under_load(a: ServerProcess, b: ServerProcess, customers: list[str]) -> UnderLoad:
    """2 clients per machine for 3 s, POST /admin/rollback on machine B, 3 s more load."""
    import threading

    sent: list[Sent] = []
    stop = threading.Event()

    def client_loop(machine: str, server: ServerProcess, k: int) -> None:
        with httpx.Client() as client:
            i = k
            while not stop.is_set():
                at = time.monotonic()  # when it was sent: a loaded box answers late
                try:
                    r = predict(client, server, customers[i % len(customers)])
                    variant = r.json().get("variant") if r.status_code == 200 else None
                    sent.append(Sent(machine, at, r.status_code, variant))
                except httpx.HTTPError as exc:  # a refused connection fails a request too
                    sent.append(Sent(machine, at, 0, repr(exc)))
                i += 2

    with ThreadPoolExecutor(4) as pool:
        loops = [pool.submit(client_loop, name, server, k)
                 for name, server in (("a", a), ("b", b)) for k in range(2)]  # fmt: skip
        try:
            time.sleep(3)
            called = time.monotonic()
            r = admin(b, "POST", "/admin/rollback", {"reason": "two machines: rollback on b"})
            time.sleep(3)
        finally:
            stop.set()
            for loop in loops:
                loop.result()
    return UnderLoad(sent, called, r)
