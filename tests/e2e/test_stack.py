"""`hearth up` brings the whole stack up as real processes; `hearth down` leaves none behind.

A deployment runs through the worker (seen Completed through the Prefect API), its run is in
MLflow (seen through the tracking server), the gateway scores a transaction, `hearth ps`
says all is healthy, and after `hearth down` no process of the stack is left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import psutil
import pytest

from hearth.schema import TIMESTAMP_FORMAT
from tests.e2e.conftest import API_KEY, hearth, stack_pids, still_running, user_env

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


class Up:
    def __init__(self, project: Path, env: dict[str, str]) -> None:
        self.project, self.env = project, env
        self.prefect = f"http://127.0.0.1:{env['HEARTH_PREFECT_PORT']}/api"
        self.mlflow = f"http://127.0.0.1:{env['HEARTH_MLFLOW_PORT']}"
        self.gateway = f"http://127.0.0.1:{env['HEARTH_SERVING_PORT']}"
        self.pids: set[int] = set()
        self.output = ""  # what `hearth up` printed

    def remember_pids(self) -> None:
        """Every process of the stack now: the recorded ones and all their descendants."""
        self.pids |= stack_pids(self.project / ".hearth")


@pytest.fixture(scope="module")
def stack(project: Path) -> Iterator[Up]:
    env = user_env(project)
    up = Up(project, env)
    try:
        done = hearth(["up", "--topology", "monolith"], env, project)
        assert done.returncode == 0, done.stdout + done.stderr
        up.output = done.stdout + done.stderr
        assert up.gateway in up.output  # the URLs are printed
        up.remember_pids()
        yield up
    finally:
        up.remember_pids()
        down = hearth(["down"], env, project, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr


def _transaction(project: Path) -> dict:
    tx = pd.read_parquet(project / "data" / "processed" / "transactions.parquet").iloc[-1]
    return {
        "transaction_id": "e2e-1", "timestamp": (tx["timestamp"] + pd.Timedelta(days=1))
        .strftime(TIMESTAMP_FORMAT), "customer_id": str(tx["customer_id"]),
        "merchant_id": str(tx["merchant_id"]), "merchant_category": str(tx["merchant_category"]),
        "amount": float(tx["amount"]), "currency": str(tx["currency"]),
        "channel": str(tx["channel"]), "device_id": str(tx["device_id"]),
        "latitude": float(tx["latitude"]), "longitude": float(tx["longitude"]),
    }  # fmt: skip


def test_the_gateway_scores_a_transaction(stack: Up) -> None:
    r = httpx.post(f"{stack.gateway}/predict", json=_transaction(stack.project),
                   headers={"X-API-Key": API_KEY}, timeout=30)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["variant"] == "champion" and r.json()["model_version"] == "1"


def test_up_wrote_random_secrets_readable_by_the_user_only(stack: Up) -> None:
    secrets = stack.project / ".hearth" / "secrets.env"
    assert secrets.stat().st_mode & 0o777 == 0o600
    assert str(secrets) in stack.output and "(loopback): no auth" in stack.output
    assert "HEARTH_ADMIN_TOKEN=" in secrets.read_text()


def test_a_deployment_runs_on_the_worker_and_logs_to_the_mlflow_server(stack: Up) -> None:
    dep = httpx.get(f"{stack.prefect}/deployments/name/monitor/monitor-hourly", timeout=10)
    assert dep.status_code == 200, dep.text
    run = httpx.post(
        f"{stack.prefect}/deployments/{dep.json()['id']}/create_flow_run",
        json={"parameters": {"trigger_retraining": False}}, timeout=10,
    )  # fmt: skip
    assert run.status_code in (200, 201), run.text
    state = None
    for _ in range(180):  # bounded: at most ~3 minutes
        state = httpx.get(f"{stack.prefect}/flow_runs/{run.json()['id']}", timeout=10).json()
        if state["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(1)
    assert state is not None and state["state_type"] == "COMPLETED", state
    exp = httpx.get(f"{stack.mlflow}/api/2.0/mlflow/experiments/get-by-name",
                    params={"experiment_name": "monitoring"}, timeout=10)  # fmt: skip
    assert exp.status_code == 200, exp.text
    runs = httpx.post(f"{stack.mlflow}/api/2.0/mlflow/runs/search",
                      json={"experiment_ids": [exp.json()["experiment"]["experiment_id"]]},
                      timeout=10).json()  # fmt: skip
    # The hourly schedule may add its own run next to ours: every one is a drift run.
    names = [r["info"]["run_name"] for r in runs["runs"]]
    assert names and set(names) == {"drift"}, names


def test_ps_reports_every_service_healthy(stack: Up) -> None:
    done = hearth(["ps"], stack.env, stack.project, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("mlflow", "prefect-server", "prefect-worker", "serving"):
        assert f"{name}" in done.stdout and "UNHEALTHY" not in done.stdout


def test_a_port_in_use_is_named(project: Path, stack: Up) -> None:
    env = dict(stack.env, HEARTH_HOME=str(project / "other-home"))
    done = hearth(["up"], env, project, timeout=60)
    assert done.returncode == 1
    assert "port in use" in done.stderr and "HEARTH_PREFECT_PORT" in done.stderr


def test_down_leaves_no_process_behind(project: Path, stack: Up) -> None:
    # Runs last in this module (pytest keeps file order): it takes the stack down itself.
    stack.remember_pids()
    assert len(stack.pids) >= 4
    done = hearth(["down"], stack.env, project, timeout=120)
    assert done.returncode == 0, done.stderr
    left = still_running(stack.pids)
    assert left == [], [psutil.Process(p).cmdline() for p in left]
    assert hearth(["ps"], stack.env, project, timeout=60).stdout.startswith("nothing")
