"""`hearth serve --workers 2`: two monolith processes on one port, on a real server.

Requests land on both workers (each answer names its pid in X-Hearth-Worker); /metrics, the
sum over both (Prometheus multiprocess mode, its directory under HEARTH_HOME, emptied at
start), counts exactly what the client saw per variant; the prediction log has every
request once; a rollback through one worker is followed by both; the admin API lists both
processes; a killed worker's gauges leave /metrics while its counts stay. Each worker
listens on its own socket (SO_REUSEPORT), so connections spread over both, and keeps its
threads on a core of its own. No timing
assertions: the throughput ratio is `hearth bench`'s (the monolith-w2 contender).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from hearth.config import Settings
from hearth.launch.bentoml_main import multiproc_dir
from hearth.launch.hearth_server import ServerProcess, ready_workers, serving
from hearth.traffic.assignment import assign
from hearth.traffic.prediction_log import DB_FILE
from tests.client_load import metric_samples, predictions_by_variant
from tests.projects import API_KEY as KEY
from tests.projects import REPO, register_champion_again, server_env

pytestmark = pytest.mark.slow

ADMIN = "workers-admin-token"
WORKERS = 2
STALE = "counter_4194303.db"  # a file a previous server left: gone once this one starts


@pytest.fixture(scope="module")
def challenger(project: Path) -> str:
    """A second registered version (the champion's model registered again)."""
    return register_champion_again(project)


@pytest.fixture(scope="module")
def server(
    project: Path, challenger: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("home-workers")
    stale = home / "serving" / "prometheus" / STALE
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\0" * 16)
    env = server_env(project, home, HEARTH_ADMIN_TOKEN=ADMIN)
    with serving("monolith", env, REPO, home / "server.log", workers=WORKERS) as srv:
        yield srv


def _tx(i: int, customer: str | None = None) -> dict[str, Any]:
    return {
        "transaction_id": f"w-{i}", "timestamp": "2026-02-01T12:00:00",
        "customer_id": customer or f"cust-{i % 50}", "merchant_id": "m1",
        "merchant_category": "grocery", "amount": 12.5 + i % 7, "currency": "EUR",
        "channel": "pos", "device_id": "d1", "latitude": 48.1, "longitude": 11.6,
    }  # fmt: skip


def _predict(url: str, body: dict[str, Any], client: httpx.Client | None = None) -> httpx.Response:
    post = client.post if client is not None else httpx.post
    return post(f"{url}/predict", json=body, headers={"X-API-Key": KEY}, timeout=30)


def _admin(url: str, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", json=body, headers={"X-Admin-Token": ADMIN},
                         timeout=60)  # fmt: skip


def test_start_emptied_the_metrics_directory_under_hearth_home(server: ServerProcess) -> None:
    assert server.home is not None
    directory = multiproc_dir(Settings(home=server.home))
    assert directory == server.home / "serving" / "prometheus"
    files = {p.name for p in directory.iterdir()}
    assert STALE not in files
    pids = set(server.worker_pids("Monolith"))
    assert len(pids) == WORKERS
    assert {f"gauge_liveall_{pid}.db" for pid in pids} <= files, files


SENT = 240


def test_requests_land_on_both_workers_and_metrics_count_them_exactly(
    server: ServerProcess,
) -> None:
    before = predictions_by_variant(server.url)

    def send(w: int) -> tuple[Counter[str], Counter[str]]:
        variants: Counter[str] = Counter()
        pids: Counter[str] = Counter()
        with httpx.Client() as client:  # keep-alive: a connection stays with its worker
            for i in range(w, SENT, 8):
                r = _predict(server.url, _tx(i), client)
                assert r.status_code == 200, r.text
                variants[r.json()["variant"]] += 1
                pids[r.headers["X-Hearth-Worker"]] += 1
        return variants, pids

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, range(8)))
    variants = sum((v for v, _ in results), Counter())
    pids = sum((p for _, p in results), Counter())
    workers = {str(p) for p in server.worker_pids("Monolith")}
    extra = 0  # should the 8 connections all have gone to one worker: fresh ones until not
    while set(pids) != workers and extra < 100:
        r = _predict(server.url, _tx(SENT + extra))
        assert r.status_code == 200, r.text
        variants[r.json()["variant"]] += 1
        pids[r.headers["X-Hearth-Worker"]] += 1
        extra += 1
    assert set(pids) == workers, pids
    after = predictions_by_variant(server.url)
    assert sum(variants.values()) == SENT + extra
    for variant in set(variants) | set(after):
        assert after[variant] - before[variant] == variants[variant], (variants, before, after)
    assert ready_workers(server.url) == set(server.worker_pids("Monolith"))


def _listening_sockets(pid: int, port: int) -> set[str]:
    """The listening TCP sockets on `port` that process `pid` holds, by inode."""
    held = set()
    for conn in psutil.Process(pid).net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.fd >= 0:
            held.add(os.readlink(f"/proc/{pid}/fd/{conn.fd}"))  # "socket:[inode]"
    return held


def test_each_worker_listens_on_its_own_socket_and_connections_spread_over_both(
    server: ServerProcess,
) -> None:
    # One socket per worker (SO_REUSEPORT): the kernel, not the first worker to wake,
    # decides who accepts a connection. With one shared socket, 32 connections opened
    # together went 28/4 to two workers.
    workers = server.worker_pids("Monolith")
    own = {pid: _listening_sockets(pid, server.port) for pid in workers}
    assert all(len(sockets) == 1 for sockets in own.values()), own
    assert len(set().union(*own.values())) == WORKERS, f"workers share a socket: {own}"
    assert _listening_sockets(server.pid, server.port) == set()  # none left in the parent

    clients = [httpx.Client() for _ in range(32)]  # 32 keep-alive connections, together

    def first(k: int) -> httpx.Response:
        return _predict(server.url, {**_tx(k), "transaction_id": f"spread-{k}"}, clients[k])

    try:
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(first, range(32)))
    finally:
        for client in clients:
            client.close()
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers][:3]
    per_worker = Counter(r.headers["X-Hearth-Worker"] for r in answers)
    # a fair split is 16 ± 2.8; fewer than 6 on one worker is a 1-in-10 000 event
    assert set(per_worker) == {str(pid) for pid in workers}, per_worker
    assert min(per_worker.values()) >= 6, per_worker


def test_the_prediction_log_has_every_request_once(server: ServerProcess) -> None:
    assert server.home is not None
    query = (
        "SELECT transaction_id, COUNT(*) FROM predictions "
        "WHERE transaction_id LIKE 'w-%' AND shadow = 0 GROUP BY transaction_id"
    )
    deadline = time.monotonic() + 30  # each worker's writer drains its buffer on its own
    while True:
        with sqlite3.connect(server.home / "serving" / DB_FILE) as db:
            rows = dict(db.execute(query).fetchall())
        if len(rows) >= SENT or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {f"w-{i}" for i in range(SENT)} <= set(rows)
    assert set(rows.values()) == {1}, {t: n for t, n in rows.items() if n != 1}


def _answers_by_worker(
    url: str, customers: list[str], start: int, want_pids: set[str]
) -> dict[str, set[str]]:
    """Requests of `customers` on fresh connections until every pid answered: pid → the
    variants it answered with."""
    seen: dict[str, set[str]] = {}
    for n in range(400):
        r = _predict(url, _tx(start + n, customers[n % len(customers)]))
        assert r.status_code == 200, r.text
        seen.setdefault(r.headers["X-Hearth-Worker"], set()).add(r.json()["variant"])
        if set(seen) >= want_pids and n >= 2 * len(customers):
            break
    return seen


def test_a_rollback_through_one_worker_is_followed_by_both(
    server: ServerProcess, challenger: str
) -> None:
    pids = {str(p) for p in server.worker_pids("Monolith")}
    body = {"challenger_version": challenger, "mode": "canary", "steps": [50, 100]}
    r = _admin(server.url, "POST", "/admin/rollout/start", body)
    assert r.status_code == 200, r.text
    state = r.json()
    try:
        ids = (f"rb-{i}" for i in range(10_000))
        theirs = [c for c in ids if assign(state["salt"], c, 50) == "challenger"][:4]
        # Each worker loads the challenger on its own; until then it answers the champion.
        deadline = time.monotonic() + 120
        while True:
            seen = _answers_by_worker(server.url, theirs, 10_000, pids)
            if all("challenger" in seen.get(p, set()) for p in pids):
                break
            assert time.monotonic() < deadline, f"not every worker took the challenger: {seen}"
            time.sleep(0.5)
    finally:
        r = _admin(server.url, "POST", "/admin/rollback", {"reason": "workers test"})
    assert r.status_code == 200, r.text
    time.sleep(1.2)  # every follower re-reads the state within a second
    after = _answers_by_worker(server.url, theirs, 20_000, pids)
    assert set(after) == pids, after
    assert all(variants == {"champion"} for variants in after.values()), after


def test_the_admin_api_shows_every_worker(server: ServerProcess) -> None:
    r = _admin(server.url, "GET", "/admin/rollout")
    assert r.status_code == 200, r.text
    view = r.json()["serving_process"]
    pids = set(server.worker_pids("Monolith"))
    assert view["pid"] in pids and view["workers"] == WORKERS and view["worker"] in (1, 2)
    assert {p["pid"] for p in view["processes"]} == pids, view
    for process in view["processes"]:
        assert process["ready"] is True and process["role"] == "monolith"
        assert process["versions"]["champion"] == {"version": "1", "loaded": True}


def _cores_of_threads(pid: int) -> set[str]:
    """The cores each thread of `pid` may run on, as /proc lists them (e.g. "0", "0-1")."""
    cores = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(FileNotFoundError):  # a thread that just ended
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
            cores.add(status.split("Cpus_allowed_list:")[1].split()[0])
    return cores


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to spread over")
def test_each_worker_keeps_its_threads_on_a_core_of_its_own(server: ServerProcess) -> None:
    per_worker = [_cores_of_threads(pid) for pid in server.worker_pids("Monolith")]
    assert all(len(cores) == 1 for cores in per_worker), per_worker
    assert len(set.union(*per_worker)) == WORKERS, per_worker  # two different cores


def test_a_killed_workers_gauges_leave_the_metrics_and_its_counts_stay(
    server: ServerProcess,
) -> None:
    counted = sum(predictions_by_variant(server.url).values())
    victim = server.worker_pids("Monolith")[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    gauges: list[tuple[dict[str, str], float]] = []
    while time.monotonic() < deadline:  # the survivor sweeps its files within a second
        try:
            gauges = metric_samples(server.url, "hearth_model_ready") + metric_samples(
                server.url, "hearth_worker_ready"
            )
        except httpx.TransportError:
            # a connection the kernel had queued on the victim's own socket (SO_REUSEPORT)
            # is reset when it dies (unless the host sets net.ipv4.tcp_migrate_req=1)
            time.sleep(0.2)
            continue
        if gauges and all(labels["pid"] != str(victim) for labels, _ in gauges):
            break
        time.sleep(0.5)
    assert gauges and all(labels["pid"] != str(victim) for labels, _ in gauges), gauges
    assert sum(predictions_by_variant(server.url).values()) == counted  # its counts stay
