"""The rollout in the serving graph, on real servers on loopback (`hearth serve` subprocesses).

One tiny trained project (tests/conftest.py's `project`) gets three more versions: v2, trained
with another seed (different scores), and two drills of it, v3 erroring on half its items
and v4 answering 1.5 s late (``hearth.fault`` tags). Each topology runs on its own home, so
each has its own rollout state; the MLflow registry is shared, so tests run one after the
other and end every rollout they start.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.launch.hearth_server import ServerProcess
from hearth.launch.launcher import free_port, http_ok
from hearth.params import Params
from hearth.rollout.verdict import analyse
from hearth.serving.faults import FAULT_TAG
from hearth.traffic.assignment import assign
from hearth.traffic.prediction_log import DB_FILE, PredictionLog
from tests.integration import test_serving as serving
from tests.integration.rollout_traffic import (
    ADMIN,
    Traffic,
    admin,
    predict,
    rollback_under_load,
)
from tests.integration.test_serving import Customers
from tests.projects import API_KEY as KEY
from tests.projects import (
    REPO,
    in_project,
    mlflow_server,
    project_servers,
    project_settings,
    server_env,
    train,
)

pytestmark = pytest.mark.slow

# test_serving's fixtures, reused on this module's own tiny project: its customers.
history, customers = serving.history, serving.customers

NAME = Params().registry.model_name
TOPOLOGIES = ("monolith", "microservices")


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def versions(project: Path) -> dict[str, str]:
    """v1 the champion; v2 another seed; v3 = v2 erroring on half its items; v4 = v2 slow."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from hearth import registry

    with in_project(project, project_settings(project)) as ctx:
        run = train(ctx, seed_offset=1)
        uri = registry.model_uri_of_run(run.run_id)
        client = MlflowClient()
        made = {"better": str(mlflow.register_model(uri, NAME).version)}
        for drill, fault in (
            ("erroring", {"error_rate": 0.5}),
            ("slow", {"extra_latency_ms": 1500}),
        ):
            made[drill] = str(mlflow.register_model(uri, NAME).version)
            client.set_model_version_tag(NAME, made[drill], FAULT_TAG, json.dumps(fault))
        assert client.get_registered_model(NAME).aliases == {"champion": 1}
    return {"champion": "1", **made}


def _env(project: Path, home: Path) -> dict[str, str]:
    return server_env(project, home, HEARTH_ADMIN_TOKEN=ADMIN)


@pytest.fixture(scope="module")
def servers(
    project: Path, versions: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ServerProcess]]:
    """Both topologies on fresh homes, started side by side; stopped at teardown."""
    with project_servers(
        project, tmp_path_factory, "rollout", TOPOLOGIES, HEARTH_ADMIN_TOKEN=ADMIN
    ) as started:
        yield started


@pytest.fixture(params=TOPOLOGIES)
def server(request: pytest.FixtureRequest, servers: dict[str, ServerProcess]) -> ServerProcess:
    """Each topology's server in turn: a test that takes it runs once per topology."""
    return servers[request.param]


# -- helpers --------------------------------------------------------------------------------
def start(server: ServerProcess, version: str, mode: str = "canary", steps: Any = None) -> dict:
    body: dict[str, Any] = {"challenger_version": version, "mode": mode}
    if steps is not None:
        body["steps"] = steps
    r = admin(server, "POST", "/admin/rollout/start", body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def end_rollout(server: ServerProcess) -> None:
    """Roll back whatever runs (tests share one registry)."""
    state = admin(server, "GET", "/admin/rollout").json()["rollout"]
    if state and state["status"] == "running":
        assert (
            admin(server, "POST", "/admin/rollback", {"reason": "test cleanup"}).status_code == 200
        )


def wait_for_challenger(server: ServerProcess, traffic: Traffic, state: dict) -> None:
    """Send requests of challenger customers until the challenger answers (it loads on first
    use; meanwhile the champion answers)."""
    ids = (f"{traffic.tag}-warm-{i}" for i in range(10_000))
    percent = state["challenger_percent"]
    cid = next(c for c in ids if assign(state["salt"], c, percent) == "challenger")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        r = predict(None, server, traffic.body(cid))
        assert r.status_code == 200, r.text
        if r.json()["variant"] == "challenger":
            return
        time.sleep(0.2)
    raise AssertionError(f"the challenger never answered:\n{server.log_tail()}")


def wait_until_loaded(server: ServerProcess, traffic: Traffic) -> None:
    """Send requests until the answering process says it has loaded the challenger (GET
    /admin/rollout's `serving_process`; the pool looks at the state when requests come): from
    then on the challenger takes its customers. For a challenger that never answers in time
    (the slow drill), where `wait_for_challenger` cannot tell."""
    variant = "challenger"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert predict(None, server, traffic.body(f"{traffic.tag}-warm")).status_code == 200
        serving = admin(server, "GET", "/admin/rollout").json().get("serving_process") or {}
        if (serving.get("versions") or {}).get(variant, {}).get("loaded"):
            return
        time.sleep(0.2)
    raise AssertionError(f"the {variant} was never loaded:\n{server.log_tail()}")


def analysis_rows(server: ServerProcess, rollout_id: str) -> list[dict[str, Any]]:
    assert server.home is not None
    log = PredictionLog(server.home / "serving" / DB_FILE)
    try:
        return log.analysis_rows(rollout_id)
    finally:
        log.close()


def hearth(
    project: Path, server: ServerProcess, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    assert server.home is not None
    return subprocess.run(
        [sys.executable, "-m", "hearth", *args], cwd=REPO, env=_env(project, server.home) | env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


# -- shadow mode never changes a response ---------------------------------------------------------
def test_shadow_never_changes_a_response(
    server: ServerProcess, customers: Customers, versions: dict[str, str]
) -> None:
    topology = server.topology
    sequence = [(i % 4, i % 5 == 0) for i in range(20)]  # (customer, fraud-like?)
    template = customers.take()

    def run(phase: str) -> list[dict[str, Any]]:
        traffic = Traffic(customers, f"sh-{topology}-{phase}", template)
        out = []
        for customer, fraud in sequence:
            # Fresh customers per phase: the same inputs meet the same (empty) state.
            r = predict(None, server, traffic.body(f"sh-{phase}-{customer}", fraud))
            assert r.status_code == 200, r.text
            body = r.json()
            out.append({k: body[k] for k in ("fraud_probability", "decision", "variant",
                                             "model_version", "cold_start")})  # fmt: skip
        return out

    alone = run("alone")
    state = start(server, versions["better"], mode="shadow")
    try:
        # The challenger loads on the first copy; wait until copies are being scored.
        warm = Traffic(customers, f"sh-{topology}-warm")
        deadline = time.monotonic() + 60
        while not [r for r in analysis_rows(server, state["rollout_id"]) if r["shadow"]]:
            assert time.monotonic() < deadline, server.log_tail()
            assert predict(None, server, warm.body("sh-warm")).status_code == 200
            time.sleep(0.3)
        shadowed = run("shadow")
        time.sleep(1.0)  # let the last copies land
        rows = analysis_rows(server, state["rollout_id"])
    finally:
        end_rollout(server)
    assert shadowed == alone
    assert all(p["variant"] == "champion" and p["model_version"] == "1" for p in shadowed)
    copies = [r for r in rows if r["shadow"]]
    assert len(copies) >= len(sequence)
    assert {(r["variant"], r["model_version"], r["ok"]) for r in copies} == {
        ("challenger", versions["better"], True)
    }
    # The copies were really scored by another model: their scores differ from the answers.
    live = sorted(round(r["score"], 6) for r in rows if not r["shadow"])
    assert sorted(round(r["score"], 6) for r in copies) != live


# -- canary routing --------------------------------------------------------------------------------
def test_canary_split_is_sticky_follows_the_weight_and_names_the_version(
    servers: dict[str, ServerProcess], customers: Customers, versions: dict[str, str]
) -> None:
    server = servers["monolith"]
    traffic = Traffic(customers, "canary")
    state = start(server, versions["better"], steps=[30, 100])
    try:
        wait_for_challenger(server, traffic, state)
        ids = [f"canary-{i}" for i in range(150)]

        def round_of_requests() -> dict[str, tuple[str, str]]:
            with httpx.Client() as client, ThreadPoolExecutor(4) as pool:
                done = list(pool.map(lambda c: (c, predict(client, server, traffic.body(c))), ids))
            assert all(r.status_code == 200 for _, r in done)
            return {c: (r.json()["variant"], r.json()["model_version"]) for c, r in done}

        first, second = round_of_requests(), round_of_requests()
        assert first == second  # sticky
        expected = {c: assign(state["salt"], c, 30) for c in ids}
        assert {c: v for c, (v, _) in first.items()} == expected
        assert {v: ver for v, ver in first.values()} == {
            "champion": "1",
            "challenger": versions["better"],
        }
        # The salt is random, so the share is Binomial(150, 0.3) / 150: within 5 standard
        # deviations (0.30 +- 0.19) but for ~1e-6 of runs (0.18-0.42, 3.2 sd, failed 1 in ~1500).
        share = sum(v == "challenger" for v, _ in first.values()) / len(ids)
        assert abs(share - 0.30) <= 5 * (0.30 * 0.70 / len(ids)) ** 0.5, share

        r = admin(server, "POST", "/admin/rollout/weight", {"challenger_percent": 60})
        assert r.status_code == 200 and r.json()["challenger_percent"] == 60
        time.sleep(0.6)  # every gateway re-reads the state within the refresh interval
        third = round_of_requests()
        moved_back = [c for c, (v, _) in first.items() if v == "challenger" and third[c][0] != v]
        assert moved_back == []  # raising the weight only adds customers
        assert sum(v == "challenger" for v, _ in third.values()) > sum(
            v == "challenger" for v, _ in first.values()
        )
    finally:
        end_rollout(server)


# -- faulty challengers: the champion answers, the guard rails see it ------------------------------
@pytest.mark.parametrize("drill", ["erroring", "slow"])
def test_a_faulty_challenger_never_fails_a_request_and_the_guard_rails_roll_it_back(
    servers: dict[str, ServerProcess], customers: Customers, versions: dict[str, str],
    project: Path, drill: str,
) -> None:  # fmt: skip
    server = servers["monolith"]
    traffic = Traffic(customers, f"drill-{drill}")
    state = start(server, versions[drill], steps=[50, 100])
    try:
        # The challenger is routed only once loaded: the burst is sent when it is.
        wait_until_loaded(server, traffic)
        ids = [f"drill-{drill}-{i}" for i in range(60)]
        with httpx.Client() as client, ThreadPoolExecutor(6) as pool:
            done = list(pool.map(lambda c: predict(client, server, traffic.body(c)), ids))
        assert [r.status_code for r in done] == [200] * len(ids)
        rows = analysis_rows(server, state["rollout_id"])
    finally:
        # The operator's way out, from the command line.
        cli = hearth(project, server, "rollback", "--reason", f"{drill} drill")
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "rolled back" in cli.stderr
    failures = [r for r in rows if r["variant"] == "challenger" and not r["ok"]]
    assert len(failures) >= 3, rows
    if drill == "slow":
        assert all(r["latency_ms"] >= 450 for r in failures)
    verdict = analyse(rows, Params().rollout, 0.5, mode="canary", last_step=False)
    assert verdict.decision == "rollback", verdict
    assert verdict.test is not None and verdict.test.startswith("guard"), verdict


# -- rollback under load ---------------------------------------------------------------------------
def test_rollback_under_load_fails_nothing_and_takes_effect_within_a_second(
    server: ServerProcess, customers: Customers, versions: dict[str, str]
) -> None:
    traffic = Traffic(customers, f"load-{server.topology}")
    state = start(server, versions["better"], steps=[50, 100])
    wait_for_challenger(server, traffic, state)
    rollback_under_load(server, traffic, "rollback under load").check(server.topology)


# -- admin API: bad input gets a clear 4xx and changes nothing -------------------------------------
def test_admin_refusals_change_nothing(
    servers: dict[str, ServerProcess], versions: dict[str, str]
) -> None:
    server = servers["monolith"]

    def snapshot() -> tuple[Any, int]:
        status = admin(server, "GET", "/admin/rollout").json()
        history = admin(server, "GET", "/admin/rollout/history").json()
        return status["rollout"], len(history)

    body = {"challenger_version": versions["better"]}
    # Tokens: missing → 401, wrong → 403, the API key is not an admin token.
    assert admin(server, "GET", "/admin/rollout", token=None).status_code == 401
    assert admin(server, "GET", "/admin/rollout", token="wrong").status_code == 403
    assert admin(server, "POST", "/admin/rollout/start", body, token=None,
                 **{"X-API-Key": KEY}).status_code == 401  # fmt: skip
    assert admin(server, "POST", "/admin/rollback", {}, token=KEY).status_code == 403

    before = snapshot()
    for path, payload, status in (
        ("/admin/rollout/start", {"challenger_version": "999"}, 404),
        ("/admin/rollout/start", {"challenger_version": "1"}, 422),  # the champion itself
        ("/admin/rollout/start", body | {"mode": "big-bang"}, 422),
        ("/admin/rollout/start", body | {"steps": [50, 5]}, 422),
        ("/admin/rollout/start", {"version": "2"}, 422),
        ("/admin/rollout/start", b"{nope", 400),
        ("/admin/rollout/weight", {"challenger_percent": 10}, 409),  # no rollout runs
        ("/admin/rollout/promote", {}, 409),
        # v1 is the champion: reverting "v2" is refused; with no previous, so is v1.
        ("/admin/rollback-to-previous", {"expect_champion": versions["better"]}, 409),
        ("/admin/rollback-to-previous", {"expect_champion": "1"}, 409),
        ("/admin/rollback-to-previous", {}, 422),
    ):
        r = admin(server, "POST", path, payload)
        assert r.status_code == status, (path, payload, r.text)
        assert r.json()["error"]
    # Ending a rollout when none runs is a no-op that says so (a client may retry it).
    r = admin(server, "POST", "/admin/rollback", {"reason": "to be sure"})
    assert r.status_code == 200 and r.json()["changed"] is False, r.text
    assert snapshot() == before

    start(server, versions["better"])
    try:
        running = snapshot()
        for path, payload, status in (
            ("/admin/rollout/weight", {"challenger_percent": -1}, 422),
            ("/admin/rollout/weight", {"challenger_percent": 101}, 422),
            ("/admin/rollout/weight", {"challenger_percent": "lots"}, 422),
            ("/admin/rollout/start", {"challenger_version": versions["slow"]}, 409),
        ):
            r = admin(server, "POST", path, payload)
            assert r.status_code == status, (path, payload, r.text)
            assert "0-100" in r.json()["error"] or status != 422 or "problems" in r.json()
        assert snapshot() == running
    finally:
        end_rollout(server)


def test_cli_status_and_start_errors(
    servers: dict[str, ServerProcess], versions: dict[str, str], project: Path
) -> None:
    server = servers["microservices"]
    shown = hearth(project, server, "rollout", "status", "--json")
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert status["aliases"]["champion"] == "1" and status["served"]["champion"] == "1"
    table = hearth(project, server, "rollout", "status")
    assert table.returncode == 0 and "served now: champion v1" in table.stdout
    bad = hearth(project, server, "rollout", "start", "--challenger", "999")
    assert bad.returncode == 1 and "no version" in bad.stderr and "hint" in bad.stderr
    weight = hearth(project, server, "rollout", "weight", "101")
    assert weight.returncode == 1 and "hint" in weight.stderr


# -- MLflow stopped during a canary: the rollback needs only the rollout state -------------------
def _registry_aliases(url: str) -> dict[str, str]:
    r = httpx.get(f"{url}/api/2.0/mlflow/registered-models/get", params={"name": NAME}, timeout=10)
    r.raise_for_status()
    return {a["alias"]: str(a["version"]) for a in r.json()["registered_model"].get("aliases", [])}


def _description(url: str, version: str) -> str:
    r = httpx.get(f"{url}/api/2.0/mlflow/model-versions/get",
                  params={"name": NAME, "version": version}, timeout=10)  # fmt: skip
    r.raise_for_status()
    return str(r.json()["model_version"].get("description", ""))


def test_rollback_with_mlflow_stopped_takes_effect_within_a_second_and_fails_nothing(
    project: Path,
    versions: dict[str, str],
    customers: Customers,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    logs = tmp_path_factory.mktemp("mlflow-stopped")
    with (
        mlflow_server(project, port, logs / "mlflow.log") as mlflow_process,
        project_servers(project, tmp_path_factory, "no-mlflow", ("monolith",),
                        HEARTH_ADMIN_TOKEN=ADMIN, HEARTH_MLFLOW_TRACKING_URI=url) as started,
    ):  # fmt: skip
        server = started["monolith"]
        traffic = Traffic(customers, "no-mlflow")
        state = start(server, versions["better"], steps=[50, 100])
        assert _registry_aliases(url)["challenger"] == versions["better"]
        wait_for_challenger(server, traffic, state)

        def stop_mlflow() -> None:  # the registry is gone before the rollback
            mlflow_process.stop(timeout_s=10)
            assert not http_ok(f"{url}/health", timeout_s=0.5)
            time.sleep(1)

        seen = rollback_under_load(server, traffic, "MLflow down, bad canary", 2.0, stop_mlflow)
        seen.check("MLflow stopped")
        r = seen.response
        assert (r.json()["changed"], r.json()["aliases"]) == (True, "pending")

        # The operator's CLI works on the state alone too: status says the registry is down.
        cli = {"HEARTH_MLFLOW_TRACKING_URI": url}
        shown = hearth(project, server, "rollout", "status", "--json", **cli)
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        assert status["aliases"] == {} and "unavailable" in status["aliases_error"]
        assert status["rollout"]["status"] == "rolled_back"
        assert status["pending_repair"]["after"] == {"challenger": None}
        again = hearth(project, server, "rollback", **cli)
        assert again.returncode == 0 and "nothing changed" in again.stderr, again.stderr

        # MLflow back: the recorded alias write is made (the challenger alias dropped).
        with mlflow_server(project, port, logs / "mlflow.log"):
            repaired = hearth(project, server, "rollout", "repair", **cli)
            assert repaired.returncode == 0, repaired.stderr
            assert _registry_aliases(url) == {"champion": "1"}
            # The rolled-back version's description says why: written with the aliases, by
            # the repair (the rollback itself never waited for MLflow).
            described = _description(url, versions["better"])
            assert "rolled back in rollout" in described and "MLflow down, bad canary" in described
            shown = hearth(project, server, "rollout", "status", "--json", **cli)
            status = json.loads(shown.stdout)
            assert status["pending_repair"] is None and status["aliases"] == {"champion": "1"}
