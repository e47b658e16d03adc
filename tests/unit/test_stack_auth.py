"""`hearth up`'s MLflow and Prefect: their own auth beyond loopback, none on loopback.

What the stack builds for each bind (commands and environments) is checked here; a real
Prefect server run with that environment is in tests/integration/test_stack_auth_servers.py.
"""

from __future__ import annotations

import configparser
import importlib.util
from pathlib import Path

import pytest

from hearth.config import MLFLOW_SERVER_ENV, Settings
from hearth.secrets_file import ensure_secrets, read_secrets
from hearth.stack import services
from hearth.stack.process import StackError
from hearth.stack.services import Stack

WIDE = {"mlflow_host": "0.0.0.0", "prefect_host": "0.0.0.0"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    ensure_secrets(tmp_path)
    return tmp_path


@pytest.fixture
def with_flask_wtf(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if `mlflow[auth]` were installed (only whether it is, is looked at here)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        services.importlib.util,
        "find_spec",
        lambda name, *a: object() if name == "flask_wtf" else real(name, *a),
    )


def test_on_loopback_nothing_changes(home: Path) -> None:
    stack = Stack(Settings(home=home))
    mlflow, prefect = stack.mlflow(), stack.prefect_server()
    # Only MLflow's job runner switched off (config.MLFLOW_SERVER_ENV): no auth settings.
    assert "--app-name" not in mlflow.cmd and mlflow.env == MLFLOW_SERVER_ENV
    assert prefect.env == {} and stack.prefect_headers() == {}
    env = stack.env()
    assert not {"MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING"} & set(env)
    assert [n.endswith("(loopback): no auth") for n in stack.auth_notes()] == [True, True]


@pytest.mark.usefixtures("with_flask_wtf")
def test_beyond_loopback_mlflow_runs_its_basic_auth_app(home: Path) -> None:
    stack = Stack(Settings(home=home, **WIDE))
    secrets = read_secrets(home / "secrets.env")
    mlflow = stack.mlflow()
    assert mlflow.cmd[mlflow.cmd.index("--app-name") + 1] == "basic-auth"
    assert mlflow.env["MLFLOW_AUTH_ADMIN_USERNAME"] == "hearth"
    assert mlflow.env["MLFLOW_AUTH_ADMIN_PASSWORD"] == secrets["HEARTH_MLFLOW_ADMIN_PASSWORD"]
    assert len(mlflow.env["MLFLOW_FLASK_SERVER_SECRET_KEY"]) == 64
    ini = configparser.ConfigParser()
    ini.read(mlflow.env["MLFLOW_AUTH_CONFIG_PATH"])
    assert ini["mlflow"]["admin_username"] == "hearth"
    assert ini["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert ini["mlflow"]["database_uri"] == f"sqlite:///{home.resolve() / 'mlflow-auth.db'}"
    assert "admin_password" not in ini["mlflow"]  # the secret stays in the 0600 file
    # Every client the stack starts logs in.
    env = stack.env()
    assert env["MLFLOW_TRACKING_USERNAME"] == "hearth"
    assert env["MLFLOW_TRACKING_PASSWORD"] == secrets["HEARTH_MLFLOW_ADMIN_PASSWORD"]
    assert "MLFLOW_AUTH_ADMIN_PASSWORD" not in env  # the server's own, not every process's
    assert "auth on (basic auth, user hearth" in stack.auth_notes()[0]


def test_beyond_loopback_prefect_requires_its_auth_string(home: Path) -> None:
    stack = Stack(Settings(home=home, **WIDE))
    auth = read_secrets(home / "secrets.env")["HEARTH_PREFECT_AUTH_STRING"]
    assert stack.prefect_server().env == {"PREFECT_SERVER_API_AUTH_STRING": auth}
    assert stack.env()["PREFECT_API_AUTH_STRING"] == auth
    assert "PREFECT_SERVER_API_AUTH_STRING" not in stack.env()
    assert stack.prefect_headers()["Authorization"].startswith("Basic ")
    assert "auth on (its API auth string" in stack.auth_notes()[1]


def test_mlflows_auth_app_without_flask_wtf_is_a_clear_error(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(services.importlib.util, "find_spec", lambda *_: None)
    with pytest.raises(StackError, match=r"Flask-WTF.*mlflow\[auth\]"):
        Stack(Settings(home=home, **WIDE)).mlflow()


@pytest.mark.usefixtures("with_flask_wtf")
def test_auth_without_its_secret_says_how_to_make_it(tmp_path: Path) -> None:
    stack = Stack(Settings(home=tmp_path, **WIDE))  # no secrets file
    with pytest.raises(StackError, match="hearth secrets"):
        stack.mlflow()
    with pytest.raises(StackError, match="hearth secrets"):
        stack.prefect_server()


# -- the commands ---------------------------------------------------------------------------
def _hearth(args: list[str], home: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    from typer.testing import CliRunner

    from hearth.cli import app

    monkeypatch.chdir(home)
    for var in ("HEARTH_API_KEY", "HEARTH_ADMIN_TOKEN", "HEARTH_INTERNAL_TOKEN", "HEARTH_ENV"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HEARTH_HOME", str(home / ".hearth"))
    monkeypatch.setenv("COLUMNS", "400")  # one line per message, whatever the terminal
    # The CLI exports Settings' environment into this process: restored after the test.
    for key, value in Settings().environment().items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def test_serve_refuses_a_wide_bind_with_development_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = _hearth(["serve", "--host", "0.0.0.0"], tmp_path, monkeypatch)
    assert code == 1
    assert "refusing to serve on 0.0.0.0" in out and "HEARTH_API_KEY" in out
    assert "hearth secrets" in out


def test_hearth_secrets_writes_the_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / ".hearth" / "secrets.env"
    code, out = _hearth(["secrets"], tmp_path, monkeypatch)
    assert code == 0 and f"into {path} (mode 0600)" in out
    assert path.stat().st_mode & 0o777 == 0o600
    before = path.read_text()
    code, out = _hearth(["secrets"], tmp_path, monkeypatch)
    assert code == 0 and f"{path} (reused)" in out and path.read_text() == before
    assert Settings(home=path.parent).bind_problem("0.0.0.0") is None


def test_the_bare_mlflow_ui_stays_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = _hearth(["ui", "mlflow", "--host", "0.0.0.0"], tmp_path, monkeypatch)
    assert code == 1 and "only on loopback" in out and "HEARTH_MLFLOW_HOST=0.0.0.0" in out


def test_info_says_where_the_secrets_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = _hearth(["info"], tmp_path, monkeypatch)
    assert code == 0 and str(tmp_path / ".hearth" / "secrets.env") in out
