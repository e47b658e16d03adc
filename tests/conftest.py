"""Shared fixtures: every test gets its own Hearth home, data dir and stores under tmp_path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hearth.config import NO_TELEMETRY_ENV, Settings
from hearth.params import Params
from hearth.traffic.state_sqlite import SQLiteStateStore
from tests.helpers import NO_REDIS, REDIS_SERVER, RedisServer
from tests.postgres_server import PostgresServer, postgres_missing, start_postgres
from tests.projects import (
    SMALL_DATA,
    build_tiny_data,
    build_tiny_project,
    registry_versions,
    trained_copy,
)

os.environ.update(NO_TELEMETRY_ENV)


@pytest.fixture
def bentoml_app_metrics() -> Iterator[None]:
    """For a test that builds a BentoML service's ASGI app in this process: BentoML registers
    its request metrics in prometheus_client's global registry when it builds one, so a second
    app in the same process fails (DuplicateTimeseries). Unregister what the test added."""
    from prometheus_client import REGISTRY

    before = set(REGISTRY._collector_to_names)
    yield
    for collector in set(REGISTRY._collector_to_names) - before:
        REGISTRY.unregister(collector)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings rooted in tmp_path, exported to the environment like the CLI does."""
    monkeypatch.chdir(tmp_path)
    s = Settings(
        home=tmp_path / ".hearth",
        data_dir=tmp_path / "data",
        reports_dir=tmp_path / "reports",
        params_file=tmp_path / "params.yaml",
    )
    for key, value in s.environment().items():
        monkeypatch.setenv(key, value)
    s.home_abs.mkdir(parents=True, exist_ok=True)
    return s


@pytest.fixture
def small_params() -> Params:
    """A tiny but realistic data set: fast to generate, ETL and train on."""
    return Params.model_validate(SMALL_DATA)


@pytest.fixture
def state_store(tmp_path: Path) -> Iterator[SQLiteStateStore]:
    """A rollout state store in a SQLite file under tmp_path (the default backend)."""
    s = SQLiteStateStore(tmp_path / "rollout.sqlite")
    yield s
    s.close()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny project's data (SMALL_DATA generated, through ETL), made once per session; a
    test takes a copy (`copy_project`), never this one."""
    return build_tiny_data(tmp_path_factory.mktemp("tiny-data"))


@pytest.fixture(scope="session")
def tiny_project(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tiny project with a registered champion, trained once per session; a test reads
    it through `project`, its own copy, never directly."""
    root = build_tiny_project(tmp_path_factory.mktemp("tiny-project"), data=tiny_data)
    yield root
    # Every module's copy was made from this one: it must still be as built.
    assert registry_versions(root) == ["1"], "a test registered into the session's project"


@pytest.fixture(scope="module")
def project(tiny_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project with a registered champion, one per test module: a copy of the
    session's `tiny_project`, so a module may register, roll out and serve in it freely."""
    return trained_copy(tiny_project, tmp_path_factory.mktemp("project"))


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A throwaway redis-server for a module's tests; they are skipped where none is installed."""
    if REDIS_SERVER is None:
        pytest.skip(NO_REDIS)
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the session (tests/postgres_server.py); the tests
    that use it are skipped where PostgreSQL is not installed."""
    if reason := postgres_missing():
        pytest.skip(reason)
    server = start_postgres()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.create_database()
