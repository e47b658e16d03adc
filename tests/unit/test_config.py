"""Settings and Params: typed, frozen, strict; no default secrets in production."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from hearth.config import Settings, is_loopback
from hearth.params import ConfigError, Params, load_params
from hearth.secrets_file import ensure_secrets, read_secrets


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


# -- secrets ------------------------------------------------------------------------------
A, B, C = "a" * 32, "b" * 40, "c" * 43  # long enough for production, and distinct


@pytest.mark.parametrize(
    ("name", "change"),
    [
        ("HEARTH_API_KEY", {"api_key": ""}),
        ("HEARTH_API_KEY", {"api_key": "dev-api-key"}),
        ("HEARTH_ADMIN_TOKEN", {"admin_token": "dev-admin-token"}),
        ("HEARTH_INTERNAL_TOKEN", {"internal_token": "dev-internal-token"}),
    ],
)
def test_production_refuses_default_or_empty_secrets(name: str, change: dict) -> None:
    given = {"api_key": A, "admin_token": B, "internal_token": C} | change
    with pytest.raises(ValidationError, match=f"{name}.*development default"):
        Settings(env="production", **given)


def test_production_refuses_a_short_secret() -> None:
    with pytest.raises(ValidationError, match=r"HEARTH_ADMIN_TOKEN has 31 characters.*32"):
        Settings(env="production", api_key=A, admin_token="t" * 31, internal_token=C)


@pytest.mark.parametrize(
    ("same", "given"),
    [
        ("HEARTH_API_KEY and HEARTH_ADMIN_TOKEN", (A, A, C)),
        ("HEARTH_API_KEY and HEARTH_INTERNAL_TOKEN", (A, B, A)),
        ("HEARTH_ADMIN_TOKEN and HEARTH_INTERNAL_TOKEN", (A, B, B)),
    ],
)
def test_production_refuses_a_secret_used_twice(same: str, given: tuple[str, ...]) -> None:
    key, admin, internal = given
    with pytest.raises(ValidationError, match=f"{same} are the same secret"):
        Settings(env="production", api_key=key, admin_token=admin, internal_token=internal)


def test_production_accepts_long_distinct_secrets() -> None:
    s = Settings(env="production", api_key=A, admin_token=B, internal_token=C)
    assert s.api_key.get_secret_value() == A and s.development_defaults() == []


def test_development_accepts_anything_but_names_its_defaults() -> None:
    s = Settings(home=Path("/nonexistent"), api_key="short")
    assert s.development_defaults() == ["HEARTH_ADMIN_TOKEN", "HEARTH_INTERNAL_TOKEN"]


def test_the_secrets_file_is_created_0600_and_reused(tmp_path: Path) -> None:
    path, made = ensure_secrets(tmp_path / "home")
    assert path == tmp_path / "home" / "secrets.env"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set(made) == {
        "HEARTH_API_KEY", "HEARTH_ADMIN_TOKEN", "HEARTH_INTERNAL_TOKEN",
        "HEARTH_MLFLOW_ADMIN_PASSWORD", "HEARTH_PREFECT_AUTH_STRING",
        "HEARTH_POSTGRES_PASSWORD", "HEARTH_REDIS_PASSWORD",
    }  # fmt: skip
    first = path.read_text()
    assert ensure_secrets(tmp_path / "home") == (path, [])  # reused: nothing new
    assert path.read_text() == first
    s = Settings(home=tmp_path / "home")
    values = [s.api_key, s.admin_token, s.internal_token, s.mlflow_admin_password]
    secrets = [v.get_secret_value() for v in values if v is not None]
    assert len(set(secrets)) == 4 and all(len(v) >= 43 for v in secrets)
    assert s.development_defaults() == []
    # What `hearth up` generated passes production's rules as it is.
    assert Settings(home=tmp_path / "home", env="production").api_key == s.api_key


def test_the_environment_overrides_the_secrets_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_secrets(tmp_path)
    monkeypatch.setenv("HEARTH_HOME", str(tmp_path))
    monkeypatch.setenv("HEARTH_API_KEY", "from-the-environment")
    s = Settings()
    assert s.api_key.get_secret_value() == "from-the-environment"
    assert (
        s.admin_token.get_secret_value()
        == read_secrets(tmp_path / "secrets.env")["HEARTH_ADMIN_TOKEN"]
    )


def test_a_missing_secret_is_added_and_a_loose_mode_tightened(tmp_path: Path) -> None:
    path = tmp_path / "secrets.env"
    path.write_text("HEARTH_API_KEY=mine-and-long-enough-for-anything-really\n")
    path.chmod(0o644)
    _, made = ensure_secrets(tmp_path)
    assert "HEARTH_API_KEY" not in made and "HEARTH_ADMIN_TOKEN" in made
    assert read_secrets(path)["HEARTH_API_KEY"] == "mine-and-long-enough-for-anything-really"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("0.0.0.0", False), ("::", False), ("192.168.1.10", False),
     ("no-such-host.invalid", False)],
)  # fmt: skip
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_bind_is_refused_with_development_defaults(tmp_path: Path) -> None:
    dev = Settings(home=tmp_path)
    problem = dev.bind_problem("0.0.0.0")
    assert problem is not None
    assert "0.0.0.0" in problem
    assert "HEARTH_API_KEY, HEARTH_ADMIN_TOKEN, HEARTH_INTERNAL_TOKEN are" in problem
    assert "hearth secrets" in problem and str(tmp_path / "secrets.env") in problem
    assert dev.bind_problem("127.0.0.1") is None and dev.bind_problem("localhost") is None
    ensure_secrets(tmp_path)
    assert Settings(home=tmp_path).bind_problem("0.0.0.0") is None
    one_left = Settings(home=tmp_path, internal_token="dev-internal-token")
    assert "while HEARTH_INTERNAL_TOKEN is the development default" in str(
        one_left.bind_problem("0.0.0.0")
    )


def test_clients_get_the_stacks_credentials_only_beyond_loopback(tmp_path: Path) -> None:
    ensure_secrets(tmp_path)
    local = Settings(home=tmp_path).environment()
    assert "MLFLOW_TRACKING_PASSWORD" not in local and "PREFECT_API_AUTH_STRING" not in local
    wide = Settings(home=tmp_path, mlflow_host="0.0.0.0", prefect_host="0.0.0.0")
    env, found = wide.environment(), read_secrets(tmp_path / "secrets.env")
    assert env["MLFLOW_TRACKING_USERNAME"] == "hearth"
    assert env["MLFLOW_TRACKING_PASSWORD"] == found["HEARTH_MLFLOW_ADMIN_PASSWORD"]
    assert env["PREFECT_API_AUTH_STRING"] == found["HEARTH_PREFECT_AUTH_STRING"]
    assert env["PREFECT_API_AUTH_STRING"].startswith("hearth:")


# -- rollout profiles ----------------------------------------------------------------------
def test_repo_demo_profile_changes_three_tolerances_and_the_quality_test() -> None:
    rollout = load_params(Path(__file__).parents[2] / "params.yaml").rollout
    demo = rollout.profile("demo")
    changed = {
        name: value
        for name, value in demo.model_dump().items()
        if value != getattr(rollout, name) and name != "profiles"
    }
    assert changed == {
        "p99_slack_ms": 50.0,
        "max_psi": 2.0,
        "recall_tolerance": 0.1,
        "quality_test": "paired",
    }
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


def test_database_url_chooses_where_the_rollout_state_lives() -> None:
    assert Settings().database_url is None and Settings().rollout_state_backend == "sqlite"
    assert Settings(store_backend="redis").rollout_state_backend == "redis"
    url = "postgresql://hearth:pw@db.home:5432/hearth"
    assert Settings(database_url=url, store_backend="redis").rollout_state_backend == "postgres"
    assert Settings(database_url=url, state_backend="redis").rollout_state_backend == "redis"
    with pytest.raises(ValidationError, match="PostgreSQL URL"):
        Settings(database_url="sqlite:///x.db")
    with pytest.raises(ValidationError, match="needs HEARTH_DATABASE_URL"):
        Settings(state_backend="postgres")
