"""`hearth serve --topology …` as a child process on loopback, through the launcher.

For the closed-loop demo, the integration tests and the benchmark: the server gets its own
process group, so `stop` ends BentoML's arbiter and every worker it started, and nothing
else. With N workers it is ready once /readyz answers 200 and N workers say they are
ready (`hearth_worker_ready` in /metrics): a probe of /readyz reaches one worker only.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from hearth.launch.launcher import (
    Launched,
    NotReady,
    free_port,
    group_members,
    http_ok,
    launch,
)
from hearth.launch.topologies import READY_PATH, serve_command

HOST = "127.0.0.1"
READY_TIMEOUT_S = 240.0


def bentoml_workers(pid: int) -> dict[str, list[int]]:
    """BentoML service name → pids of its worker processes under `pid` (e.g. "Model")."""
    workers: dict[str, list[int]] = {}
    for child in group_members(pid)[1:]:
        try:
            cmdline = child.cmdline()
        except psutil.Error:
            continue
        if "--service-name" in cmdline[:-1]:
            name = cmdline[cmdline.index("--service-name") + 1]
            workers.setdefault(name, []).append(child.pid)
    return workers


# One worker's readiness, as each worker publishes it (hearth.serving.workers).
_WORKER_READY = re.compile(r'^hearth_worker_ready\{[^}]*pid="(\d+)"[^}]*\} (\S+)$', re.M)


def ready_workers(url: str, timeout_s: float = 5.0) -> set[int]:
    """Pids of the workers of the server at `url` that say they are ready (its /metrics);
    empty when it does not answer."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=timeout_s).text
    except httpx.HTTPError:
        return set()
    return {int(pid) for pid, value in _WORKER_READY.findall(text) if float(value) == 1}


def serving_ready(url: str, workers: int) -> bool:
    """Whether the server at `url` is ready: /readyz answers 200 and, with several workers,
    each says it is ready (a /readyz probe reaches one worker only)."""
    if not http_ok(f"{url}{READY_PATH}"):
        return False
    return workers <= 1 or len(ready_workers(url)) >= workers


@dataclass(eq=False)
class ServerProcess:
    """A `hearth serve` child; `readyz` is every /readyz status seen while waiting."""

    topology: str
    port: int
    process: Launched
    home: Path | None = None
    workers: int = 1

    @classmethod
    def start(
        cls,
        topology: str,
        env: dict[str, str],
        cwd: Path,
        log_path: Path,
        port: int | None = None,
        workers: int = 1,
    ) -> ServerProcess:
        """Start `topology` on `port` (a free one by default) with `workers` serving
        processes; not waited on."""
        port = port or free_port()
        url = f"http://{HOST}:{port}{READY_PATH}"
        cmd = serve_command(topology, port, workers=workers)
        process = launch(topology, cmd, env, cwd, log_path, url)
        home = Path(env["HEARTH_HOME"]) if "HEARTH_HOME" in env else None
        return cls(topology, port, process, home, workers)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    @property
    def readyz(self) -> list[int]:
        return self.process.statuses

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll /readyz until 200, then (several workers) until every worker is ready; the
        launcher's error, with the server's log, if it dies or times out."""
        deadline = time.monotonic() + timeout_s
        self.process.wait_ready(timeout_s)
        if self.workers > 1:
            wait_workers(self.process, self.url, self.workers, deadline - time.monotonic())

    def log_tail(self, chars: int = 4000) -> str:
        return self.process.log_tail(chars)

    def worker_pids(self, service: str) -> list[int]:
        """Pids of the BentoML worker processes serving `service` (e.g. "Model")."""
        return bentoml_workers(self.pid).get(service, [])

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left."""
        self.process.stop(timeout_s)


def wait_workers(process: Launched, url: str, workers: int, timeout_s: float) -> None:
    """Wait until `workers` workers of the server at `url` say they are ready."""

    def enough() -> bool:
        return len(ready_workers(url)) >= workers

    check = Launched(process.name, process.pid, process.log_path, enough, process.popen)
    try:
        check.wait_ready(max(timeout_s, 0.0), poll_s=0.2)
    except NotReady as exc:
        seen = sorted(ready_workers(url))
        raise NotReady(f"{workers} workers wanted, ready: {seen}; {exc}") from None


@contextmanager
def serving(
    topology: str,
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    port: int | None = None,
    timeout_s: float = READY_TIMEOUT_S,
    workers: int = 1,
) -> Iterator[ServerProcess]:
    """`topology` served by `workers` processes, ready; stopped on the way out, however
    left."""
    server = ServerProcess.start(topology, env, cwd, log_path, port, workers)
    try:
        server.wait_ready(timeout_s)
        yield server
    finally:
        server.stop()
