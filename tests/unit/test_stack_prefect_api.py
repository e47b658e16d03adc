"""Which Prefect API a Hearth process reports to: `hearth up`'s server when it runs and
answers, a URL already given, else Prefect's temporary server (said once in the log)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from hearth.config import Settings
from hearth.stack import prefect_api
from hearth.stack.prefect_api import PREFECT_SERVER, flows_in_this_process, use_stack_prefect
from hearth.stack.process import Running, write_state


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/api/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def no_prefect_url() -> Iterator[None]:
    """No PREFECT_API_URL during the test, and Prefect's settings as a fresh process has them:
    outside any settings context (in the whole suite, tests/integration's session Prefect
    server has entered one that would otherwise stay current here). After it, the variable
    as it was and Prefect's settings read again."""
    from prefect.context import SettingsContext

    before = os.environ.pop("PREFECT_API_URL", None)
    prefect_api._say_once.cache_clear()
    outside = SettingsContext.__var__.set(None)  # get() then falls back to the global context
    yield
    SettingsContext.__var__.reset(outside)
    os.environ.pop("PREFECT_API_URL", None)
    if before is not None:
        os.environ["PREFECT_API_URL"] = before
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()


@pytest.fixture
def health_server() -> Iterator[str]:
    """A stand-in for Prefect's server: 200 on /api/health; its API URL."""
    server = HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/api"
    server.shutdown()
    server.server_close()


def _record_prefect(settings: Settings, pid: int, api: str) -> None:
    log = str(settings.home_abs / "logs" / "prefect-server.log")
    running = Running(PREFECT_SERVER, pid, api.removesuffix("/api"), f"{api}/health", log,
                      time.time())  # fmt: skip
    write_state(settings.home_abs, [running])


def test_the_running_stack_server_is_used(
    settings: Settings, no_prefect_url: None, health_server: str
) -> None:
    _record_prefect(settings, os.getpid(), health_server)
    assert use_stack_prefect(settings) == health_server
    assert os.environ["PREFECT_API_URL"] == health_server
    from prefect.settings import get_current_settings

    assert get_current_settings().api.url == health_server  # Prefect itself follows


def test_without_a_running_server_it_is_said_once_and_nothing_is_set(
    settings: Settings, no_prefect_url: None, health_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = 2**22 + 12345  # above Linux's default pid_max: no such process
    _record_prefect(settings, dead, health_server)
    with caplog.at_level(logging.INFO, logger=prefect_api.__name__):
        assert use_stack_prefect(settings) is None
        assert use_stack_prefect(settings) is None
    assert "PREFECT_API_URL" not in os.environ
    said = [r.getMessage() for r in caplog.records if "temporary server" in r.getMessage()]
    assert len(said) == 1 and str(settings.home_abs) in said[0]


def test_a_server_that_does_not_answer_is_not_used(
    settings: Settings, no_prefect_url: None
) -> None:
    _record_prefect(settings, os.getpid(), "http://127.0.0.1:9/api")  # nothing listens there
    assert use_stack_prefect(settings) is None


def test_a_given_url_wins(settings: Settings, no_prefect_url: None, health_server: str) -> None:
    _record_prefect(settings, os.getpid(), health_server)
    os.environ["PREFECT_API_URL"] = "http://prefect.example:4200/api"
    assert use_stack_prefect(settings) == "http://prefect.example:4200/api"
    given = settings.model_copy(update={"prefect_api_url": "http://other:4200/api"})
    assert use_stack_prefect(given) == "http://other:4200/api"


def test_flows_in_this_process_run_without_heartbeats_unless_the_user_set_them(
    settings: Settings, no_prefect_url: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import get_current_settings

    with flows_in_this_process(settings) as url:
        assert url is None  # no `hearth up` here: Prefect's temporary server
        assert get_current_settings().flows.heartbeat_frequency is None
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()
    with flows_in_this_process(settings):
        assert get_current_settings().flows.heartbeat_frequency == 60
    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY")  # before `no_prefect_url` re-reads
