"""The secrets file of a home (``<HEARTH_HOME>/secrets.env``, mode 0600): the secrets
`hearth up` generates, and where a shared stack's servers are (`hearth up --shared` /
`--join`). `hearth.config.Settings` reads it as one of its sources, under the environment
and ``.env``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

SECRETS_FILE = "secrets.env"
# The user MLflow's basic-auth app makes its admin, and Prefect's API auth user.
STACK_ADMIN_USER = "hearth"


# Setting → variable in SECRETS_FILE, and how a fresh value is made.
GENERATED: dict[str, tuple[str, Any]] = {
    "api_key": ("HEARTH_API_KEY", lambda: secrets.token_urlsafe(32)),
    "admin_token": ("HEARTH_ADMIN_TOKEN", lambda: secrets.token_urlsafe(32)),
    "internal_token": ("HEARTH_INTERNAL_TOKEN", lambda: secrets.token_urlsafe(32)),
    "mlflow_admin_password": ("HEARTH_MLFLOW_ADMIN_PASSWORD", lambda: secrets.token_urlsafe(32)),
    "prefect_auth_string": (
        "HEARTH_PREFECT_AUTH_STRING",
        lambda: f"{STACK_ADMIN_USER}:{secrets.token_urlsafe(32)}",
    ),
    "postgres_password": ("HEARTH_POSTGRES_PASSWORD", lambda: secrets.token_urlsafe(32)),
    "redis_password": ("HEARTH_REDIS_PASSWORD", lambda: secrets.token_urlsafe(32)),
}
# Setting → variable: where the servers of a shared stack are, recorded in the same file by
# `hearth up --shared` (its own servers) or `hearth up --join` (the first machine's), so that
# every Hearth process with that home uses them.
RECORDED: dict[str, str] = {
    "database_url": "HEARTH_DATABASE_URL",
    "store_backend": "HEARTH_STORE_BACKEND",
    "redis_url": "HEARTH_REDIS_URL",
    "mlflow_tracking_uri": "HEARTH_MLFLOW_TRACKING_URI",
    "prefect_api_url": "HEARTH_PREFECT_API_URL",
}


class _Home(BaseSettings):
    """HEARTH_HOME alone, from the same environment and .env as Settings."""

    model_config = SettingsConfigDict(env_prefix="HEARTH_", env_file=".env", extra="ignore")
    home: Path = Path(".hearth")


def secrets_path(home: Path | None = None) -> Path:
    """Where `hearth up` keeps the secrets of `home` (default: HEARTH_HOME)."""
    return (home or _Home().home).expanduser().resolve() / SECRETS_FILE


def read_secrets(path: Path) -> dict[str, str]:
    """The variables of a secrets file (``NAME=value`` lines); empty when there is none."""
    from dotenv import dotenv_values  # pydantic-settings' own .env reader

    if not path.is_file():
        return {}
    return {k: v for k, v in dotenv_values(path).items() if v}


def ensure_secrets(home: Path | None = None) -> tuple[Path, list[str]]:
    """The secrets file of `home`, created with random secrets (mode 0600) if missing, and
    completed if a secret is missing from it; (its path, the variables just generated).

    An existing file is reused as it is: its secrets never change under a running stack."""
    path = secrets_path(home)
    known = read_secrets(path)
    fresh = {var: make() for var, make in GENERATED.values() if var not in known}
    if fresh or (path.exists() and path.stat().st_mode & 0o077):
        write_secrets(path, {**known, **fresh})
    return path, list(fresh)


def write_secrets(path: Path, values: dict[str, str]) -> None:
    """Write `values` as the secrets file at `path` (mode 0600, atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{k}={v}" for k, v in values.items()]
    header = "# Hearth's secrets (`hearth up`); the environment and .env override them.\n"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(fd, "w") as f:
        f.write(header + "\n".join(lines) + "\n")
    tmp.replace(path)


def record_shared(home: Path, values: dict[str, str]) -> Path:
    """Record the servers of a shared stack (variables of `RECORDED`, and secrets) into
    `home`'s secrets file, over what it held for them; its path."""
    unknown = set(values) - set(RECORDED.values()) - {v for v, _ in GENERATED.values()}
    if unknown:
        raise ValueError(f"not a shared-stack setting: {', '.join(sorted(unknown))}")
    path = secrets_path(home)
    write_secrets(path, {**read_secrets(path), **values})
    return path


def shared_variables() -> tuple[str, ...]:
    """The variables that say where a shared stack's servers are (`record_shared`)."""
    return tuple(RECORDED.values())
