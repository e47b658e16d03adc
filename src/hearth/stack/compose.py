"""`hearth up --containers`: the stack of ``deploy/compose.yaml`` on the local engine.

The containers run what `hearth up --shared` runs as processes: PostgreSQL (the rollout
state, heartbeats and prediction log; MLflow's and Prefect's databases), Redis (the online
features), MLflow (serving the model files itself), Prefect's server and a worker, and the
serving topology (gateway → features, model; or the monolith). The Compose file names its
secrets, images and host ports as variables; this module writes them into
``HEARTH_HOME/compose.env`` (mode 0600; the secrets are the home's, `hearth secrets`), runs
``docker-compose`` with it, waits until every container's health check passes, and records
in the home's secrets file where the containers' servers are published, so that the CLI on
this machine (`hearth rollout …`, `hearth pipeline`) works on the same state and registry.
`hearth down` takes the containers down and keeps the named data volumes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hearth.config import Settings
from hearth.containers import engine
from hearth.containers.build import local_image
from hearth.launch.launcher import port_in_use
from hearth.secrets_file import read_secrets, record_shared, secrets_path, write_secrets
from hearth.stack import shared
from hearth.stack.process import StackError

ENV_FILE = "compose.env"  # under HEARTH_HOME, mode 0600
COMPOSE_FILE = Path("deploy") / "compose.yaml"
K8S_SECRET = "hearth-secrets"  # deploy/k8s's secret: `--from-env-file` of ENV_FILE
# The secrets the containers get (by name, in both deploy/compose.yaml and deploy/k8s).
COMPOSE_SECRETS = (
    "HEARTH_API_KEY",
    "HEARTH_ADMIN_TOKEN",
    "HEARTH_INTERNAL_TOKEN",
    "HEARTH_POSTGRES_PASSWORD",
    "HEARTH_REDIS_PASSWORD",
    "HEARTH_PREFECT_AUTH_STRING",
)
# Image (the name `hearth containerize` / `hearth images` give it) → its Compose variable.
IMAGES = {
    "hearth/gateway": "HEARTH_GATEWAY_IMAGE",
    "hearth/features": "HEARTH_FEATURES_IMAGE",
    "hearth/model": "HEARTH_MODEL_IMAGE",
    "hearth/monolith": "HEARTH_MONOLITH_IMAGE",
    "hearth/worker": "HEARTH_WORKER_IMAGE",  # Prefect's worker, Hearth's flows (containerize)
    "hearth/services": "HEARTH_SERVICES_IMAGE",  # PostgreSQL and Redis (`make stack-images`)
    "hearth/stack": "HEARTH_STACK_IMAGE",  # MLflow, Prefect's server (the same)
}
# Service of deploy/compose.yaml → the variable of its image.
SERVICE_IMAGES = {
    "postgres": "HEARTH_SERVICES_IMAGE",
    "redis": "HEARTH_SERVICES_IMAGE",
    "mlflow": "HEARTH_STACK_IMAGE",
    "prefect-server": "HEARTH_STACK_IMAGE",
    "prefect-worker": "HEARTH_WORKER_IMAGE",
    "features": "HEARTH_FEATURES_IMAGE",
    "model": "HEARTH_MODEL_IMAGE",
    "model-gpu": "HEARTH_MODEL_IMAGE",
    "gateway": "HEARTH_GATEWAY_IMAGE",
    "monolith": "HEARTH_MONOLITH_IMAGE",
}
INFRASTRUCTURE = ("postgres", "redis", "mlflow", "prefect-server", "prefect-worker")
TOPOLOGY_SERVICES = {"microservices": ("features", "model", "gateway"), "monolith": ("monolith",)}
PROFILES = ("gpu", "monolith")
HOW_TO_GET_IMAGES = (
    "build them: `hearth images base` (the base image, from Debian packages), "
    "`hearth containerize` (gateway, features, model, monolith, worker), `make stack-images` "
    "(PostgreSQL, Redis, MLflow, Prefect)"
)

Say = Callable[[str], None]


def project_name(settings: Settings) -> str:
    """The Compose project of this home: one stack per home, its volumes named after it."""
    digest = hashlib.sha256(str(settings.home_abs).encode()).hexdigest()[:8]
    return f"hearth-{digest}"


def env_file(settings: Settings) -> Path:
    return settings.home_abs / ENV_FILE


# -- the engine -----------------------------------------------------------------------------
def compose_command() -> list[str] | None:
    """docker-compose (Debian's 1.29), else Docker's compose plugin; None: neither."""
    if exe := shutil.which("docker-compose"):
        return [exe]
    docker = shutil.which("docker")
    if docker and _runs([docker, "compose", "version"]):
        return [docker, "compose"]
    return None


def _runs(cmd: Sequence[str], timeout_s: float = 20) -> bool:
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def engine_problem() -> str | None:
    """Why no container can start here (no docker CLI, no daemon, no Compose), or None."""
    if (problem := engine.problem()) is not None:
        return f"no container engine: {problem}; {engine.INSTALL_HINT}"
    if compose_command() is None:
        return "neither docker-compose nor `docker compose` is installed: `make container-deps`"
    return None


def images() -> dict[str, str]:
    """Compose variable → the image it runs: the variable from the environment when set,
    else the image's name at the tag `hearth containerize` gives its latest build."""
    return {var: os.environ.get(var) or f"{name}:latest" for name, var in IMAGES.items()}


def missing_images(images: dict[str, str]) -> list[str]:
    """The images (of `images`' values) the local engine does not have."""
    return [ref for ref in images.values() if not local_image(ref)]


# -- the env file ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ContainerStack:
    """deploy/compose.yaml for one home: its project, env file and what it publishes."""

    settings: Settings
    root: Path  # the checkout holding deploy/compose.yaml
    images: dict[str, str]  # Compose variable → image reference

    @property
    def project(self) -> str:
        return project_name(self.settings)

    @property
    def compose_file(self) -> Path:
        return self.root / COMPOSE_FILE

    def published(self) -> dict[str, tuple[str, int]]:
        """Compose variable of each published port → (host interface, port), from Settings."""
        s = self.settings
        return {
            "HEARTH_POSTGRES": (s.postgres_host, s.postgres_port),
            "HEARTH_REDIS": (s.redis_host, s.redis_port),
            "HEARTH_MLFLOW": (s.mlflow_host, s.mlflow_port),
            "HEARTH_PREFECT": (s.prefect_host, s.prefect_port),
            "HEARTH_SERVING": (s.serving_host, s.serving_port),
        }

    def env_values(self) -> dict[str, str]:
        """What the env file holds: the home's secrets, the images, the published ports."""
        known = read_secrets(secrets_path(self.settings.home_abs))
        missing = [v for v in COMPOSE_SECRETS if v not in known]
        if missing:
            raise StackError(f"{', '.join(missing)} not in the secrets file: `hearth secrets`")
        values = {v: known[v] for v in COMPOSE_SECRETS}
        for prefix, (host, port) in self.published().items():
            values[f"{prefix}_HOST"], values[f"{prefix}_PORT"] = host, str(port)
        return values | self.images

    def write_env_file(self) -> Path:
        path = env_file(self.settings)
        write_secrets(path, self.env_values())  # mode 0600: it holds the secrets
        return path

    def host_settings(self) -> dict[str, str]:
        """Where this machine's Hearth reaches the containers' servers (published ports)."""
        s, values = self.settings, self.env_values()
        pg = shared.client_host(s.postgres_host)
        redis = shared.client_host(s.redis_host)
        return {
            "HEARTH_DATABASE_URL": f"postgresql://{shared.DB_USER}:"
            f"{values['HEARTH_POSTGRES_PASSWORD']}@{pg}:{s.postgres_port}/{shared.HEARTH_DB}",
            "HEARTH_STORE_BACKEND": "redis",
            "HEARTH_REDIS_URL": f"redis://:{values['HEARTH_REDIS_PASSWORD']}@{redis}:"
            f"{s.redis_port}/0",
            "HEARTH_MLFLOW_TRACKING_URI": f"http://{shared.client_host(s.mlflow_host)}:"
            f"{s.mlflow_port}",
        }  # not Prefect's server: it requires its auth string; flows run here keep their own

    def urls(self, topology: str | None) -> dict[str, str]:
        """What a user opens (the API only when serving runs)."""
        out = {name: f"http://{shared.client_host(host)}:{port}"
               for name, (host, port) in self.published().items()}  # fmt: skip
        keep = {"HEARTH_MLFLOW": "mlflow", "HEARTH_PREFECT": "prefect"}
        if topology is not None:
            keep["HEARTH_SERVING"] = topology
        return {keep[k]: url for k, url in out.items() if k in keep}

    # -- docker-compose -------------------------------------------------------------------
    def compose(self, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
        """``docker-compose -p <project> --env-file <env file> -f deploy/compose.yaml …``"""
        base = compose_command()
        if base is None:
            raise StackError(engine_problem() or "no docker-compose")
        cmd = [*base, "-p", self.project, "--env-file", str(env_file(self.settings)),
               "-f", str(self.compose_file), *args]  # fmt: skip
        try:
            return subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise StackError(f"`{' '.join(args)}` took over {timeout_s:.0f} s") from None

    def compose_ok(self, *args: str, timeout_s: float = 600) -> str:
        done = self.compose(*args, timeout_s=timeout_s)
        if done.returncode != 0:
            raise StackError(f"docker-compose {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def containers(self) -> list[ContainerState]:
        """The project's containers (every profile), their state and health."""
        if not env_file(self.settings).exists():  # never started from this home
            return []
        ids = self.compose_ok(*_all_profiles(), "ps", "-q", "-a", timeout_s=60).split()
        if not ids:
            return []
        docker = shutil.which("docker") or "docker"
        done = subprocess.run([docker, "inspect", *ids], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip
        return [ContainerState.of(c) for c in json.loads(done.stdout or "[]")]


def _all_profiles() -> list[str]:
    return [arg for p in PROFILES for arg in ("--profile", p)]


@dataclass(frozen=True)
class ContainerState:
    """One container of the stack, as `docker inspect` says."""

    id: str
    service: str
    status: str  # running, restarting, exited, …
    health: str | None  # healthy, starting, unhealthy; None: no health check

    @classmethod
    def of(cls, inspected: dict[str, object]) -> ContainerState:
        config, state = inspected["Config"], inspected["State"]
        assert isinstance(config, dict) and isinstance(state, dict)
        health = state.get("Health")
        return cls(
            id=str(inspected["Id"])[:12],
            service=str(config["Labels"].get("com.docker.compose.service", "?")),
            status=str(state["Status"]),
            health=str(health["Status"]) if isinstance(health, dict) else None,
        )

    @property
    def healthy(self) -> bool:
        return self.status == "running" and self.health in ("healthy", None)


# -- up and down ----------------------------------------------------------------------------
def services_to_start(topology: str, serve: bool, gpu: bool) -> tuple[list[str], list[str]]:
    """(the `up` options: profiles and scales, the services) for a topology."""
    services = list(INFRASTRUCTURE)
    options: list[str] = []
    if serve:
        services += TOPOLOGY_SERVICES[topology]
        if topology == "monolith":
            options += ["--profile", "monolith"]
        elif gpu:
            options += ["--profile", "gpu"]
            services[services.index("model")] = "model-gpu"
    return options, services


def check_ready_to_start(stack: ContainerStack, services: list[str]) -> None:
    """No engine, an image of `services` missing, a port taken: say which and how to fix it."""
    if problem := engine_problem():
        raise StackError(problem)
    needed = {var: stack.images[var] for var in {SERVICE_IMAGES[s] for s in services}}
    if missing := missing_images(needed):
        raise StackError(f"images missing from the local engine: {', '.join(missing)}; "
                         f"{HOW_TO_GET_IMAGES}")  # fmt: skip
    if any(c.status == "running" for c in stack.containers()):
        return  # ours: `up` again only adds what is missing
    busy = [f"{host}:{port} ({prefix}_PORT)" for prefix, (host, port) in stack.published().items()
            if port_in_use(shared.client_host(host), port)]  # fmt: skip
    if busy:
        raise StackError(f"port in use: {', '.join(busy)}; stop what listens there or choose "
                         "another port with the setting named")  # fmt: skip


def up(
    stack: ContainerStack,
    topology: str = "microservices",
    serve: bool = True,
    gpu: bool = False,
    timeout_s: float = 600,
    say: Say = print,
) -> list[ContainerState]:
    """Bring the stack up and wait for every health check; record where its servers are."""
    options, services = services_to_start(topology, serve, gpu)
    check_ready_to_start(stack, services)
    path = stack.write_env_file()
    say(f"env file: {path} (mode 0600: the secrets, the images, the published ports)")
    scaled = [arg for s in _replaced(services) for arg in ("--scale", f"{s}=0")]
    say(f"starting {', '.join(services)} (project {stack.project})")
    done = stack.compose(*options, "up", "-d", "--no-build", *scaled, *services,
                         timeout_s=timeout_s)  # fmt: skip
    if done.returncode != 0:  # e.g. a dependency that never got healthy: say why, with logs
        sick = {c.service for c in stack.containers() if not c.healthy}
        logs = stack.compose("logs", "--tail", "30", *sick).stdout if sick else ""
        raise StackError(f"docker-compose up failed:\n{done.stderr[-2000:]}\n{logs[-4000:]}")
    states = wait_healthy(stack, services, timeout_s, say)
    recorded = record_shared(stack.settings.home_abs, stack.host_settings())
    say(f"this machine's Hearth now uses the containers' servers (recorded in {recorded})")
    return states


def _replaced(services: list[str]) -> list[str]:
    """Services scaled to 0 because another one stands in for them."""
    if "monolith" in services:
        return ["gateway", "features", "model"]
    return ["model"] if "model-gpu" in services else []


def wait_healthy(
    stack: ContainerStack, services: list[str], timeout_s: float, say: Say = print
) -> list[ContainerState]:
    """Poll until every container of `services` is running and healthy; StackError with the
    logs of those that are not when the time is up or one has failed."""
    deadline, reported = time.monotonic() + timeout_s, set()
    while True:
        states = [c for c in stack.containers() if c.service in services]
        for c in states:
            if c.healthy and c.service not in reported:
                say(f"  {c.service} healthy")
                reported.add(c.service)
        if {c.service for c in states if c.healthy} >= set(services):
            return states
        failed = [c for c in states if c.status == "exited" or c.health == "unhealthy"]
        if failed or time.monotonic() > deadline:
            sick = failed or [c for c in states if not c.healthy]
            logs = stack.compose("logs", "--tail", "30", *{c.service for c in sick}).stdout
            what = ", ".join(f"{c.service} ({c.status}, {c.health})" for c in sick) or "none"
            raise StackError(f"not healthy: {what}\n{logs[-4000:]}")
        time.sleep(2)


def ps(settings: Settings, root: Path) -> list[ContainerState]:
    """The home's containers (none when `hearth up --containers` never ran here)."""
    if not env_file(settings).exists() or compose_command() is None:
        return []
    try:
        return ContainerStack(settings, root, {}).containers()
    except StackError:
        return []  # the engine is down: no container of ours runs


def down(settings: Settings, root: Path, say: Say = print) -> list[str]:
    """Take the home's containers down (every profile); the named data volumes stay."""
    if not env_file(settings).exists() or compose_command() is None:
        return []
    stack = ContainerStack(settings, root, {})
    names = [c.service for c in stack.containers()]
    if names:
        say(f"taking down {len(names)} container(s) of {stack.project}")
        stack.compose_ok(*_all_profiles(), "down", "--remove-orphans", timeout_s=300)
    forget_servers(stack)
    return names


def forget_servers(stack: ContainerStack) -> None:
    """Drop from the home's secrets file where `up` recorded the containers' servers (a
    local `hearth up` works again); values recorded by anything else stay."""
    path = secrets_path(stack.settings.home_abs)
    known, ours = read_secrets(path), stack.host_settings()
    kept = {k: v for k, v in known.items() if ours.get(k) != v}
    if kept != known:
        write_secrets(path, kept)
