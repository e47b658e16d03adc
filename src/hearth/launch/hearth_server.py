"""`hearth serve --topology …` as a child process on loopback, through the launcher.

For the closed-loop demo, the integration tests and the benchmark: the server gets its own
process group, so `stop` ends BentoML's arbiter and every worker it started, and nothing
else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from hearth.launch.launcher import Launched, free_port, group_members, launch
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


@dataclass(eq=False)
class ServerProcess:
    """A `hearth serve` child; `readyz` is every /readyz status seen while waiting."""

    topology: str
    port: int
    process: Launched
    home: Path | None = None

    @classmethod
    def start(
        cls, topology: str, env: dict[str, str], cwd: Path, log_path: Path, port: int | None = None
    ) -> ServerProcess:
        """Start `topology` on `port` (a free one by default); not waited on."""
        port = port or free_port()
        url = f"http://{HOST}:{port}{READY_PATH}"
        process = launch(topology, serve_command(topology, port), env, cwd, log_path, url)
        home = Path(env["HEARTH_HOME"]) if "HEARTH_HOME" in env else None
        return cls(topology, port, process, home)

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
        """Poll /readyz until 200; the launcher's error, with the server's log, if it dies or
        times out."""
        self.process.wait_ready(timeout_s)

    def log_tail(self, chars: int = 4000) -> str:
        return self.process.log_tail(chars)

    def worker_pids(self, service: str) -> list[int]:
        """Pids of the BentoML worker processes serving `service` (e.g. "Model")."""
        return bentoml_workers(self.pid).get(service, [])

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left."""
        self.process.stop(timeout_s)


@contextmanager
def serving(
    topology: str,
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    port: int | None = None,
    timeout_s: float = READY_TIMEOUT_S,
) -> Iterator[ServerProcess]:
    """`topology` served, ready; stopped on the way out, however left."""
    server = ServerProcess.start(topology, env, cwd, log_path, port)
    try:
        server.wait_ready(timeout_s)
        yield server
    finally:
        server.stop()
