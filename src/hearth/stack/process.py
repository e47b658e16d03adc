"""Start, check and stop one service process; remember it in a pid file under HEARTH_HOME.

Each service runs in its own session (process group), so stopping it ends every process it
started (BentoML's workers, Prefect's flow-run subprocesses) and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import psutil

STATE_FILE = "stack.json"


class StackError(RuntimeError):
    """The stack cannot start or stop as asked; the message says which service and why."""


@dataclass(frozen=True)
class Running:
    """A started service as recorded in the pid file."""

    name: str
    pid: int
    url: str | None
    health_url: str | None
    log: str
    started_at: float


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on (host, port)."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def start(name: str, cmd: list[str], env: dict[str, str], cwd: Path, log_dir: Path) -> int:
    """Start `cmd` in its own session, stdout+stderr appended to log_dir/<name>.log."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{name}.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    return proc.pid


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(name: str, pid: int, check: Callable[[], bool], log: Path, timeout_s: float) -> None:
    """Poll `check` until true; fail with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            raise StackError(f"{name} exited during start-up; its log ({log}):\n{tail(log)}")
        if check():
            return
        time.sleep(0.5)
    raise StackError(f"{name} not healthy within {timeout_s:.0f}s; its log ({log}):\n{tail(log)}")


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


def group_members(pid: int) -> list[psutil.Process]:
    """The process and every descendant still running."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def stop(pid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group (and stray descendants), SIGKILL what outlives `timeout_s`."""
    members = group_members(pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # Descendants that left the group (setsid) are signalled one by one.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        for proc in members:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        _, members = psutil.wait_procs(members, timeout=timeout_s if sig == signal.SIGTERM else 5)
        if not members:
            return


# -- the pid file ---------------------------------------------------------------------------
def read_state(home: Path) -> list[Running]:
    path = home / STATE_FILE
    if not path.exists():
        return []
    return [Running(**entry) for entry in json.loads(path.read_text())]


def write_state(home: Path, services: list[Running]) -> None:
    """Rewrite the pid file atomically (a crash never leaves half a file)."""
    path = home / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(s) for s in services], indent=2))
    tmp.replace(path)
