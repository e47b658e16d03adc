"""`hearth up`, `hearth down`, `hearth ps` over the services of `hearth.stack.services`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hearth.launch import launcher
from hearth.launch.hearth_server import bentoml_workers
from hearth.secrets_file import record_shared
from hearth.stack import process, shared
from hearth.stack.process import Running, StackError
from hearth.stack.services import WORK_POOLS, Service, Stack, prefect_cli, record
from hearth.storage.postgres import redacted

Say = Callable[[str], None]


def _check_ports(stack: Stack) -> None:
    busy = [
        f"{host}:{port} ({setting})"
        for setting, (host, port) in stack.ports().items()
        if launcher.port_in_use(host, port)
    ]
    if busy:
        raise StackError(
            f"port in use: {', '.join(busy)}; stop what listens there or choose another port "
            "with the setting named"
        )


def _start(stack: Stack, service: Service, running: list[Running], say: Say) -> None:
    """Start one service, record its pid at once (so `down` can stop it), wait for health."""
    home = stack.settings.home_abs
    log = home / "logs" / f"{service.name}.log"
    say(f"starting {service.name} (log: {log})")
    started = launcher.launch(
        service.name,
        service.cmd,
        {**stack.env(), **service.env},
        stack.repo_dir,
        log,
        service.check,
        append=True,
    )
    record(home, running, service, started.pid, log)
    try:
        started.wait_ready(service.timeout_s, poll_s=0.5)
    except launcher.LaunchError as exc:
        raise StackError(str(exc)) from None
    say(f"  {service.name} healthy" + (f" at {service.url}" if service.url else ""))


def up(stack: Stack, serve: bool = True, say: Say = print) -> list[Running]:
    """Start the stack; on a failure, what did start keeps running for `hearth down`."""
    home = stack.settings.home_abs
    if any(launcher.alive(r.pid) for r in process.read_state(home)):
        raise StackError(f"the stack in {home} is already up: `hearth ps`, or `hearth down`")
    _check_ports(stack)
    (home / "logs").mkdir(parents=True, exist_ok=True)
    running: list[Running] = []
    if stack.mode == "join":  # the servers are another machine's: serve and work only
        _start(stack, stack.worker(), running, say)
        if serve:
            _start(stack, stack.serving(), running, say)
        return running
    if stack.mode == "shared":
        _start_shared(stack, running, say)
    _start(stack, stack.mlflow(), running, say)
    _start(stack, stack.prefect_server(), running, say)
    say(f"creating work pools {', '.join(WORK_POOLS)} and deploying prefect.yaml")
    for pool in WORK_POOLS:
        prefect_cli(stack, ["work-pool", "create", pool, "--type", "process", "--overwrite"],
                    f"creating work pool {pool}")  # fmt: skip
    prefect_cli(stack, ["deploy", "--all"], "`prefect deploy --all`")
    _start(stack, stack.worker(), running, say)
    if serve:
        _start(stack, stack.serving(), running, say)
    return running


def _start_shared(stack: Stack, running: list[Running], say: Say) -> None:
    """PostgreSQL and Redis (unless Settings name others), the databases, and where they
    are recorded: in this home's secrets file (every Hearth process here uses them) and in
    the join file for other machines."""
    settings, servers = stack.settings, stack.servers
    if servers.own_postgres:
        shared.prepare_postgres(settings)
        _start(stack, stack.postgres(), running, say)
    else:
        say(f"PostgreSQL: {redacted(servers.database_url)} (HEARTH_DATABASE_URL)")
    if servers.own_redis:
        _start(stack, stack.redis(), running, say)
    else:
        say(f"Redis: {redacted(servers.redis_url)} (HEARTH_REDIS_URL)")
    if made := shared.create_databases(servers):
        say(f"  created the databases {', '.join(made)}")
    home = settings.home_abs
    record_shared(home, stack.shared_settings())
    values = shared.join_values(settings, servers, stack.mlflow_url, stack.prefect_api)
    path = shared.write_join_file(home, values)
    say(f"join file for other machines: {path} (mode 0600; it holds the secrets)")
    if near := shared.loopback_servers(values):
        say(f"  {', '.join(near)} bound to loopback: only this machine reaches them (set "
            "HEARTH_POSTGRES_HOST, HEARTH_REDIS_HOST, HEARTH_MLFLOW_HOST, HEARTH_PREFECT_HOST "
            "to an interface other machines reach)")  # fmt: skip


def down(home: Path, say: Say = print) -> list[str]:
    """Stop every process `hearth up` recorded, last started first; forget them."""
    stopped = []
    for r in reversed(process.read_state(home)):
        if launcher.alive(r.pid):
            say(f"stopping {r.name} (pid {r.pid})")
            launcher.stop_group(r.pid)
        stopped.append(r.name)
    (home / process.STATE_FILE).unlink(missing_ok=True)
    return stopped


@dataclass(frozen=True)
class Status:
    name: str
    pid: int
    running: bool
    healthy: bool
    url: str | None
    detail: str = ""


def _serving_detail(pid: int) -> str:
    """The BentoML services under the serving process (microservices: one per service)."""
    workers = bentoml_workers(pid)
    return " ".join(sorted(f"{name}:{p}" for name, pids in workers.items() for p in pids))


def ps(home: Path) -> list[Status]:
    """What the pid file lists, whether it runs and whether its health check passes."""
    out = []
    for r in process.read_state(home):
        running = launcher.alive(r.pid)
        healthy = running and (launcher.http_ok(r.health_url) if r.health_url else True)
        detail = _serving_detail(r.pid) if r.name == "serving" and running else ""
        out.append(Status(r.name, r.pid, running, healthy, r.url, detail))
    return out
