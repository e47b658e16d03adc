"""The process launcher on real child processes: ready checks, errors with the log, stopping
the whole group (SIGTERM, then SIGKILL), and what `hearth up`/`ps` build on it."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from hearth.config import Settings
from hearth.launch import launcher
from hearth.launch.hearth_server import bentoml_workers
from hearth.launch.launcher import Launched, NotReady, ProcessExited, free_port, launch, launched
from hearth.stack.process import Running, StackError, read_state
from hearth.stack.services import Service, Stack
from hearth.stack.supervisor import _serving_detail, _start

PY = sys.executable
START_S = 60.0  # generous: the machine may be busy; a ready process passes at once

# An HTTP server that answers 503 to its first two requests, then 200, with one worker child.
SERVER = """
import http.server, subprocess, sys
worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print("worker", worker.pid, flush=True)
seen = []
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        seen.append(self.path)
        self.send_response(503 if len(seen) <= 2 else 200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""
# Ignores SIGTERM; its child left the group (its own session).
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                         start_new_session=True)
print("stray", stray.pid, "ready", flush=True)
time.sleep(120)
"""


def _script(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return path


def _logged(proc: Launched, word: str) -> int:
    """The number printed after `word` in the process's log (a pid)."""
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        parts = proc.log_tail().split()
        if word in parts:
            return int(parts[parts.index(word) + 1])
        time.sleep(0.05)
    raise AssertionError(f"{word!r} never logged: {proc.log_tail()}")


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while launcher.alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_ready_url_statuses_are_recorded_and_the_whole_group_stops(tmp_path: Path) -> None:
    port = free_port()
    cmd = [PY, str(_script(tmp_path, "server", SERVER)), str(port)]
    url = f"http://127.0.0.1:{port}/readyz"
    with launched("server", cmd, {}, tmp_path, tmp_path / "server.log", url, START_S) as proc:
        assert proc.statuses[-1] == 200
        assert proc.statuses.count(503) == 2  # waited through "not ready" answers
        assert set(proc.statuses) <= {0, 503, 200}
        worker = _logged(proc, "worker")
        assert worker in [p.pid for p in proc.members()]
        assert launcher.http_ok(url)
    assert _gone(proc.pid) and _gone(worker)
    assert not proc.alive()
    proc.stop()  # stopping a stopped group is harmless


def test_a_process_that_dies_fails_with_its_exit_code_and_log(tmp_path: Path) -> None:
    cmd = [PY, "-c", "import sys; print('no model to serve'); sys.exit(3)"]
    proc = launch("dying", cmd, {}, tmp_path, tmp_path / "logs" / "dying.log", lambda: False)
    with pytest.raises(ProcessExited) as err:
        proc.wait_ready(START_S)
    message = str(err.value)
    assert message.startswith("dying exited during start-up (exit code 3)")
    assert "no model to serve" in message and str(tmp_path / "logs" / "dying.log") in message
    assert isinstance(err.value, RuntimeError)  # what the bench and its callers catch


def test_a_process_never_ready_times_out_and_stops(tmp_path: Path) -> None:
    cmd = [PY, "-c", "import time; print('warming up', flush=True); time.sleep(120)"]
    checks: list[float] = []

    def never() -> bool:
        checks.append(time.monotonic())
        return False

    with (
        pytest.raises(NotReady) as err,
        launched("slow", cmd, {}, tmp_path, tmp_path / "slow.log", never, timeout_s=1.0),
    ):
        raise AssertionError("never ready, never yielded")
    assert isinstance(err.value, TimeoutError) and isinstance(err.value, RuntimeError)
    assert "slow not ready within 1s" in str(err.value)
    assert len(checks) >= 2  # polled, not checked once
    # launched() stopped it on the way out: no process of that command is left.
    children = launcher.group_members(os.getpid())[1:]
    assert not any("warming up" in " ".join(p.cmdline()) for p in children)


def test_sigterm_ignored_means_sigkill_after_the_grace_and_strays_are_stopped(
    tmp_path: Path,
) -> None:
    log = tmp_path / "stubborn.log"
    ready = lambda: "ready" in log.read_text()  # noqa: E731 - the handler is installed by then
    proc = launch("stubborn", [PY, str(_script(tmp_path, "stubborn", STUBBORN))], {}, tmp_path,
                  log, ready)  # fmt: skip
    try:
        proc.wait_ready(START_S)
        stray = _logged(proc, "stray")
    finally:
        began = time.monotonic()
        proc.stop(timeout_s=1.0)
    assert time.monotonic() - began >= 1.0  # SIGTERM first, and a grace period
    assert _gone(proc.pid) and _gone(stray)


def test_a_stop_interrupted_by_a_signal_kills_at_once(tmp_path: Path) -> None:
    """A SIGTERM (as `hearth bench` turns it into SystemExit) during the grace period:
    nothing is left behind waiting for a SIGKILL that would never come."""
    log = tmp_path / "stubborn.log"
    ready = lambda: "ready" in log.read_text()  # noqa: E731 - the handler is installed by then
    proc = launch("stubborn", [PY, str(_script(tmp_path, "stubborn", STUBBORN))], {}, tmp_path,
                  log, ready)  # fmt: skip
    proc.wait_ready(START_S)

    def leave(signum: int, _: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGALRM, leave)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    began = time.monotonic()
    try:
        with pytest.raises(SystemExit):
            proc.stop(timeout_s=60)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - began < 30  # not the 60 s grace period
    assert _gone(proc.pid)


class _Server:
    def __init__(self, fails: bool) -> None:
        self.fails, self.stopped = fails, False

    def stop(self) -> None:
        self.stopped = True
        if self.fails:
            raise SystemExit(143)


def test_stop_all_stops_the_rest_when_one_stop_is_interrupted() -> None:
    servers = [_Server(fails=False), _Server(fails=True), _Server(fails=False)]
    with pytest.raises(SystemExit):
        launcher.stop_all(servers)
    assert all(s.stopped for s in servers)


def test_an_exception_in_the_block_still_stops_the_group(tmp_path: Path) -> None:
    port = free_port()
    cmd = [PY, str(_script(tmp_path, "server", SERVER)), str(port)]
    url = f"http://127.0.0.1:{port}/"
    with (
        pytest.raises(KeyError),
        launched("server", cmd, {}, tmp_path, tmp_path / "s.log", url, START_S) as proc,
    ):
        worker = _logged(proc, "worker")
        raise KeyError("a failing test")
    assert _gone(proc.pid) and _gone(worker)


def test_attach_stops_a_group_started_elsewhere_and_logs_append(tmp_path: Path) -> None:
    log = tmp_path / "svc.log"
    log.write_text("an earlier run\n")
    cmd = [PY, "-c", "import time; print('second run', flush=True); time.sleep(120)"]
    started = launch("svc", cmd, {}, tmp_path, log, append=True)
    other = Launched.attach("svc", started.pid, log)  # as `hearth down` knows it: a pid
    assert other.alive()
    with pytest.raises(ValueError, match="without a readiness check"):
        other.wait_ready(1.0)
    other.stop()
    assert _gone(started.pid) and not started.alive()
    assert log.read_text().startswith("an earlier run\n")


def test_stack_start_records_the_pid_and_fails_as_a_stack_error(
    settings: Settings, tmp_path: Path
) -> None:
    stack = Stack(settings, repo_dir=tmp_path)
    cmd = [PY, "-c", "import sys; print('port taken'); sys.exit(1)"]
    service = Service("broken", cmd, None, None, timeout_s=30, healthy=lambda: False)
    running: list[Running] = []
    with pytest.raises(StackError, match=r"broken exited during start-up(.|\n)*port taken"):
        _start(stack, service, running, say=lambda _: None)
    (recorded,) = read_state(settings.home_abs)  # so that `hearth down` could stop it
    assert recorded.name == "broken" and recorded.pid == running[0].pid
    assert recorded.log == str(settings.home_abs / "logs" / "broken.log")


def test_bentoml_workers_are_found_by_service_name(tmp_path: Path) -> None:
    parent = """
import subprocess, sys
for name in ("Model", "Gateway"):
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)",
                      "--service-name", name])
print("started", 2, flush=True)
import time; time.sleep(120)
"""
    cmd = [PY, str(_script(tmp_path, "arbiter", parent))]
    proc = launch("arbiter", cmd, {}, tmp_path, tmp_path / "arbiter.log")
    try:
        _logged(proc, "started")
        deadline = time.monotonic() + START_S
        while len(workers := bentoml_workers(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(workers) == ["Gateway", "Model"]
        assert all(len(pids) == 1 for pids in workers.values())
        detail = _serving_detail(proc.pid)
        assert detail == f"Gateway:{workers['Gateway'][0]} Model:{workers['Model'][0]}"
    finally:
        proc.stop()
    assert bentoml_workers(proc.pid) == {}


def test_free_ports_are_outside_the_ephemeral_range_new_and_bindable() -> None:
    # An outgoing connection takes its own end from the ephemeral range: a server port picked
    # there can be gone by the time the server binds it (a CI run's Prefect server once was).
    ephemeral = launcher.ephemeral_ports()
    assert len(ephemeral) > 1000  # read from the kernel, or Linux's default
    ports = [free_port() for _ in range(300)]
    assert not [port for port in ports if port in ephemeral]
    assert len(set(ports)) == len(ports)  # never handed out twice by one process
    for port in ports[:3]:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))


def test_a_port_somebody_listens_on_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        drawn = iter([taken, taken, 12_345, 12_346])
        monkeypatch.setattr(launcher, "ephemeral_ports", lambda: range(0))  # draw `taken` too
        monkeypatch.setattr(launcher._pick, "randrange", lambda low, high: next(drawn))
        monkeypatch.setattr(launcher, "_handed_out", set())
        port = free_port()
    assert port in (12_345, 12_346)  # the held port was skipped (12 345 may be held as well)
