"""What `hearth up` starts, in order, and how each one proves it is healthy.

MLflow first (flows log through it), then Prefect's server, the work pool and the
deployments, the worker, and last the serving stack. Every service gets the same
environment: Hearth's Settings exported, the Prefect API and the MLflow server as URLs, and
JSON logs.

MLflow or Prefect bound beyond loopback turn on their own auth: MLflow's basic-auth app
(admin `hearth`, its password HEARTH_MLFLOW_ADMIN_PASSWORD) and Prefect's API auth string
(HEARTH_PREFECT_AUTH_STRING), both from the secrets file that `hearth up` writes; every
client the stack starts gets the credentials (Settings.environment). On loopback both stay
as they are by default, without auth.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import httpx

from hearth.config import MLFLOW_SERVER_ENV, Settings, is_loopback
from hearth.launch.hearth_server import serving_ready
from hearth.launch.launcher import http_ok
from hearth.launch.topologies import READY_PATH, default_workers, serve_command
from hearth.secrets_file import STACK_ADMIN_USER
from hearth.stack import process, shared
from hearth.stack.process import Running, StackError

WORK_POOL = "hearth-process"  # every deployment's pool but the GPU one; `hearth up`'s worker
# A second process pool for a machine with a GPU: its deployments run where a worker of this
# pool runs (`prefect worker start --pool hearth-gpu` on that machine), nowhere else.
GPU_WORK_POOL = "hearth-gpu"
WORK_POOLS = (WORK_POOL, GPU_WORK_POOL)  # what `hearth up` creates
PYTHON = sys.executable
MLFLOW_AUTH_INI = "mlflow-auth.ini"  # under HEARTH_HOME: where the basic-auth app keeps users


@dataclass(frozen=True)
class Service:
    """One process of the stack: how to start it and when it counts as healthy."""

    name: str
    cmd: list[str]
    url: str | None  # what a user opens (a UI, the API)
    health_url: str | None  # 200 means healthy; None: `healthy` decides
    timeout_s: float = 120.0
    healthy: Callable[[], bool] | None = field(default=None, compare=False)
    env: dict[str, str] = field(default_factory=dict)  # this service's own, over the stack's

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
    # local: SQLite stores; shared: PostgreSQL and Redis too (`hearth.stack.shared`); join:
    # only serving and a worker, on the servers of another machine's shared stack.
    mode: Literal["local", "shared", "join"] = "local"
    pool: str = WORK_POOL  # the work pool this stack's worker takes runs from

    @property
    def prefect_api(self) -> str:
        s = self.settings
        if self.mode == "join":
            assert s.prefect_api_url is not None  # recorded from the join file
            return s.prefect_api_url
        return f"http://{shared.client_host(s.prefect_host)}:{s.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        s = self.settings
        if self.mode == "join":
            return s.mlflow_uri
        return f"http://{shared.client_host(s.mlflow_host)}:{s.mlflow_port}"

    @cached_property
    def servers(self) -> shared.SharedServers:
        """The databases and the Redis of a shared stack (mode shared or join)."""
        return shared.shared_servers(self.settings)

    @property
    def serving_url(self) -> str:
        return f"http://{self.settings.serving_host}:{self.settings.serving_port}"

    def ports(self) -> dict[str, tuple[str, int]]:
        """Setting name → (host, port) of every port the stack listens on."""
        s = self.settings
        if self.mode == "join":
            return {"HEARTH_SERVING_PORT": (s.serving_host, s.serving_port)}
        ports = {
            "HEARTH_PREFECT_PORT": (s.prefect_host, s.prefect_port),
            "HEARTH_MLFLOW_PORT": (s.mlflow_host, s.mlflow_port),
            "HEARTH_SERVING_PORT": (s.serving_host, s.serving_port),
        }
        if self.mode == "shared" and self.servers.own_postgres:
            ports["HEARTH_POSTGRES_PORT"] = (s.postgres_host, s.postgres_port)
        if self.mode == "shared" and self.servers.own_redis:
            ports["HEARTH_REDIS_PORT"] = (s.redis_host, s.redis_port)
        return ports

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
        if self.mode != "local":  # every Hearth process on the shared servers
            env.update(self.shared_settings())
        return env

    def shared_settings(self) -> dict[str, str]:
        """The settings that point Hearth at the shared servers (mode shared or join)."""
        return {
            "HEARTH_DATABASE_URL": self.servers.database_url,
            "HEARTH_STORE_BACKEND": "redis",
            "HEARTH_REDIS_URL": self.servers.redis_url,
            "HEARTH_MLFLOW_TRACKING_URI": self.mlflow_url,
            "HEARTH_PREFECT_API_URL": self.prefect_api,
        }

    def auth_notes(self) -> list[str]:
        """What `hearth up` says about the auth of MLflow and Prefect (on only beyond loopback)."""
        s, notes = self.settings, []
        for name, on, host, how in (
            ("MLflow", s.mlflow_auth, s.mlflow_host,
             f"basic auth, user {STACK_ADMIN_USER}, password HEARTH_MLFLOW_ADMIN_PASSWORD"),
            ("Prefect", s.prefect_auth, s.prefect_host,
             "its API auth string, HEARTH_PREFECT_AUTH_STRING"),
        ):  # fmt: skip
            where = f"{name} binds {host}"
            notes.append(
                f"{where}, beyond loopback: auth on ({how}; in the secrets file)"
                if on
                else f"{where} (loopback): no auth"
            )
        return notes

    # -- the services ---------------------------------------------------------------------
    def mlflow(self) -> Service:
        s = self.settings
        if self.mode == "shared":
            cmd = mlflow_server_command(
                self.servers.mlflow_database_url, s.mlflow_artifact_root, s.mlflow_host,
                s.mlflow_port,
            )  # fmt: skip
            if not is_loopback(s.mlflow_host):  # other machines call it by this name
                name, port = shared.advertised_host(s.mlflow_host), s.mlflow_port
                cmd += ["--allowed-hosts", f"{name},{name}:{port},localhost:{port},"
                        f"127.0.0.1:{port},10.*,172.*,192.168.*"]  # fmt: skip
            return self._mlflow_service(cmd)
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
        return self._mlflow_service(cmd)

    def _mlflow_service(self, cmd: list[str]) -> Service:
        s, env = self.settings, dict(MLFLOW_SERVER_ENV)
        if s.mlflow_auth:
            cmd += ["--app-name", "basic-auth"]
            env |= self.mlflow_auth_env()
        # /health answers without credentials in the basic-auth app too.
        return Service("mlflow", cmd, self.mlflow_url, f"{self.mlflow_url}/health", env=env)

    def mlflow_auth_env(self) -> dict[str, str]:
        """The basic-auth app's configuration (users in HEARTH_HOME), and its admin."""
        s = self.settings
        if importlib.util.find_spec("flask_wtf") is None:
            raise StackError(
                f"MLflow binds {s.mlflow_host}, beyond loopback, so `hearth up` runs its "
                "basic-auth app, which needs Flask-WTF: `pip install 'mlflow[auth]'` (or bind "
                "HEARTH_MLFLOW_HOST=127.0.0.1)"
            )
        if s.mlflow_admin_password is None:
            raise StackError("HEARTH_MLFLOW_ADMIN_PASSWORD is not set: run `hearth secrets`")
        password = s.mlflow_admin_password.get_secret_value()
        ini = s.home_abs / MLFLOW_AUTH_INI
        ini.parent.mkdir(parents=True, exist_ok=True)
        ini.write_text(
            "[mlflow]\n"
            "default_permission = NO_PERMISSIONS\n"
            f"database_uri = sqlite:///{s.home_abs / 'mlflow-auth.db'}\n"
            f"admin_username = {STACK_ADMIN_USER}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        return {
            "MLFLOW_AUTH_CONFIG_PATH": str(ini),
            # The admin is made with this password on the first start (not in the ini: the
            # secret stays in the 0600 secrets file).
            "MLFLOW_AUTH_ADMIN_USERNAME": STACK_ADMIN_USER,
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            # Flask's session/CSRF key: static across restarts, derived from the password.
            "MLFLOW_FLASK_SERVER_SECRET_KEY": hashlib.sha256(
                f"hearth-mlflow-flask:{password}".encode()
            ).hexdigest(),
        }

    def prefect_server(self) -> Service:
        s = self.settings
        cmd = [PYTHON, "-m", "prefect", "server", "start",
               "--host", s.prefect_host, "--port", str(s.prefect_port)]  # fmt: skip
        ui = self.prefect_api.removesuffix("/api")
        env = {}
        if s.prefect_auth:
            env["PREFECT_SERVER_API_AUTH_STRING"] = self._prefect_auth_string()
        if self.mode == "shared":  # its database on PostgreSQL, through asyncpg
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = shared.driver_url(
                self.servers.prefect_database_url, "asyncpg"
            )
        # /api/health answers without the auth string.
        return Service("prefect-server", cmd, ui, f"{self.prefect_api}/health", env=env)

    def _prefect_auth_string(self) -> str:
        auth = self.settings.prefect_auth_string
        if auth is None:
            raise StackError("HEARTH_PREFECT_AUTH_STRING is not set: run `hearth secrets`")
        return auth.get_secret_value()

    def prefect_headers(self) -> dict[str, str]:
        """Headers of a request to the stack's Prefect API (its auth string, when on)."""
        joined = self.mode == "join" and self.settings.prefect_auth_string is not None
        if not (self.settings.prefect_auth or joined):
            return {}
        token = base64.b64encode(self._prefect_auth_string().encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def postgres(self) -> Service:
        """The shared stack's PostgreSQL (`shared.prepare_postgres` initialises it first)."""
        s = self.settings
        url = shared.database_sibling(self.servers.database_url, "postgres")
        return Service("postgres", shared.postgres_command(s), None, None,
                       healthy=lambda: shared.postgres_answers(url))  # fmt: skip

    def redis(self) -> Service:
        url = self.servers.redis_url
        return Service("redis", shared.redis_command(self.settings), None, None,
                       healthy=lambda: shared.redis_answers(url))  # fmt: skip

    @property
    def worker_name(self) -> str:
        """This machine's (and home's) worker: each machine that joins adds its own."""
        home = hashlib.sha256(str(self.settings.home_abs).encode()).hexdigest()[:6]
        return f"hearth-worker-{socket.gethostname()}-{home}"

    def worker(self) -> Service:
        cmd = [PYTHON, "-m", "prefect", "worker", "start", "--pool", self.pool,
               "--type", "process", "--name", self.worker_name]  # fmt: skip
        return Service("prefect-worker", cmd, None, None, healthy=self.worker_online)

    def serving(self) -> Service:
        s = self.settings
        # `hearth serve`'s default number of workers, named here so that healthy means
        # every worker is ready (a /readyz probe reaches one of them only).
        workers = default_workers()
        cmd = serve_command(self.topology, s.serving_port, s.serving_host, workers)
        url = self.serving_url
        return Service(
            "serving", cmd, url, f"{url}{READY_PATH}", timeout_s=300,
            healthy=lambda: serving_ready(url, workers),
        )  # fmt: skip

    def worker_online(self) -> bool:
        """True when Prefect sees this stack's worker in its work pool as online."""
        try:
            r = httpx.post(f"{self.prefect_api}/work_pools/{self.pool}/workers/filter", json={},
                           headers=self.prefect_headers(), timeout=5)  # fmt: skip
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and any(
            w.get("status") == "ONLINE" and w.get("name") == self.worker_name for w in r.json()
        )


def mlflow_server_command(backend_uri: str, artifacts: Path, host: str, port: int) -> list[str]:
    """MLflow's tracking server on `backend_uri` (a PostgreSQL URL: through psycopg 3) that
    serves the model files itself (``--serve-artifacts``, stored under `artifacts`): its
    clients need its URL only, not a shared folder, whichever machine they run on."""
    return [
        PYTHON, "-m", "mlflow", "server", "--backend-store-uri",
        shared.driver_url(backend_uri, "psycopg"),  # psycopg 3: Hearth's driver
        "--serve-artifacts", "--artifacts-destination", str(artifacts),
        "--host", host, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


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
