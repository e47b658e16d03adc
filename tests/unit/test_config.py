"""Settings and Params: typed, frozen, strict; no default secrets in production."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from hearth.config import ConfigError, Params, Settings, load_params


def test_params_yaml_in_repo_is_valid() -> None:
    params = load_params(Path(__file__).parents[2] / "params.yaml")
    assert params.registry.model_name == "fraud-detector"
    assert params.split.valid_days >= 1


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  dayz: 3\n")
    with pytest.raises(ConfigError, match="dayz"):
        load_params(path)


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)


def test_params_are_frozen() -> None:
    params = Params()
    with pytest.raises(ValidationError):
        params.data.days = 3  # type: ignore[misc]


def test_missing_params_file_means_defaults(tmp_path: Path) -> None:
    assert load_params(tmp_path / "absent.yaml") == Params()


def test_settings_derive_every_state_path_from_home(tmp_path: Path) -> None:
    s = Settings(home=tmp_path / "h")
    assert s.mlflow_uri == f"sqlite:///{tmp_path / 'h' / 'mlflow.db'}"
    for path in (s.mlflow_artifact_root, s.prefect_home, s.dvc_remote, s.data_docs_dir):
        assert path.is_relative_to(tmp_path / "h")
    env = s.environment()
    assert env["PREFECT_HOME"] == str(tmp_path / "h" / "prefect")
    assert env["DO_NOT_TRACK"] == "true"
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HEARTH_MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    s = Settings()
    assert s.home == tmp_path / "elsewhere"
    assert s.mlflow_uri == "http://127.0.0.1:5000"


@pytest.mark.parametrize("secret", ["", "dev-api-key"])
def test_production_refuses_default_or_empty_secrets(secret: str) -> None:
    with pytest.raises(ValidationError, match="HEARTH_API_KEY"):
        Settings(env="production", api_key=secret, admin_token="a-real-token")


def test_production_accepts_real_secrets() -> None:
    s = Settings(env="production", api_key="k-123", admin_token="t-456")
    assert s.api_key.get_secret_value() == "k-123"
