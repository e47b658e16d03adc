"""PostgreSQL restarted under a serving process's load: scoring goes on, nothing is lost.

A monolith (`hearth serve`) keeps its rollout state, heartbeats and prediction log in a
PostgreSQL started here (``HEARTH_DATABASE_URL``; its own server: the session's keeps
running for the other tests), its online features in its own home. A canary runs; clients
score new transactions continuously; PostgreSQL hangs (every process SIGSTOPped: it takes
connections and answers nothing, as a hung server or a lost host would) for a few seconds,
then is stopped as a service restart stops it (``pg_ctl stop -m fast``), stays down a few
seconds, and is started again on the same port.
What is checked (issue #12: "PostgreSQL restarted mid-load: scoring continues (the log
buffers, bounded, and catches up; nothing lost, or what was dropped is counted and
reported), the rollout state is intact after"):

- every request is answered 200, while PostgreSQL hangs or is down too (none hangs: each
  within the client's 10 s), by the variant the last known rollout state routes its customer
  to: the serving process routes on its snapshot and buffers its log entries;
- once PostgreSQL is back, the prediction log there holds every answered transaction, once;
  the writer saw failed writes (the outage was real) and dropped nothing;
- the rollout state is intact (the same rollout, step and weight, its history), and a
  rollback made through the serving process's admin API after the restart reaches its
  router: the challenger stops answering.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.launch.hearth_server import ServerProcess
from hearth.traffic.assignment import assign
from hearth.traffic.prediction_log import PredictionLog
from tests.client_load import Answer, Load, metric_samples
from tests.postgres_server import PostgresServer, needs_postgres, start_postgres
from tests.projects import REPO, register_champion_again, server_env

pytestmark = [
    pytest.mark.slow,
    needs_postgres(),
]

ADMIN = "postgres-restart-admin-token"
FROZEN_S = 3.0  # how long PostgreSQL stays hung (every process stopped), under load
OUTAGE_S = 5.0  # how long PostgreSQL stays down, under load
WAIT_S = 60.0  # how long anything may take to come back before the test fails


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def database_url(postgres: PostgresServer) -> str:
    return postgres.create_database("postgres_restart")


@pytest.fixture(scope="module")
def server(
    project: Path, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("home-postgres-restart")
    env = server_env(project, home, HEARTH_DATABASE_URL=database_url, HEARTH_ADMIN_TOKEN=ADMIN)
    started = ServerProcess.start("monolith", env, REPO, home / "serving.log")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


def admin(server: ServerProcess, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, f"{server.url}{path}", json=body,
                         headers={"X-Admin-Token": ADMIN}, timeout=30)  # fmt: skip


def admin_until_ok(server: ServerProcess, method: str, path: str, body: Any = None) -> Any:
    """The admin call's JSON once it answers 200 (503 while its store reconnects)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        r = admin(server, method, path, body)
        if r.status_code == 200:
            return r.json()
        assert r.status_code == 503 and time.monotonic() < deadline, (r.status_code, r.text)
        time.sleep(0.2)


def wait_until(what: str, done: Any, server: ServerProcess) -> float:
    """Poll `done()` until true (at most WAIT_S); when it became true."""
    deadline = time.monotonic() + WAIT_S
    while not done():
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_S} s\n{server.log_tail()}"
        time.sleep(0.2)
    return time.monotonic()


def counter(server: ServerProcess, name: str) -> float:
    return sum(value for _, value in metric_samples(server.url, name))


def logged_answers(database_url: str) -> Counter[str]:
    """How many answers (not failed challenger calls, not shadow copies) the log in
    PostgreSQL holds per transaction id."""
    log = PredictionLog(database_url=database_url)
    try:
        rows = log.rows("predictions")
    finally:
        log.close()
    return Counter(r["transaction_id"] for r in rows if r["ok"] and not r["shadow"])


def test_scoring_goes_on_while_postgres_restarts_and_the_log_loses_nothing(
    server: ServerProcess, postgres: PostgresServer, database_url: str, project: Path
) -> None:
    # A canary at 50 %, its challenger loaded: both variants answer.
    challenger = register_champion_again(project)
    started = admin_until_ok(server, "POST", "/admin/rollout/start",
                             {"challenger_version": challenger, "steps": [50, 100]})  # fmt: skip
    wait_until("the challenger loaded", lambda: admin(server, "GET", "/admin/rollout").json()
               ["serving_process"]["versions"].get("challenger", {}).get("loaded"),
               server)  # fmt: skip
    history_before = admin_until_ok(server, "GET", "/admin/rollout/history")

    with Load(server.url, "pg-restart") as load:
        assert load.wait_for(200, time.monotonic(), WAIT_S) is not None, server.log_tail()
        time.sleep(1.0)
        # Hung first: the server takes connections but answers nothing.
        postgres.freeze()
        frozen = time.monotonic()
        try:
            time.sleep(FROZEN_S)
        finally:
            postgres.thaw()
        thawed = time.monotonic()
        time.sleep(1.0)
        # Then stopped, and started again.
        postgres.stop(remove=False, mode="fast")
        down = time.monotonic()
        time.sleep(OUTAGE_S)
        postgres.start()
        back = time.monotonic()

        # The rollout state is intact, as the serving process's admin API reads it again.
        status = admin_until_ok(server, "GET", "/admin/rollout")
        state_back = time.monotonic()
        assert status["rollout"] == started, (status["rollout"], started)
        history_after = admin_until_ok(server, "GET", "/admin/rollout/history")
        assert history_after == history_before
        # A change made after the restart reaches the router: the challenger stops.
        rollback = time.monotonic()
        admin_until_ok(server, "POST", "/admin/rollback", {"reason": "after the restart"})
        wait_until("the challenger stopped after the rollback",
                   lambda: champion_only(load, rollback), server)  # fmt: skip

    answers = load.answers
    log_tail = server.log_tail()
    bad = [a for a in answers if a.status != 200]
    assert not bad, f"not 200 (0: no answer within 10 s): {bad[:3]}\n{log_tail}"
    during = [a for a in answers if down <= a.sent and a.at <= back]
    assert during, "no request was answered while PostgreSQL was down"
    hung = [a for a in answers if frozen <= a.sent and a.at <= thawed]
    assert hung, "no request was answered while PostgreSQL was hung"

    # Routed by the last known state, sticky per customer, until the rollback.
    expected = {
        c: assign(started["salt"], c, started["challenger_percent"])
        for c in {a.customer_id for a in answers}
    }
    before_rollback = [a for a in answers if a.at < rollback]
    wrong = [a for a in before_rollback if a.variant != expected[a.customer_id]]
    assert not wrong, wrong[:3]
    assert {a.variant for a in during} == {a.variant for a in hung} == {"champion", "challenger"}

    # The log caught up: every answer is in PostgreSQL, once; nothing was dropped.
    answered = Counter(a.transaction_id for a in answers)
    wait_until("the log caught up",
               lambda: set(answered) <= set(logged_answers(database_url)), server)  # fmt: skip
    logged = logged_answers(database_url)
    ours = {t: n for t, n in logged.items() if t in answered}
    assert ours == dict(answered), [t for t, n in ours.items() if n != 1][:5]
    assert counter(server, "hearth_prediction_log_write_failures_total") > 0
    assert counter(server, "hearth_prediction_log_dropped_total") == 0

    last_challenger = max(a.sent for a in answers if a.variant == "challenger")
    print(  # the figures, with -s
        f"\n{len(answers)} answers, {len(hung)} while PostgreSQL was hung ({FROZEN_S:.0f} s, the "
        f"slowest {_slowest(hung):.2f} s), {len(during)} while it was down ({OUTAGE_S:.0f} s, "
        f"the slowest {_slowest(during):.2f} s); admin API back {state_back - back:.2f} s after "
        f"PostgreSQL; the last request the challenger answered was sent "
        f"{last_challenger - rollback:.2f} s after the rollback call"
    )


def champion_only(load: Load, since: float) -> bool:
    """Whether the requests of the last second, all sent after `since`, were all answered
    by the champion (and there were some: about half the customers are the challenger's)."""
    recent = [a for a in load.since(time.monotonic() - 1.0) if a.sent > since]
    return bool(recent) and all(a.variant == "champion" for a in recent)


def _slowest(answers: list[Answer]) -> float:
    return max((a.at - a.sent for a in answers), default=0.0)
