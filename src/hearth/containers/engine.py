"""The container engine: is one answering, and starting Debian's `dockerd` when not.

A machine without systemd (a VM, a CI runner) has docker.io installed but no daemon: `start`
runs `dockerd` in its own session, logging to a file, and waits until `docker info`
answers. The storage driver is overlay2 where the kernel allows it, else vfs (slow, large,
but it works everywhere).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from hearth.config import Settings

ENGINE = "docker"
STORAGE_DRIVERS = ("overlay2", "vfs")
START_TIMEOUT_S = 60.0
INSTALL_HINT = "`make container-deps` (Debian's docker.io), then `hearth images engine`"


class EngineError(RuntimeError):
    """No engine answers, and none could be started; the message says why."""


@dataclass(frozen=True)
class EngineStart:
    started: bool  # False: one was answering already
    pid: int | None
    storage_driver: str
    log: Path | None


def problem(engine: str = ENGINE) -> str | None:
    """None when `engine info` answers; otherwise why not, for the user."""
    if shutil.which(engine) is None:
        return f"{engine} is not installed"
    try:
        done = subprocess.run([engine, "info"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{engine} info` failed: {exc}"
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"`{engine} info` failed: {last[0]}"
    return None


def storage_driver(engine: str = ENGINE) -> str:
    done = subprocess.run(
        [engine, "info", "--format", "{{.Driver}}"], capture_output=True, text=True, timeout=20
    )
    return done.stdout.strip()


def default_log() -> Path:
    """/var/log/hearth-dockerd.log where writable (root), else under HEARTH_HOME."""
    if os.access("/var/log", os.W_OK):
        return Path("/var/log/hearth-dockerd.log")
    return Settings().home_abs / "logs" / "dockerd.log"


def dockerd_command(dockerd: str, driver: str) -> list[str]:
    """dockerd's command line. iptables stays on (the kernel has netfilter; Debian's
    iptables is the nft one): containers reach each other and the outside through it."""
    return [dockerd, "--storage-driver", driver]


def start(log: Path | None = None, timeout_s: float = START_TIMEOUT_S) -> EngineStart:
    """Start `dockerd` in the background unless an engine answers; wait until it does."""
    if problem() is None:
        return EngineStart(False, None, storage_driver(), None)
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineError(f"dockerd is not installed: {INSTALL_HINT}")
    log = log or default_log()
    log.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for driver in STORAGE_DRIVERS:
        pid = _launch(dockerd_command(dockerd, driver), log)
        if _answers(pid, timeout_s):
            return EngineStart(True, pid, driver, log)
        _stop(pid)
        failures.append(f"{driver}: {_tail(log)}")
    raise EngineError("dockerd did not start (" + "; ".join(failures) + f"); see {log}")


def _launch(argv: list[str], log: Path) -> int:
    with log.open("ab") as out:
        # Its own session: the daemon outlives this command and ignores its Ctrl-C.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )
    return proc.pid


def _answers(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if problem() is None:
            return True
        if not _alive(pid):
            return False
        time.sleep(0.5)
    return False


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return waited == 0


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _tail(log: Path, lines: int = 1) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(text[-lines:]) or "no output"
