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


# -- rollout profiles ----------------------------------------------------------------------
def test_repo_demo_profile_changes_three_tolerances_and_keeps_the_rest() -> None:
    rollout = load_params(Path(__file__).parents[2] / "params.yaml").rollout
    demo = rollout.profile("demo")
    changed = {
        name: value
        for name, value in demo.model_dump().items()
        if value != getattr(rollout, name) and name != "profiles"
    }
    assert changed == {"p99_slack_ms": 50.0, "max_psi": 0.5, "recall_tolerance": 0.1}
    assert demo.profiles == {}


def _params_with(tmp_path: Path, rollout_yaml: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text("rollout:\n" + rollout_yaml)
    return path


def test_a_profile_starts_from_the_files_rollout_values(tmp_path: Path) -> None:
    path = _params_with(
        tmp_path,
        "  max_psi: 0.3\n  min_samples: 50\n  profiles:\n    quick:\n      min_samples: 20\n",
    )
    rollout = load_params(path).rollout
    quick = rollout.profile("quick")
    assert (quick.min_samples, quick.max_psi) == (20, 0.3)
    assert rollout.min_samples == 50  # the base values are untouched
    assert rollout.profile(None).min_samples == 50 and rollout.profile(None).profiles == {}


def test_a_typo_in_a_profile_is_an_error_naming_it(tmp_path: Path) -> None:
    path = _params_with(tmp_path, "  profiles:\n    quick:\n      max_pis: 0.5\n")
    with pytest.raises(ConfigError, match=r"profiles\.quick\.max_pis"):
        load_params(path)


def test_a_profile_is_validated_like_the_rollout_values(tmp_path: Path) -> None:
    path = _params_with(tmp_path, "  profiles:\n    bad:\n      steps: [10, 50]\n")
    with pytest.raises(ConfigError, match="last rollout step must be 100"):
        load_params(path)
    path = _params_with(tmp_path, "  profiles:\n    a:\n      profiles: {b: {max_psi: 1}}\n")
    with pytest.raises(ConfigError, match="cannot hold profiles"):
        load_params(path)


def test_an_unknown_profile_name_is_an_error_listing_the_known_ones() -> None:
    rollout = Params.model_validate({"rollout": {"profiles": {"quick": {"min_samples": 20}}}})
    with pytest.raises(ConfigError, match=r"no rollout profile 'demo' \(rollout.profiles: quick\)"):
        rollout.rollout.profile("demo")


def test_a_rollout_plan_analyses_with_the_named_profile() -> None:
    from hearth.rollout.flow_steps import RolloutPlan

    params = load_params(Path(__file__).parents[2] / "params.yaml")
    plan = RolloutPlan.make(params, step_wait_s=12, max_wait_s=170, profile="demo")
    assert plan.analysis == params.rollout.profile("demo")
    assert (plan.step_wait_s, plan.max_wait_s) == (12, 170)
    assert RolloutPlan.make(params).analysis == params.rollout.profile(None)
