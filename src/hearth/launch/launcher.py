"""The one way Hearth starts a server process, waits until it is ready and stops it.

`hearth up`, `hearth serve` children of the demo and of the tests, and every contender of
`hearth bench` go through here. Each process runs in its own session (process group) with
its output in a log file, so stopping it ends every process it started (BentoML's arbiter
and workers, Prefect's flow-run subprocesses) and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import psutil

# How a process proves it is ready: a URL that answers 200, or a check that returns True.
Ready = str | Callable[[], bool]


class LaunchError(RuntimeError):
    """A launched process died or did not become ready; the message has its log's tail."""


class ProcessExited(LaunchError):
    """The process ended while it was waited on."""


class NotReady(LaunchError, TimeoutError):
    """The process still runs but was not ready in time."""


# Ports free_port draws from: above the well-known and registered services' usual ports,
# and never the kernel's ephemeral range (see free_port).
_LOWEST_PORT = 10_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()
_pick = random.Random()


def ephemeral_ports() -> range:
    """The ports the kernel gives outgoing connections (Linux's default when unreadable)."""
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        low, high = 32_768, 60_999
    return range(low, high + 1)


def free_port() -> int:
    """A loopback TCP port nobody holds right now, for a server to be started on.

    Never one from the kernel's ephemeral range (what `bind(("", 0))` would give): between
    this pick and the server's bind, any process's outgoing connection can take such a port as
    its own end (a `hearth up` once failed so, its Prefect server finding its port taken). Nor
    one this process handed out before, which its server may not have bound yet.
    """
    ephemeral = ephemeral_ports()
    for _ in range(200):
        port = _pick.randrange(_LOWEST_PORT, 65_536)
        if port in ephemeral or port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # everything tried was held: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on (host, port)."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def http_status(url: str, timeout_s: float = 5.0) -> int:
    """The status of GET `url`; 0 when nothing answers (not listening yet, or timed out)."""
    try:
        return httpx.get(url, timeout=timeout_s).status_code
    except httpx.HTTPError:
        return 0


def http_ok(url: str, timeout_s: float = 2.0) -> bool:
    return http_status(url, timeout_s) == 200


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie does not count)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_members(pid: int) -> list[psutil.Process]:
    """The process and every descendant still running."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_group(pid: int, members: list[psutil.Process], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    # Descendants that left the group (setsid, as BentoML's workers do) one by one.
    for proc in members:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def stop_group(pid: int, timeout_s: float = 20.0) -> None:
    """SIGTERM the process group (and stray descendants), SIGKILL what outlives `timeout_s`."""
    members = group_members(pid)
    _signal_group(pid, members, signal.SIGTERM)
    try:
        _, members = psutil.wait_procs(members, timeout=timeout_s)
    except BaseException:
        # Interrupted while waiting (a SIGTERM turned into SystemExit, Ctrl-C): no grace
        # period is left, and nothing may be left behind.
        _signal_group(pid, members, signal.SIGKILL)
        raise
    if members:
        _signal_group(pid, members, signal.SIGKILL)
        psutil.wait_procs(members, timeout=5)


class Stoppable(Protocol):
    def stop(self) -> None: ...


def stop_all(processes: Iterable[Stoppable]) -> None:
    """Stop every one, even when stopping one is interrupted (a SIGTERM's SystemExit while
    cleaning up must not leave the rest running); then re-raise the first interruption."""
    first: BaseException | None = None
    for proc in processes:
        try:
            proc.stop()
        except BaseException as exc:
            first = first or exc
    if first is not None:
        raise first


def tail(path: Path, chars: int = 4000) -> str:
    """The end of a log file ("(no log)" when there is none)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


@dataclass(eq=False)
class Launched:
    """A process group started by `launch` (or known by its pid, from `attach`)."""

    name: str
    pid: int
    log_path: Path
    ready: Ready | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    # Every status a `ready` URL answered while waited on (0: nothing answered yet).
    statuses: list[int] = field(default_factory=list)

    @classmethod
    def attach(cls, name: str, pid: int, log_path: Path, ready: Ready | None = None) -> Launched:
        """A group started elsewhere (e.g. by an earlier `hearth up`), to check or stop."""
        return cls(name, pid, log_path, ready)

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False  # reaped here: the pid may already belong to someone else
        return alive(self.pid)

    def members(self) -> list[psutil.Process]:
        return group_members(self.pid)

    def is_ready(self) -> bool:
        """One readiness check (a URL's status is recorded in `statuses`)."""
        if self.ready is None:
            raise ValueError(f"{self.name} was launched without a readiness check")
        if callable(self.ready):
            return self.ready()
        status = http_status(self.ready)
        self.statuses.append(status)
        return status == 200

    def wait_ready(self, timeout_s: float, poll_s: float = 0.2) -> None:
        """Check readiness until it passes; ProcessExited or NotReady (with the log's tail)
        when the process dies or the time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                code = "" if self.popen is None else f" (exit code {self.popen.returncode})"
                raise ProcessExited(f"{self.name} exited during start-up{code}; {self._log()}")
            if self.is_ready():
                return
            time.sleep(poll_s)
        raise NotReady(f"{self.name} not ready within {timeout_s:.0f}s; {self._log()}")

    def _log(self) -> str:
        return f"its log ({self.log_path}):\n{self.log_tail()}"

    def log_tail(self, chars: int = 4000) -> str:
        return tail(self.log_path, chars)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the group, SIGKILL what is left after `timeout_s`; idempotent."""
        if self.popen is not None and self.popen.poll() is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)  # workers the leader left behind
            return
        stop_group(self.pid, timeout_s)
        if self.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)


def launch(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    ready: Ready | None = None,
    append: bool = False,
) -> Launched:
    """Start `cmd` in its own session, stdout and stderr into `log_path` (truncated unless
    `append`), stdin from /dev/null; it is not waited on (see `Launched.wait_ready`)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab" if append else "wb") as log:
        popen = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    return Launched(name, popen.pid, log_path, ready, popen)


@contextlib.contextmanager
def launched(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    ready: Ready,
    timeout_s: float,
    append: bool = False,
) -> Iterator[Launched]:
    """`launch`, wait until ready, yield; the group is stopped on the way out, however left."""
    proc = launch(name, cmd, env, cwd, log_path, ready, append)
    try:
        proc.wait_ready(timeout_s)
        yield proc
    finally:
        proc.stop()
