"""Several serving workers: their number, and the per-process gauges in the multiprocess
directory (read for the admin API, swept when a worker dies)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hearth.launch.topologies import serve_command
from hearth.observability.prometheus import live_gauges, sweep_dead_processes
from hearth.serving.workers import (
    WORKERS_ENV,
    configured_workers,
    pin_this_worker,
    process_view,
    queued_connections_hint,
    worker_core,
)

# A worker of another process: publishes its gauges and a count, then waits for stdin to close.
WORKER = """
from hearth.observability.prometheus import record_log_dropped, set_model_ready, set_worker_ready
set_worker_ready("monolith", True)
set_model_ready({("champion", "1"): True, ("challenger", "2"): False})
record_log_dropped(3)
print("published", flush=True)
import sys; sys.stdin.read()
"""


def test_the_number_of_workers_comes_from_hearth_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKERS_ENV, raising=False)
    assert configured_workers() == 1  # `bentoml serve` run directly
    monkeypatch.setenv(WORKERS_ENV, "3")
    assert configured_workers() == 3
    for bad in ("0", "two"):
        monkeypatch.setenv(WORKERS_ENV, bad)
        with pytest.raises(ValueError, match=WORKERS_ENV):
            configured_workers()
    assert serve_command("monolith", 8123, workers=2)[-4:] == ["--workers", "2", "--port", "8123"]
    assert "--workers" not in serve_command("monolith", 8123)  # `hearth serve`'s default


def test_a_live_workers_gauges_are_read_and_a_dead_ones_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    worker = subprocess.Popen([sys.executable, "-c", WORKER], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "published"
        gauges = live_gauges(("hearth_worker_ready", "hearth_model_ready"), tmp_path)
        assert set(gauges) == {worker.pid}
        mine = gauges[worker.pid]
        assert mine["hearth_worker_ready"] == [({"role": "monolith"}, 1.0)]
        assert sorted(mine["hearth_model_ready"], key=lambda s: s[0]["variant"]) == [
            ({"variant": "challenger", "version": "2"}, 0.0),
            ({"variant": "champion", "version": "1"}, 1.0),
        ]
        assert sweep_dead_processes(tmp_path) == []  # alive: nothing swept
        monkeypatch.setenv(WORKERS_ENV, "2")
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        view = process_view({"pid": os.getpid(), "versions": {}}, 1)
        assert view == {
            "pid": os.getpid(), "versions": {}, "worker": 1, "workers": 2,
            "processes": [{
                "pid": worker.pid, "role": "monolith", "ready": True,
                "versions": {"champion": {"version": "1", "loaded": True},
                             "challenger": {"version": "2", "loaded": False}},
            }],
        }  # fmt: skip
    finally:
        worker.kill()
        worker.wait(10)
    assert live_gauges(("hearth_worker_ready",), tmp_path) == {}  # a dead one never shows
    assert sweep_dead_processes(tmp_path) == [worker.pid]
    left = {p.name for p in tmp_path.iterdir()}
    assert not any(name.startswith("gauge_live") for name in left), left
    assert f"counter_{worker.pid}.db" in left  # what it counted stays counted
    assert sweep_dead_processes(tmp_path) == []


def test_outside_multiprocess_mode_there_is_nothing_to_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert live_gauges(("hearth_worker_ready",)) == {}
    assert sweep_dead_processes() == []


def test_more_than_one_worker_hears_of_tcp_migrate_req_only_where_it_is_off(
    tmp_path: Path,
) -> None:
    sysctl = tmp_path / "tcp_migrate_req"
    sysctl.write_text("0\n")
    hint = queued_connections_hint(2, sysctl)
    assert hint is not None and "net.ipv4.tcp_migrate_req=1" in hint
    assert queued_connections_hint(1, sysctl) is None  # one worker: nothing to migrate to
    sysctl.write_text("1\n")
    assert queued_connections_hint(2, sysctl) is None
    assert queued_connections_hint(2, tmp_path / "absent") is None  # older kernel, not Linux


# -- each worker on a core of its own ------------------------------------------------------
def test_workers_take_the_allowed_cores_in_turn_and_a_lone_worker_none() -> None:
    assert [worker_core(i, 3, {4, 2, 7}) for i in (1, 2, 3)] == [2, 4, 7]
    assert [worker_core(i, 4, {0, 1}) for i in (1, 2, 3, 4)] == [0, 1, 0, 1]  # more than cores
    assert worker_core(1, 1, {0, 1}) is None  # a lone worker stays with the scheduler
    assert worker_core(None, 2, {0, 1}) is None  # not a worker of `hearth serve`


PINNED = """
import os, sys, threading
from hearth.serving.workers import pin_threads
before = threading.Event(); stop = threading.Event()
early = threading.Thread(target=lambda: (before.set(), stop.wait()))
early.start(); before.wait()
core = int(sys.argv[1])
print(pin_threads(core))
late = threading.Thread(target=stop.wait); late.start()  # started after: inherits
print(sorted({tuple(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}))
stop.set()
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to choose from")
def test_pin_threads_moves_every_thread_and_the_ones_started_later_follow() -> None:
    core = max(os.sched_getaffinity(0))
    done = subprocess.run(
        [sys.executable, "-c", PINNED, str(core)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    pinned, affinities = done.stdout.splitlines()
    assert int(pinned) == 2  # the main thread and the early one
    assert affinities == str([(core,)])  # all three threads, the late one too


def test_a_worker_that_may_not_pin_stays_with_the_scheduler(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(WORKERS_ENV, "2")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})

    def refuse(pid: int, cores: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    with caplog.at_level("WARNING", logger="hearth.serving.workers"):
        assert pin_this_worker(True, 2) is None
    assert "cannot pin it to core 1" in caplog.text
    assert pin_this_worker(False, 2) is None  # HEARTH_SERVE_PIN_WORKERS=false: never tried
