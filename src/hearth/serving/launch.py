"""Run `hearth serve` as a child process on loopback: for integration tests and benchmarks.

The server gets its own process group, so `stop` ends BentoML's arbiter and every worker it
started, and nothing else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A `hearth serve` child; `readyz` records every /readyz status seen while waiting."""

    topology: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    home: Path | None = None
    readyz: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(
        cls, topology: str, env: dict[str, str], cwd: Path, log_path: Path, port: int | None = None
    ) -> ServerProcess:
        port = port or free_port()
        cmd = [sys.executable, "-m", "hearth", "serve", "--topology", topology, "--port", str(port)]
        log = log_path.open("wb")
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        home = Path(env["HEARTH_HOME"]) if "HEARTH_HOME" in env else None
        return cls(topology, port, proc, log_path, home)

    def wait_ready(self, timeout_s: float = 240.0) -> None:
        """Poll /readyz until 200; raise with the server's log when it dies or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.topology} server exited:\n{self.log_tail()}")
            try:
                status = httpx.get(f"{self.url}/readyz", timeout=5).status_code
            except httpx.HTTPError:
                status = 0  # not listening yet
            self.readyz.append(status)
            if status == 200:
                return
            time.sleep(0.2)
        raise TimeoutError(f"{self.topology} not ready in {timeout_s:.0f}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def worker_pids(self, service: str) -> list[int]:
        """Pids of the BentoML worker processes serving `service` (e.g. "Model")."""
        import psutil

        pids = []
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                cmdline = child.cmdline()
            except psutil.Error:
                continue
            if (
                "--service-name" in cmdline
                and cmdline[cmdline.index("--service-name") + 1] == service
            ):
                pids.append(child.pid)
        return pids

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left."""
        if self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout_s)
        except ProcessLookupError:
            pass
