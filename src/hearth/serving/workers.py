"""One serving worker among the N of `hearth serve --workers N`.

BentoML runs the entry service (the monolith, or the microservices' gateway) as N worker
processes on one port, each listening on its own socket (SO_REUSEPORT, see
`hearth.serving.bentoml_internals`); each loads its own store handle, model pool and
prediction-log writer, and follows the one rollout state on its own (`Follower`). What they
share is outside them: the online store, the rollout state and the prediction log (SQLite
files under HEARTH_HOME, or Redis), and Prometheus' multiprocess directory.

Each worker of N > 1 keeps its threads on a core of its own (`worker_core`, `pin_threads`):
worker i on the i-th core this process may use. A worker's event loop hands work to its
threads (a store call that would wait, the prediction log's writer, a batch of forward
passes) and takes the answers back; where the two sides sit on different cores, each
hand-off passes the GIL from core to core. Measured under wrk at c=32 on 2 cores: one
worker 2 000-2 100 req/s unpinned, 2 270 pinned by `taskset`; two workers 2 900-3 250
unpinned, 3 270-3 330 pinned here (3 590-3 650 by `taskset`, same cores). A lone worker
is left to the scheduler: it has no sibling to spread over, and other servers on the
machine (the microservices, a second Hearth) would all pick the same core.
HEARTH_SERVE_PIN_WORKERS=false leaves every worker to the scheduler.

A worker's /readyz answers for that worker only (its store, model and log loaded), and a
probe reaches whichever worker accepts it; so each worker also publishes its readiness as
`hearth_worker_ready{pid}` every second (`WorkerReadiness`), which /metrics of any worker
shows for all of them. A launcher waits until N workers are ready there, and the admin
API's ``serving_process`` lists every live process of the server from the same gauges. The
same loop sweeps the gauge files of workers that died (`sweep_dead_processes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any

from hearth.observability.prometheus import live_gauges, set_worker_ready, sweep_dead_processes

log = logging.getLogger(__name__)

WORKERS_ENV = "HEARTH_SERVE_WORKERS"  # set by `hearth serve --workers N` for its services
WORKER_HEADER = "X-Hearth-Worker"  # the pid of the worker that answered (Hearth's routes)
PUBLISH_INTERVAL_S = 1.0
STARTING_INTERVAL_S = 0.25  # while not ready yet: a launcher waits on it
MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")  # Linux ≥ 5.14
TASKS = Path("/proc/self/task")  # this process's threads


def configured_workers() -> int:
    """Worker processes of the entry service: `hearth serve --workers N`'s N (1 when the
    service is served some other way, e.g. `bentoml serve` directly)."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if not raw:
        return 1
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{WORKERS_ENV}={raw!r}: expected a whole number ≥ 1") from None
    if n < 1:
        raise ValueError(f"{WORKERS_ENV}={raw!r}: expected a whole number ≥ 1")
    return n


def worker_core(index: int | None, workers: int, allowed: Collection[int]) -> int | None:
    """The core that worker `index` (1…`workers`, circus' numbering) keeps its threads on:
    the index-th of the cores `allowed` (this process's affinity), round robin; None for a
    lone worker or a process that is not one of `hearth serve --workers N`'s."""
    if index is None or workers < 2 or not allowed:
        return None
    cores = sorted(allowed)
    return cores[(index - 1) % len(cores)]


def pin_threads(core: int, tasks: Path = TASKS) -> int:
    """Every thread of this process onto `core` (threads started later inherit it from the
    thread that starts them); how many were pinned. A thread that ended meanwhile is skipped."""
    pinned = 0
    for tid in os.listdir(tasks):
        try:
            os.sched_setaffinity(int(tid), {core})
        except ProcessLookupError:
            continue
        pinned += 1
    return pinned


def pin_this_worker(enabled: bool, index: int | None) -> int | None:
    """Pin this worker's threads to its core (`worker_core`) when `enabled`; the core, or
    None when it stays with the scheduler. A refusal (a container without the right to
    set affinity) is logged, never fatal."""
    workers = configured_workers()
    core = worker_core(index, workers, os.sched_getaffinity(0)) if enabled else None
    if core is None:
        return None
    try:
        threads = pin_threads(core)
    except OSError as exc:
        log.warning(
            "worker %s stays with the scheduler: cannot pin it to core %d: %s", index, core, exc
        )
        return None
    log.info(
        "worker %s of %d: its %d threads on core %d (HEARTH_SERVE_PIN_WORKERS=false to "
        "leave them to the scheduler)", index, workers, threads, core,
    )  # fmt: skip
    return core


def queued_connections_hint(workers: int, sysctl: Path = MIGRATE_REQ) -> str | None:
    """What to tell whoever runs `workers` > 1 on a kernel that resets the connections still
    queued on a worker's own socket when that worker dies (`net.ipv4.tcp_migrate_req` off);
    None where there is nothing to suggest (one worker, the setting on, or no such setting)."""
    if workers < 2:
        return None
    try:
        value = sysctl.read_text().strip()
    except OSError:  # not Linux, older than 5.14, or not readable
        return None
    if value != "0":
        return None
    return (
        "a worker that crashes resets the connections queued on its socket; "
        "`sysctl -w net.ipv4.tcp_migrate_req=1` makes the kernel hand them to a live worker"
    )


class WorkerReadiness:
    """Publishes this worker's readiness (`hearth_worker_ready{role}`) every second and sweeps
    the gauges of dead workers; started on the worker's event loop, stopped at shutdown.
    `role`: monolith or gateway."""

    def __init__(self, role: str, interval_s: float = PUBLISH_INTERVAL_S) -> None:
        self.role = role
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def start(self, ready: Callable[[], Awaitable[bool]]) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._publish(ready))

    async def _publish(self, ready: Callable[[], Awaitable[bool]]) -> None:
        while True:
            ok = False
            try:
                ok = bool(await ready())
                set_worker_ready(self.role, ok)
                await asyncio.to_thread(sweep_dead_processes)
            except Exception:  # metrics must never take a worker down
                log.debug("cannot publish worker readiness", exc_info=True)
            await asyncio.sleep(self.interval_s if ok else STARTING_INTERVAL_S)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            with contextlib.suppress(Exception):
                set_worker_ready(self.role, False)  # going away: no longer ready


def process_view(this: dict[str, Any], worker: int | None) -> dict[str, Any]:
    """The admin API's ``serving_process``: `this` process's view (its pid and the versions
    it has loaded), which worker it is of how many, and ``processes``: every live process of
    this server that publishes readiness or loaded versions (each worker, with its role and
    whether it is ready; the model service in the microservices topology, with ready None)
    and which versions it has loaded, from their gauges in the multiprocess directory
    (empty outside it)."""
    gauges = live_gauges(("hearth_worker_ready", "hearth_model_ready"))
    processes = []
    for pid, by_name in sorted(gauges.items()):
        worker_ready = by_name.get("hearth_worker_ready", [])
        versions: dict[str, dict[str, Any]] = {}
        for labels, value in by_name.get("hearth_model_ready", []):
            variant, version = labels.get("variant", ""), labels.get("version", "")
            if value or variant not in versions:  # a stale 0 never hides the loaded one
                versions[variant] = {"version": version, "loaded": bool(value)}
        processes.append({
            "pid": pid,
            "role": worker_ready[0][0].get("role") if worker_ready else None,
            "ready": bool(worker_ready[0][1]) if worker_ready else None,
            "versions": versions,
        })  # fmt: skip
    return {**this, "worker": worker, "workers": configured_workers(), "processes": processes}
