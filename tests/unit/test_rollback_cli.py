"""`hearth rollback` as an operator runs it: a subprocess, MLflow unreachable, no heavy imports.

The wall time is printed, not asserted (the test machine is shared and noisy); what is
asserted is deterministic: the exit code, the state written, and the set of modules the
command imports (no MLflow, torch, Prefect, BentoML or pandas on this path).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from hearth.config import Settings
from hearth.params import Params
from hearth.traffic.rollout_state import new_rollout
from hearth.traffic.state_sqlite import SQLiteStateStore
from hearth.traffic.stores import state_path
from tests.projects import REPO, clean_environ

HEAVY = ("mlflow", "torch", "prefect", "bentoml", "pandas", "scipy", "sklearn")


def _hearth(
    settings: Settings, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    environ = clean_environ("HEARTH_", "MLFLOW_") | {
        "HEARTH_HOME": str(settings.home_abs),
        "HEARTH_PARAMS_FILE": str(settings.params_file),
        # Nothing listens there: a command that asked MLflow anything would fail or hang.
        "HEARTH_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
    } | env  # fmt: skip
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "hearth", *args], cwd=REPO, env=environ,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return done, time.perf_counter() - began


def _imported(stderr: str) -> set[str]:
    return {
        line.split("|")[-1].strip().split(".")[0]
        for line in stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def test_hearth_rollback_works_without_mlflow_and_imports_only_what_it_needs(
    settings: Settings,
) -> None:
    store = SQLiteStateStore(state_path(settings))
    try:
        store.set_champion("1", "test", "adopt", expected=None)
        running = store.start(new_rollout("1", "2", Params().rollout), "test")
    finally:
        store.close()

    done, wall = _hearth(settings, "rollback", "--reason", "canary looks wrong")
    print(f"\n`hearth rollback` (with -X importtime) took {wall:.2f} s of wall time")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"rollout {running.rollout_id} rolled back" in done.stderr
    assert not _imported(done.stderr) & set(HEAVY), _imported(done.stderr) & set(HEAVY)

    store = SQLiteStateStore(state_path(settings))
    try:
        served = store.served()
        assert served.versions() == {"champion": "1"}
        intent = store.intent()  # the alias write waits for MLflow
        assert intent is not None and intent.after == {"challenger": None}
        assert store.history()[-1].reason == "canary looks wrong"
        events = len(store.history())
    finally:
        store.close()

    again, _ = _hearth(settings, "rollback")  # an operator making sure: a no-op, exit 0
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already ended as rolled_back; nothing changed" in again.stderr
    store = SQLiteStateStore(state_path(settings))
    try:
        assert len(store.history()) == events
    finally:
        store.close()


def test_a_rollback_that_could_not_be_written_exits_non_zero(settings: Settings) -> None:
    done, _ = _hearth(
        settings, "rollback", HEARTH_STORE_BACKEND="redis", HEARTH_REDIS_URL="redis://127.0.0.1:9/0"
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "error:" in done.stderr and "rollout state" in done.stderr


def test_to_previous_needs_the_expected_champion(settings: Settings) -> None:
    done, _ = _hearth(settings, "rollback", "--to-previous")
    assert done.returncode == 1 and "--expect-champion" in done.stderr


def test_rollout_status_shows_the_state_when_the_registry_is_down(settings: Settings) -> None:
    store = SQLiteStateStore(state_path(settings))
    try:
        store.set_champion("1", "test", "adopt", expected=None)
        store.start(new_rollout("1", "2", Params().rollout), "test")
    finally:
        store.close()
    done, wall = _hearth(settings, "rollout", "status", "--json")
    print(f"\n`hearth rollout status` (with -X importtime) took {wall:.2f} s of wall time")
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads(done.stdout)
    assert status["served"] == {
        "champion": "1", "challenger": "2", "mode": "canary", "challenger_percent": 5.0
    }  # fmt: skip
    assert status["aliases"] == {} and "unavailable" in status["aliases_error"]
    assert not _imported(done.stderr) & set(HEAVY), _imported(done.stderr) & set(HEAVY)
