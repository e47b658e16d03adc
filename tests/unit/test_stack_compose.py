"""`hearth up --containers` without an engine: what it writes, starts and says (no docker)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hearth.cli import app
from hearth.config import Settings
from hearth.secrets_file import ensure_secrets, read_secrets, secrets_path
from hearth.stack import compose
from hearth.stack.compose import ContainerStack, services_to_start
from hearth.stack.process import StackError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(settings: Settings) -> ContainerStack:
    ensure_secrets(settings.home_abs)
    return ContainerStack(settings, REPO, compose.images())


def test_the_env_file_holds_the_secrets_images_and_ports_for_its_owner_only(
    stack: ContainerStack,
) -> None:
    path = stack.write_env_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values = read_secrets(path)
    home_secrets = read_secrets(secrets_path(stack.settings.home_abs))
    for var in compose.COMPOSE_SECRETS:
        assert values[var] == home_secrets[var]
    assert values["HEARTH_GATEWAY_IMAGE"] == "hearth/gateway:latest"
    assert values["HEARTH_SERVING_PORT"] == str(stack.settings.serving_port)
    assert values["HEARTH_POSTGRES_HOST"] == "127.0.0.1"


def test_this_machine_reaches_the_containers_through_their_published_ports(
    stack: ContainerStack,
) -> None:
    s, host = stack.settings, stack.host_settings()
    assert host["HEARTH_DATABASE_URL"].endswith(f"@127.0.0.1:{s.postgres_port}/hearth")
    assert host["HEARTH_MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:{s.mlflow_port}"
    assert host["HEARTH_STORE_BACKEND"] == "redis"


def test_which_services_each_topology_starts() -> None:
    assert services_to_start("microservices", serve=False, gpu=False) == (
        [], list(compose.INFRASTRUCTURE))  # fmt: skip
    options, services = services_to_start("microservices", serve=True, gpu=True)
    assert options == ["--profile", "gpu"] and "model-gpu" in services
    assert "model" not in services
    options, services = services_to_start("monolith", serve=True, gpu=False)
    assert options == ["--profile", "monolith"] and services[-1] == "monolith"


def test_no_engine_says_how_to_get_one(
    stack: ContainerStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker, no docker-compose
    with pytest.raises(StackError, match="make container-deps"):
        compose.up(stack, serve=False, say=lambda _: None)
    result = CliRunner().invoke(app, ["up", "--containers"])
    assert result.exit_code != 0
    assert "make container-deps" in result.output


def test_missing_images_say_how_to_build_them(
    stack: ContainerStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compose, "engine_problem", lambda: None)
    monkeypatch.setattr(compose, "missing_images", lambda images: ["hearth/model:latest"])
    with pytest.raises(StackError, match=r"hearth/model:latest.*hearth images base.*containerize"):
        compose.up(stack, serve=False, say=lambda _: None)


def test_down_without_containers_touches_nothing(settings: Settings) -> None:
    assert compose.down(settings, REPO) == []
    result = CliRunner().invoke(app, ["down"])
    assert result.exit_code == 0 and "nothing runs" in result.output


def test_gpu_is_for_containers_only(settings: Settings) -> None:
    result = CliRunner().invoke(app, ["up", "--gpu", "--no-serve"])
    assert result.exit_code != 0 and "--containers" in result.output
