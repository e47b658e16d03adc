"""What `hearth up` starts, in order, and how each one proves it is healthy.

MLflow first (flows log through it), then Prefect's server, the work pool and the
deployments, the worker, and last the serving stack. Every service gets the same
environment: Hearth's Settings exported, the Prefect API and the MLflow server as URLs, and
JSON logs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from hearth.config import Settings
from hearth.launch.launcher import http_ok
from hearth.launch.topologies import READY_PATH, serve_command
from hearth.stack import process
from hearth.stack.process import Running, StackError

WORK_POOL = "hearth-process"
PYTHON = sys.executable


@dataclass(frozen=True)
class Service:
    """One process of the stack: how to start it and when it counts as healthy."""

    name: str
    cmd: list[str]
    url: str | None  # what a user opens (a UI, the API)
    health_url: str | None  # 200 means healthy; None: `healthy` decides
    timeout_s: float = 120.0
    healthy: Callable[[], bool] | None = field(default=None, compare=False)

    def check(self) -> bool:
        if self.healthy is not None:
            return self.healthy()
        return self.health_url is not None and http_ok(self.health_url)


@dataclass(frozen=True)
class Stack:
    """The addresses of the stack's servers, from Settings."""

    settings: Settings
    topology: str = "monolith"
    repo_dir: Path = Path(".")

    @property
    def prefect_api(self) -> str:
        s = self.settings
        return f"http://{s.prefect_host}:{s.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.settings.mlflow_host}:{self.settings.mlflow_port}"

    @property
    def serving_url(self) -> str:
        return f"http://{self.settings.serving_host}:{self.settings.serving_port}"

    def ports(self) -> dict[str, tuple[str, int]]:
        """Setting name → (host, port) of every port the stack listens on."""
        s = self.settings
        return {
            "HEARTH_PREFECT_PORT": (s.prefect_host, s.prefect_port),
            "HEARTH_MLFLOW_PORT": (s.mlflow_host, s.mlflow_port),
            "HEARTH_SERVING_PORT": (s.serving_host, s.serving_port),
        }

    def env(self) -> dict[str, str]:
        """The environment of every service: this one, plus the stack's URLs."""
        env = dict(os.environ)
        env.update(self.settings.environment())
        env.update(
            PREFECT_API_URL=self.prefect_api,
            HEARTH_PREFECT_API_URL=self.prefect_api,
            # Children build their own Settings: they must log through the server too.
            HEARTH_MLFLOW_TRACKING_URI=self.mlflow_url,
            MLFLOW_TRACKING_URI=self.mlflow_url,
            HEARTH_REPO_DIR=str(self.repo_dir),
            HEARTH_LOG_FORMAT="json",
            HEARTH_HOME=str(self.settings.home_abs),
        )
        return env

    # -- the services ---------------------------------------------------------------------
    def mlflow(self) -> Service:
        s = self.settings
        if s.mlflow_uri.startswith(("http://", "https://")):
            raise StackError(
                f"HEARTH_MLFLOW_TRACKING_URI is a server already ({s.mlflow_uri}); `hearth up` "
                "runs its own over the local store: unset it"
            )
        cmd = [
            PYTHON, "-m", "mlflow", "server", "--backend-store-uri", s.mlflow_uri,
            "--default-artifact-root", str(s.mlflow_artifact_root),
            "--host", s.mlflow_host, "--port", str(s.mlflow_port), "--workers", "1",
        ]  # fmt: skip
        return Service("mlflow", cmd, self.mlflow_url, f"{self.mlflow_url}/health")

    def prefect_server(self) -> Service:
        s = self.settings
        cmd = [PYTHON, "-m", "prefect", "server", "start",
               "--host", s.prefect_host, "--port", str(s.prefect_port)]  # fmt: skip
        ui = self.prefect_api.removesuffix("/api")
        return Service("prefect-server", cmd, ui, f"{self.prefect_api}/health")

    def worker(self) -> Service:
        cmd = [PYTHON, "-m", "prefect", "worker", "start", "--pool", WORK_POOL,
               "--type", "process", "--name", "hearth-worker"]  # fmt: skip
        return Service("prefect-worker", cmd, None, None, healthy=self.worker_online)

    def serving(self) -> Service:
        s = self.settings
        cmd = serve_command(self.topology, s.serving_port, s.serving_host)
        return Service(
            "serving", cmd, self.serving_url, f"{self.serving_url}{READY_PATH}", timeout_s=300
        )

    def worker_online(self) -> bool:
        """True when the work pool has a worker that Prefect sees as online."""
        try:
            r = httpx.post(f"{self.prefect_api}/work_pools/{WORK_POOL}/workers/filter", json={},
                           timeout=5)  # fmt: skip
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and any(w.get("status") == "ONLINE" for w in r.json())


def prefect_cli(stack: Stack, args: list[str], what: str, timeout_s: float = 300) -> None:
    """Run a one-shot `prefect …` command against the stack's server; fail with its output."""
    cmd = [PYTHON, "-m", "prefect", "--no-prompt", *args]
    done = subprocess.run(
        cmd, cwd=stack.repo_dir, env=stack.env(), capture_output=True, text=True,
        timeout=timeout_s, check=False,
    )  # fmt: skip
    log = stack.settings.home_abs / "logs" / "prefect-cli.log"
    with log.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n{done.stdout}{done.stderr}\n")
    if done.returncode:
        raise StackError(f"{what} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def record(home: Path, running: list[Running], service: Service, pid: int, log: Path) -> None:
    running.append(
        Running(service.name, pid, service.url, service.health_url, str(log), time.time())
    )
    process.write_state(home, running)
