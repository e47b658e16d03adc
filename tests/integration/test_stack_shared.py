"""`hearth up --shared` / `--join`: where the shared servers are, the join file, and the
PostgreSQL and Redis that `hearth up --shared` starts (real servers, on loopback)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import redis

from hearth.config import Settings
from hearth.launch.launcher import free_port
from hearth.secrets_file import record_shared
from hearth.stack import process, shared
from hearth.stack.process import StackError
from hearth.stack.services import Stack
from hearth.stack.supervisor import _start, _start_shared, down
from hearth.traffic.state_postgres import PostgresStateStore
from tests.helpers import needs_redis
from tests.postgres_server import needs_postgres

PASSWORDS = {"postgres_password": "pg-secret/with:odd@chars", "redis_password": "redis-secret"}


def _settings(home: Path, **more: object) -> Settings:
    return Settings(home=home, **PASSWORDS, **more)  # type: ignore[arg-type]


def test_own_servers_unless_settings_name_others(tmp_path: Path) -> None:
    own = shared.shared_servers(_settings(tmp_path, postgres_port=6543, redis_port=6380))
    assert own.own_postgres and own.own_redis
    assert own.database_url == (
        "postgresql://hearth:pg-secret%2Fwith%3Aodd%40chars@127.0.0.1:6543/hearth"
    )
    assert own.mlflow_database_url.endswith("@127.0.0.1:6543/mlflow")
    assert own.redis_url == "redis://:redis-secret@127.0.0.1:6380/0"
    elsewhere = shared.shared_servers(
        _settings(tmp_path, database_url="postgresql://u:p@db.lan:5432/fleet",
                  store_backend="redis", redis_url="redis://cache.lan:6379/2")
    )  # fmt: skip
    assert not elsewhere.own_postgres and not elsewhere.own_redis
    assert elsewhere.prefect_database_url == "postgresql://u:p@db.lan:5432/fleet_prefect"
    assert elsewhere.redis_url == "redis://cache.lan:6379/2"


def test_the_join_file_carries_urls_as_other_machines_reach_them_and_the_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tmp_path / "first"
    settings = _settings(first, postgres_host="0.0.0.0", redis_host="0.0.0.0",
                         mlflow_host="0.0.0.0", prefect_host="0.0.0.0")  # fmt: skip
    record_shared(first, {"HEARTH_API_KEY": "k" * 40, "HEARTH_ADMIN_TOKEN": "a" * 40})
    stack = Stack(settings, mode="shared")
    monkeypatch.setattr(shared.socket, "getfqdn", lambda: "box1.lan")
    values = shared.join_values(settings, stack.servers, stack.mlflow_url, stack.prefect_api)
    assert values["HEARTH_DATABASE_URL"].endswith("@box1.lan:5432/hearth")
    assert values["HEARTH_MLFLOW_TRACKING_URI"] == "http://box1.lan:5000"
    assert values["HEARTH_PREFECT_API_URL"] == "http://box1.lan:4200/api"
    assert values["HEARTH_API_KEY"] == "k" * 40
    path = shared.write_join_file(first, values)
    assert path.stat().st_mode & 0o777 == 0o600
    assert shared.loopback_servers(values) == []

    # The second machine records them in its home: every Hearth process there uses them.
    second = tmp_path / "second"
    record_shared(second, shared.read_join_file(path))
    for var in ("HEARTH_DATABASE_URL", "HEARTH_API_KEY", "HEARTH_STORE_BACKEND"):
        monkeypatch.delenv(var, raising=False)
    joined = Settings(home=second)
    assert joined.database_url == values["HEARTH_DATABASE_URL"]
    assert joined.store_backend == "redis" and joined.api_key.get_secret_value() == "k" * 40
    assert joined.rollout_state_backend == "postgres"
    join = Stack(joined, mode="join")
    assert join.prefect_api == "http://box1.lan:4200/api"
    assert set(join.ports()) == {"HEARTH_SERVING_PORT"}

    with pytest.raises(StackError, match="not a join file"):
        bad = tmp_path / "bad.env"
        bad.write_text("HEARTH_API_KEY=x\n")
        shared.read_join_file(bad)


@needs_redis
@needs_postgres()
def test_hearth_up_shared_starts_postgres_and_redis_with_passwords() -> None:
    # PostgreSQL runs unprivileged: it must reach its folder, which pytest's tmp_path is not.
    home = Path(tempfile.mkdtemp(prefix="hearth-shared-"))
    home.chmod(0o755)
    settings = _settings(home, postgres_port=free_port(), redis_port=free_port())
    stack = Stack(settings, mode="shared")
    running: list[process.Running] = []
    said: list[str] = []
    try:
        _start_shared(stack, running, said.append)
        assert [r.name for r in running] == ["postgres", "redis"]
        assert any("created the databases hearth, mlflow, prefect" in line for line in said)
        # Hearth's rollout state on it, with the generated password.
        state = PostgresStateStore(stack.servers.database_url)
        try:
            state.set_champion("1", "test", "adopt", expected=None)
            assert state.served().champion_version == "1"
        finally:
            state.close()
        assert redis.Redis.from_url(stack.servers.redis_url).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=settings.redis_port).ping()
        # Recorded for every Hearth process of this home, and for other machines.
        recorded = Settings(home=home)
        assert recorded.database_url == stack.servers.database_url
        assert (home / shared.JOIN_FILE).exists()
        assert any("bound to loopback" in line for line in said)
        # A second start reuses the cluster (no initdb) and the databases.
        down(home, say=said.append)
        running.clear()
        _start(stack, stack.postgres(), running, said.append)
        assert shared.create_databases(stack.servers) == []
    finally:
        down(home, say=said.append)
        shutil.rmtree(home, ignore_errors=True)


def test_a_plain_hearth_up_on_a_shared_home_says_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from hearth.cli import app

    home = tmp_path / ".hearth"
    record_shared(home, {"HEARTH_DATABASE_URL": "postgresql://u:p@db.lan/hearth"})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEARTH_HOME", str(home))
    monkeypatch.setenv("COLUMNS", "300")
    for key, value in Settings().environment().items():  # what the CLI exports, undone after
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, ["up", "--no-serve"])
    assert result.exit_code == 1
    assert "runs on a shared stack's servers (HEARTH_DATABASE_URL" in result.output
    assert "hearth up --join FILE" in result.output
    both = CliRunner().invoke(app, ["up", "--shared", "--join", str(tmp_path / "x.env")])
    assert both.exit_code == 1 and "choose one" in both.output
