"""`hearth up --shared`, then `hearth up --join` on the same box, then `hearth down`: real
processes, as a user runs them (issue #12).

Machine A (`hearth up --shared --no-serve`, its own HEARTH_HOME, free ports): PostgreSQL
and Redis start under that home with generated passwords, MLflow keeps its runs and registry
in PostgreSQL and serves the model files itself, Prefect's server keeps its work pools and
deployments in PostgreSQL. A champion is trained and registered through A's tracking
server. Machine B (`hearth up --join A/join.env`, a second home): a Prefect worker and a
serving process that load the champion from A's MLflow server, route by the rollout state in
A's PostgreSQL and log there; a canary started from A (`hearth rollout start`) serves its
challenger on B. `hearth down` on both leaves no process behind.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from hearth.params import Params
from hearth.stack import shared
from hearth.stack.process import read_state
from hearth.stack.supervisor import down
from hearth.traffic.assignment import assign
from hearth.traffic.prediction_log import PredictionLog
from hearth.traffic.state_postgres import PostgresStateStore
from tests.e2e.conftest import API_KEY, hearth, stack_pids, still_running, user_env
from tests.helpers import free_port, needs_redis
from tests.postgres_server import needs_postgres
from tests.projects import (
    copy_project,
    in_project,
    project_settings,
    register_champion_again,
    train_and_register,
)

pytestmark = [
    pytest.mark.slow,
    needs_redis,
    needs_postgres(),
]
NAME = Params().registry.model_name


@dataclass
class Machine:
    home: Path
    env: dict[str, str]
    pids: set[int]

    def remember_pids(self) -> None:
        self.pids |= stack_pids(self.home)

    def down(self, cwd: Path) -> None:
        self.remember_pids()
        done = hearth(["down"], self.env, cwd, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


def _home() -> Path:
    """A home PostgreSQL (run as an unprivileged user) can reach: pytest's tmp_path is not."""
    home = Path(tempfile.mkdtemp(prefix="hearth-shared-up-"))
    home.chmod(0o755)
    return home


@dataclass
class Fleet:
    project: Path
    a: Machine
    b: Machine
    join: dict[str, str]  # A's join file
    up_output: str


@pytest.fixture(scope="module")
def fleet(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    # The project's data, generated and through ETL, nothing trained (tests/conftest.py).
    project = copy_project(tiny_data, tmp_path_factory.mktemp("shared-up"))
    homes = [_home(), _home()]
    a_env = user_env(project) | {
        "HEARTH_HOME": str(homes[0]),
        "HEARTH_POSTGRES_PORT": str(free_port()),
        "HEARTH_REDIS_PORT": str(free_port()),
    }
    b_env = user_env(project) | {"HEARTH_HOME": str(homes[1])}
    a, b = Machine(homes[0], a_env, set()), Machine(homes[1], b_env, set())
    try:
        done = hearth(["up", "--shared", "--no-serve"], a.env, project)
        assert done.returncode == 0, done.stdout + done.stderr
        a.remember_pids()
        join = shared.read_join_file(a.home / shared.JOIN_FILE)
        # A champion, trained here and registered through A's tracking server.
        settings = project_settings(project, home=a.home)
        with in_project(project, settings) as ctx:
            assert ctx.settings.database_url == join["HEARTH_DATABASE_URL"]
            assert train_and_register(ctx).alias == "champion"
        yield Fleet(project, a, b, join, done.stdout + done.stderr)
    finally:  # what the last test did not stop already (in this process: no CLI start-up)
        for machine in (b, a):
            down(machine.home, say=lambda _: None)
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)


def query(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, connect_timeout=5) as conn:
        return conn.execute(sql).fetchall()  # type: ignore[arg-type]  # our own SQL


def transaction(n: int, customer: str) -> dict[str, Any]:
    return {
        "transaction_id": f"shared-up-{n}", "timestamp": "2026-02-01T12:00:00",
        "customer_id": customer, "merchant_id": "m1", "merchant_category": "grocery",
        "amount": 12.5, "currency": "EUR", "channel": "pos", "device_id": "d1",
        "latitude": 48.1, "longitude": 11.6,
    }  # fmt: skip


def test_shared_servers_run_under_the_home_and_hold_mlflow_prefect_and_hearth(
    fleet: Fleet,
) -> None:
    a, join = fleet.a, fleet.join
    names = [r.name for r in read_state(a.home)]
    assert names == ["postgres", "redis", "mlflow", "prefect-server", "prefect-worker"]
    assert "created the databases hearth, mlflow, prefect" in fleet.up_output
    # PostgreSQL's cluster and Redis's files are under A's home, and those servers run there.
    assert (a.home / "postgres" / "data" / "PG_VERSION").exists()
    assert (a.home / "postgres" / "data" / "postmaster.pid").exists()
    assert (a.home / "redis" / "redis.conf").stat().st_mode & 0o777 == 0o600
    import redis

    assert redis.Redis.from_url(join["HEARTH_REDIS_URL"]).ping()
    # MLflow: its backend store is PostgreSQL (the run and the registered model are rows
    # there), and it serves the model files itself (stored under A's home).
    database = join["HEARTH_DATABASE_URL"]
    mlflow_db = shared.database_sibling(database, shared.MLFLOW_DB)
    assert query(mlflow_db, "SELECT name FROM registered_models") == [(NAME,)]
    runs = query(mlflow_db, "SELECT artifact_uri FROM runs")
    assert runs and all(uri.startswith("mlflow-artifacts:") for (uri,) in runs), runs
    assert list(a.home.rglob("MLmodel")), "no model file under A's home"
    # Prefect: its work pools and deployments are rows in PostgreSQL.
    prefect_db = shared.database_sibling(database, shared.PREFECT_DB)
    pools = {name for (name,) in query(prefect_db, "SELECT name FROM work_pool")}
    assert {"hearth-process", "hearth-gpu"} <= pools
    assert query(prefect_db, "SELECT count(*) FROM deployment")[0][0] > 0


def test_a_joined_machine_serves_from_the_shared_servers_and_follows_a_rollout(
    fleet: Fleet,
) -> None:
    a, b, join = fleet.a, fleet.b, fleet.join
    done = hearth(["up", "--join", str(a.home / shared.JOIN_FILE)], b.env, fleet.project)
    assert done.returncode == 0, done.stdout + done.stderr
    b.remember_pids()
    assert [r.name for r in read_state(b.home)] == ["prefect-worker", "serving"]
    gateway = f"http://127.0.0.1:{b.env['HEARTH_SERVING_PORT']}"
    database = join["HEARTH_DATABASE_URL"]
    with httpx.Client(headers={"X-API-Key": API_KEY}, timeout=30) as client:
        r = client.post(f"{gateway}/predict", json=transaction(0, "c-first"))
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == "1"
        # The champion came from A's MLflow server into B's own cache.
        assert (b.home / "model-cache" / NAME / "1").is_dir()

        # A canary started on A (its CLI, its home): B serves the challenger at its weight.
        challenger = register_champion_again(fleet.project, home=a.home)
        started = hearth(["rollout", "start", "--challenger", challenger, "--steps", "50,100"],
                         a.env, fleet.project, timeout=120)  # fmt: skip
        assert started.returncode == 0, started.stdout + started.stderr
        state = PostgresStateStore(database)
        try:
            rollout = state.served().rollout
        finally:
            state.close()
        assert rollout is not None and rollout.challenger_version == challenger
        customers = [f"c{i:03d}" for i in range(40)]
        expected = {c: assign(rollout.salt, c, rollout.challenger_percent) for c in customers}
        deadline = time.monotonic() + 120  # B loads the challenger from A's MLflow first
        n = 0
        while True:
            answers = {}
            for c in customers:
                n += 1
                r = client.post(f"{gateway}/predict", json=transaction(n, c))
                assert r.status_code == 200, r.text
                answers[c] = r.json()["variant"]
            if answers == expected or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert answers == expected

    # Hearth's prediction log is in A's PostgreSQL: B's answers are rows there.
    log = PredictionLog(database_url=database)
    try:
        deadline = time.monotonic() + 30
        while len(log.rows("predictions")) < n + 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        logged = {r["transaction_id"] for r in log.rows("predictions")}
    finally:
        log.close()
    assert {f"shared-up-{i}" for i in range(n + 1)} <= logged


def test_hearth_down_stops_both_machines(fleet: Fleet) -> None:
    # Runs last in this module (pytest keeps file order): it takes both down itself.
    for machine in (fleet.b, fleet.a):
        machine.down(fleet.project)
        assert len(machine.pids) >= 2
        left = still_running(machine.pids)
        assert left == [], [psutil.Process(p).cmdline() for p in left]
    assert not shared.postgres_answers(fleet.join["HEARTH_DATABASE_URL"])
