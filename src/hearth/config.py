"""One path for configuration.

`Settings` says *where* things are (paths, URIs, secrets) and comes from the environment
(`HEARTH_*`) and `.env`. `Params` says *what to do* (sizes, thresholds, hyperparameters) and
comes from `params.yaml`. Both are validated once into frozen models that reject unknown
keys, so a typo is an error at start rather than a silent default.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from hearth.params import Params, load_params
from hearth.secrets_file import (
    GENERATED,
    RECORDED,
    SECRETS_FILE,
    STACK_ADMIN_USER,
    read_secrets,
    secrets_path,
)

DEFAULT_API_KEY = "dev-api-key"
API_KEY_HEADER = "X-API-Key"  # the request header that carries `Settings.api_key`
DEFAULT_ADMIN_TOKEN = "dev-admin-token"
# The token the features and model services require of their callers (the gateway).
DEFAULT_INTERNAL_TOKEN = "dev-internal-token"
# Production secrets are at least this long (`secrets.token_urlsafe(32)` gives 43 characters).
MIN_SECRET_LENGTH = 32
# `hearth up` writes random secrets into SECRETS_FILE (hearth.secrets_file, under
# HEARTH_HOME, mode 0600) on its first start; Settings read them from there, below the
# environment and .env.

# The registry's aliases, which are also the names of the serving variants. Defined here, in
# the module everything imports, because hearth.registry imports MLflow and the gateway's
# image does not install it.
CHAMPION: Literal["champion"] = "champion"
CHALLENGER: Literal["challenger"] = "challenger"
PREVIOUS: Literal["previous"] = "previous"
Variant = Literal["champion", "challenger"]

# Nothing Hearth runs may phone home.
NO_TELEMETRY_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "true",
    "BENTOML_DO_NOT_TRACK": "true",
    "MLFLOW_ENABLE_TELEMETRY": "false",
}
# Every `mlflow server` Hearth starts: without this, MLflow 3.17 starts seven huey job
# consumers (its GenAI jobs, which Hearth does not use), ~270 MB of RSS each.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def project_root() -> Path:
    """The directory holding bentos/: the working directory, else the source checkout."""
    here = Path.cwd()
    if (here / "bentos").is_dir():
        return here
    return Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """Where Hearth keeps its state and how it reaches its servers."""

    model_config = SettingsConfigDict(
        env_prefix="HEARTH_", env_file=".env", extra="ignore", frozen=True
    )

    env: Literal["development", "production"] = "development"
    home: Path = Field(default=Path(".hearth"), description="Root of every piece of state.")
    data_dir: Path = Path("data")
    reports_dir: Path = Path("reports")
    params_file: Path = Path("params.yaml")
    mlflow_tracking_uri: str | None = Field(
        default=None, description="Defaults to sqlite:///<home>/mlflow.db."
    )
    prefect_api_url: str | None = Field(
        default=None, description="Defaults to Prefect's local server in <home>/prefect."
    )
    api_key: SecretStr = SecretStr(DEFAULT_API_KEY)
    admin_token: SecretStr = SecretStr(DEFAULT_ADMIN_TOKEN)
    internal_token: SecretStr = Field(
        default=SecretStr(DEFAULT_INTERNAL_TOKEN),
        description="Shared by the gateway and the features and model services it calls.",
    )
    mlflow_admin_password: SecretStr | None = Field(
        default=None,
        description="Password of MLflow's basic-auth admin (user `hearth`), used when "
        "`hearth up` binds MLflow beyond loopback.",
    )
    prefect_auth_string: SecretStr | None = Field(
        default=None,
        description="`user:password` of Prefect's API auth, used when `hearth up` binds "
        "Prefect beyond loopback.",
    )
    store_backend: Literal["sqlite", "redis"] = Field(
        default="sqlite", description="Online feature store: embedded SQLite or a Redis server."
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Used when store_backend is redis."
    )
    database_url: str | None = Field(
        default=None,
        description="PostgreSQL (postgresql://user:password@host:port/db) shared by every "
        "serving process: the prediction log, its labels and the rollout state live there. "
        "Unset: SQLite files under home.",
    )
    postgres_password: SecretStr | None = Field(
        default=None, description="Password of `hearth up --shared`'s PostgreSQL (user hearth)."
    )
    redis_password: SecretStr | None = Field(
        default=None, description="Password of `hearth up --shared`'s Redis."
    )
    state_backend: Literal["auto", "sqlite", "redis", "postgres"] = Field(
        default="auto",
        description="Where the rollout state lives. auto: PostgreSQL when database_url is "
        "set, else Redis when store_backend is redis, else SQLite.",
    )
    dask_address: str | None = Field(
        default=None,
        description="Scheduler (`tcp://host:8786`) that training sweeps send their variants "
        "to; unset: a small local Dask cluster in the flow's process.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments, the environment and .env win over what `hearth up` generated.
        home_secrets = _HomeSecrets(settings_cls, init_settings)
        return init_settings, env_settings, dotenv_settings, home_secrets, file_secret_settings

    def _secrets(self) -> dict[str, tuple[str, str]]:
        """The shared secrets: variable → (value, development default)."""
        return {
            "HEARTH_API_KEY": (self.api_key.get_secret_value(), DEFAULT_API_KEY),
            "HEARTH_ADMIN_TOKEN": (self.admin_token.get_secret_value(), DEFAULT_ADMIN_TOKEN),
            "HEARTH_INTERNAL_TOKEN": (
                self.internal_token.get_secret_value(),
                DEFAULT_INTERNAL_TOKEN,
            ),
        }

    def development_defaults(self) -> list[str]:
        """The secrets (by variable) still at their development default, or empty."""
        return [
            name for name, (value, default) in self._secrets().items() if value in ("", default)
        ]

    @model_validator(mode="after")
    def _database_url_is_postgres(self) -> Self:
        url = self.database_url
        if url is not None and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "HEARTH_DATABASE_URL must be a PostgreSQL URL (postgresql://user:password@host:"
                "port/database), or unset for SQLite files under HEARTH_HOME"
            )
        if self.state_backend == "postgres" and url is None:
            raise ValueError("HEARTH_STATE_BACKEND=postgres needs HEARTH_DATABASE_URL")
        return self

    @property
    def rollout_state_backend(self) -> Literal["sqlite", "redis", "postgres"]:
        """Where the rollout state lives (`state_backend`, with auto resolved)."""
        if self.state_backend != "auto":
            return self.state_backend
        if self.database_url is not None:
            return "postgres"
        return "redis" if self.store_backend == "redis" else "sqlite"

    @model_validator(mode="after")
    def _real_secrets_in_production(self) -> Self:
        if self.env != "production":
            return self
        secrets_ = self._secrets()
        if defaults := self.development_defaults():
            raise ValueError(
                f"{', '.join(defaults)}: empty or the development default; set real secrets "
                f"before running with HEARTH_ENV=production ({_HOW_TO_SET})"
            )
        for name, (value, _) in secrets_.items():
            if len(value) < MIN_SECRET_LENGTH:
                raise ValueError(
                    f"{name} has {len(value)} characters; HEARTH_ENV=production needs at least "
                    f"{MIN_SECRET_LENGTH} ({_HOW_TO_SET})"
                )
        names = list(secrets_)
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                if secrets_[first][0] == secrets_[second][0]:
                    raise ValueError(
                        f"{first} and {second} are the same secret; HEARTH_ENV=production "
                        "needs a distinct one for each (a key that scores must not open the "
                        "admin API or the internal services)"
                    )
        return self

    def bind_problem(self, host: str) -> str | None:
        """Why serving on `host` is refused (a development default secret on a non-loopback
        interface), or None."""
        defaults = self.development_defaults()
        if not defaults or is_loopback(host):
            return None
        return (
            f"refusing to serve on {host}, beyond loopback, while {', '.join(defaults)} "
            f"{'is' if len(defaults) == 1 else 'are'} the development default: anyone who can "
            f"reach the port could use {'it' if len(defaults) == 1 else 'them'}. Run "
            f"`hearth secrets` (random secrets into {self.home_abs / SECRETS_FILE}, which "
            f"`hearth up` also does), or set them yourself ({_HOW_TO_SET}), or serve on "
            "127.0.0.1"
        )

    @property
    def mlflow_auth(self) -> bool:
        """Whether `hearth up`'s MLflow runs its basic-auth app: it binds beyond loopback."""
        return not is_loopback(self.mlflow_host)

    @property
    def prefect_auth(self) -> bool:
        """Whether `hearth up`'s Prefect requires its API auth string: beyond loopback."""
        return not is_loopback(self.prefect_host)

    # -- derived locations -------------------------------------------------------------
    @property
    def home_abs(self) -> Path:
        return self.home.expanduser().resolve()

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.home_abs / 'mlflow.db'}"

    @property
    def mlflow_artifact_root(self) -> Path:
        return self.home_abs / "mlartifacts"

    @property
    def prefect_home(self) -> Path:
        return self.home_abs / "prefect"

    @property
    def dvc_remote(self) -> Path:
        return self.home_abs / "dvc-remote"

    @property
    def data_docs_dir(self) -> Path:
        return self.home_abs / "data-docs"

    @property
    def gx_dir(self) -> Path:
        return self.home_abs / "gx"

    @property
    def online_store_path(self) -> Path:
        return self.home_abs / "online_store.sqlite"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def transactions_dir(self) -> Path:
        return self.raw_dir / "transactions"

    @property
    def customers_file(self) -> Path:
        return self.raw_dir / "customers.csv"

    @property
    def processed_dir(self) -> Path:
        return self.data_dir / "processed"

    @property
    def quarantine_dir(self) -> Path:
        return self.data_dir / "quarantine"

    @property
    def reference_dir(self) -> Path:
        return self.data_dir / "reference"

    # -- serving ---------------------------------------------------------------------------
    serving_host: str = Field(default="127.0.0.1", description="Interface `hearth serve` binds.")
    serving_port: int = Field(default=3000, ge=1, le=65535, description="Port of the gateway.")
    max_payload_bytes: int = Field(
        default=65_536, gt=0, description="Larger request bodies are refused with 413."
    )
    # The input domain at the gate (hearth.features.online.InputDomain); every service and
    # the online store enforce the same.
    max_amount: float = Field(
        default=1e9,
        gt=0,
        allow_inf_nan=False,
        description="Largest amount accepted, in the transaction's currency (larger: 422).",
    )
    max_clock_skew_s: float = Field(
        default=300.0,
        ge=0,
        allow_inf_nan=False,
        description="How far a timestamp may be ahead of the server's clock (further: 422).",
    )
    max_transaction_age_s: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="How far a timestamp may be behind the server's clock; default: the "
        "online store's window (30 days) in production, unbounded in development, where "
        "demos replay past periods.",
    )
    max_batch: int = Field(
        default=1000, ge=1, description="Transactions in one /predict_batch (more: 413)."
    )
    model_timeout_s: float = Field(
        default=2.0, gt=0, description="A model call slower than this answers 503."
    )
    max_in_flight: int = Field(
        default=512,
        ge=1,
        description="Requests a gateway process works on at once; beyond, 503 + Retry-After.",
    )
    serve_pin_workers: bool = Field(
        default=True,
        description="`hearth serve --workers N` (N > 1): each worker keeps its threads on a "
        "core of its own (hearth.serving.workers); false leaves them to the scheduler.",
    )
    heartbeat_interval_s: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="How often each serving process reports itself into the shared state.",
    )
    heartbeat_window_s: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description="A serving process not heard from for longer is quiet "
        "(`hearth rollout status` names it).",
    )
    features_url: str | None = Field(
        default=None, description="A remote features service; default: a local dependency."
    )
    model_url: str | None = Field(
        default=None, description="A remote model service; default: a local dependency."
    )
    model_batching: bool = Field(
        default=True,
        description="Adaptive batching on the model service's predict API (off: one call "
        "per request; for benchmarks and debugging).",
    )
    bentoml_dir: Path | None = Field(
        default=None, description="BentoML's store (BENTOML_HOME); default <home>/bentoml."
    )
    # -- the stack (`hearth up`) and observability ----------------------------------------
    prefect_host: str = Field(
        default="127.0.0.1", description="Interface of `hearth up`'s Prefect."
    )
    prefect_port: int = Field(default=4200, ge=1, le=65535, description="Prefect server + UI.")
    mlflow_host: str = Field(default="127.0.0.1", description="Interface of the MLflow server.")
    mlflow_port: int = Field(default=5000, ge=1, le=65535, description="MLflow server + UI.")
    postgres_host: str = Field(
        default="127.0.0.1", description="Interface of `hearth up --shared`'s PostgreSQL."
    )
    postgres_port: int = Field(default=5432, ge=1, le=65535, description="Its port.")
    redis_host: str = Field(
        default="127.0.0.1", description="Interface of `hearth up --shared`'s Redis."
    )
    redis_port: int = Field(default=6379, ge=1, le=65535, description="Its port.")
    otlp_endpoint: str | None = Field(
        default=None,
        description="OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces; unset: off.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="Server logs: text, or one JSON object a line (hearth up)."
    )

    @property
    def bentoml_home(self) -> Path:
        return (self.bentoml_dir or self.home_abs / "bentoml").expanduser().resolve()

    @property
    def serving_dir(self) -> Path:
        """Serving state (which versions serve) and the prediction/feedback log."""
        return self.home_abs / "serving"

    def environment(self) -> dict[str, str]:
        """Environment variables that point Prefect, MLflow and friends at this home."""
        env = dict(NO_TELEMETRY_ENV)
        env["PREFECT_HOME"] = str(self.prefect_home)
        env["MLFLOW_TRACKING_URI"] = self.mlflow_uri
        # Progress bars of artifact downloads only clutter the logs of flows and servers.
        env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
        env["BENTOML_HOME"] = str(self.bentoml_home)
        if self.prefect_api_url:
            env["PREFECT_API_URL"] = self.prefect_api_url
        # Clients of `hearth up`'s servers when those require auth (bound beyond loopback).
        # (Also when the server is another machine's: `hearth up --join`.)
        mlflow_remote = _remote(self.mlflow_tracking_uri)
        if (self.mlflow_auth or mlflow_remote) and self.mlflow_admin_password is not None:
            env["MLFLOW_TRACKING_USERNAME"] = STACK_ADMIN_USER
            env["MLFLOW_TRACKING_PASSWORD"] = self.mlflow_admin_password.get_secret_value()
        prefect_remote = _remote(self.prefect_api_url)
        if (self.prefect_auth or prefect_remote) and self.prefect_auth_string is not None:
            env["PREFECT_API_AUTH_STRING"] = self.prefect_auth_string.get_secret_value()
        return env

    def apply(self) -> None:
        """Export `environment()` into this process and create the home; call once at start."""
        self.home_abs.mkdir(parents=True, exist_ok=True)
        for key, value in self.environment().items():
            os.environ[key] = value


_HOW_TO_SET = (
    "HEARTH_API_KEY, HEARTH_ADMIN_TOKEN, HEARTH_INTERNAL_TOKEN; e.g. "
    "`python -c 'import secrets; print(secrets.token_urlsafe(32))'` for each"
)


def _remote(url: str | None) -> bool:
    """Whether `url` is an HTTP server beyond loopback (another machine's)."""
    if not url or not url.startswith(("http://", "https://")):
        return False
    host = urlsplit(url).hostname
    return host is not None and not is_loopback(host)


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine: ``localhost``, 127.0.0.0/8, ``::1``; a name
    counts when every address it resolves to is loopback. ``0.0.0.0`` and ``::`` do not."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos
    )


class _HomeSecrets(PydanticBaseSettingsSource):
    """Settings' secrets, and where a shared stack's servers are, from `<home>/secrets.env`
    (home as Settings will have it)."""

    def __init__(self, settings_cls: type[BaseSettings], init: PydanticBaseSettingsSource):
        super().__init__(settings_cls)
        self.init = init

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads the file once

    def __call__(self) -> dict[str, Any]:
        given = (
            self.init.init_kwargs.get("home") if isinstance(self.init, InitSettingsSource) else None
        )
        found = read_secrets(secrets_path(Path(given) if given is not None else None))
        fields = {field: var for field, (var, _) in GENERATED.items()} | RECORDED
        return {field: found[var] for field, var in fields.items() if var in found}


class HearthContext:
    """Settings and Params, loaded once and passed down."""

    def __init__(self, settings: Settings | None = None, params: Params | None = None):
        self.settings = settings or Settings()
        self._params = params

    @cached_property
    def params(self) -> Params:
        return self._params or load_params(self.settings.params_file)
