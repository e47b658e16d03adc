"""A real Prefect server started as `hearth up` starts it beyond loopback requires its auth
string, and a real Prefect client with the stack's environment gets in.

The command and environment are the ones built for a bind on 0.0.0.0; only the interface is
swapped for 127.0.0.1, so the test opens nothing beyond this machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from hearth.config import Settings
from hearth.launch.launcher import free_port, launched
from hearth.rollout.registry_client import RestRegistry
from hearth.secrets_file import ensure_secrets
from hearth.stack.services import Service, Stack
from hearth.traffic.rollout_state import RegistryError

pytestmark = pytest.mark.slow

LOOPBACK = "127.0.0.1"


def beyond_loopback(home: Path, server: str) -> tuple[Stack, Service, list[str], int]:
    """The stack, `server` ("prefect" or "mlflow") as `hearth up` builds it for a bind on
    0.0.0.0, its command with that interface swapped for 127.0.0.1, and its port."""
    ensure_secrets(home)
    port = free_port()
    settings = Settings(home=home, **{f"{server}_host": "0.0.0.0", f"{server}_port": port})
    stack = Stack(settings, repo_dir=home)
    service = stack.prefect_server() if server == "prefect" else stack.mlflow()
    cmd = [LOOPBACK if arg == "0.0.0.0" else arg for arg in service.cmd]
    return stack, service, cmd, port


def test_prefect_beyond_loopback_requires_the_auth_string(tmp_path: Path) -> None:
    stack, service, cmd, port = beyond_loopback(tmp_path, "prefect")
    api = f"http://{LOOPBACK}:{port}/api"
    env = {**stack.env(), **service.env, "PREFECT_API_URL": api}
    log = tmp_path / "prefect.log"
    with launched("prefect", cmd, env, tmp_path, log, f"{api}/health", timeout_s=180):
        # The probe stays open; the API does not.
        assert httpx.get(f"{api}/health", timeout=10).status_code == 200
        assert httpx.post(f"{api}/flows/filter", json={}, timeout=10).status_code == 401
        wrong = {"Authorization": "Basic aGVhcnRoOm5vcGU="}  # hearth:nope
        assert httpx.post(f"{api}/flows/filter", json={}, headers=wrong).status_code == 401
        ok = httpx.post(f"{api}/flows/filter", json={}, headers=stack.prefect_headers())
        assert ok.status_code == 200, ok.text
        # Prefect's own client, with the environment the stack gives its processes (the
        # server's variable removed: a client must do with PREFECT_API_AUTH_STRING).
        client_env = {k: v for k, v in env.items() if k != "PREFECT_SERVER_API_AUTH_STRING"}
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", "work-pool", "ls"],
            env=client_env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


def test_mlflow_beyond_loopback_runs_its_basic_auth_app(tmp_path: Path) -> None:
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth]")
    stack, service, cmd, port = beyond_loopback(tmp_path, "mlflow")
    url = f"http://{LOOPBACK}:{port}"
    env = {**stack.env(), **service.env}
    log = tmp_path / "mlflow.log"
    search = f"{url}/api/2.0/mlflow/experiments/search"
    with launched("mlflow", cmd, env, tmp_path, log, f"{url}/health", timeout_s=180):
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        assert httpx.post(search, json={"max_results": 1}, timeout=10).status_code == 401
        wrong = httpx.post(search, json={"max_results": 1}, auth=("hearth", "nope"), timeout=10)
        assert wrong.status_code == 401
        # The credentials every process of the stack gets (MLflow's client reads them).
        creds = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
        ok = httpx.post(search, json={"max_results": 1}, auth=creds, timeout=10)
        assert ok.status_code == 200, ok.text + log.read_text()[-3000:]
        # The rollout's REST client (the gateway's admin API) sends them too.
        with RestRegistry(url) as anonymous, pytest.raises(RegistryError) as refused:
            anonymous.aliases("fraud-detector")
        assert refused.value.status == 401
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_USERNAME", creds[0])
            mp.setenv("MLFLOW_TRACKING_PASSWORD", creds[1])
            with RestRegistry.from_environment(url) as registry:
                assert registry.aliases("fraud-detector") == {}  # no such model yet: no aliases
