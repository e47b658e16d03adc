"""The registry's side of what serves, read: Hearth's MLflow aliases and its model versions.

``champion`` serves, ``challenger`` is the candidate, ``previous`` is the champion before the
last promotion (`hearth.rollout.promotion` writes them after the rollout state, through a
`hearth.rollout.registry_client.RegistryClient`). `read_aliases` reads without MLflow's
client wherever it can (`hearth rollout status` must start fast): a SQLite registry's table,
a tracking server's REST API; `aliases` is MLflow's view, for code that has MLflow configured
already (flows, tests).
"""

from __future__ import annotations

import os
import sqlite3

from hearth.config import Settings
from hearth.rollout.registry_client import (
    ALIASES,
    MlflowRegistry,
    RegistryClient,
    using_registry,
)
from hearth.traffic.rollout_state import UnknownVersion

__all__ = ["ALIASES", "aliases", "check_version", "read_aliases"]


def aliases(model_name: str) -> dict[str, str]:
    """alias → version of our three aliases (absent ones left out); {} for an unknown model.
    Through MLflow's client as configured (`hearth.registry.configure`)."""
    return MlflowRegistry().aliases(model_name)


def read_aliases(settings: Settings, model_name: str, timeout_s: float = 2.0) -> dict[str, str]:
    """Our aliases as `aliases` reads them, without importing MLflow where the store allows
    it (a SQLite registry: its table; a tracking server: its REST API, `timeout_s`, no
    retries); sqlite3.Error, RegistryError (or MLflow's error) when the registry does not
    answer."""
    uri = settings.mlflow_uri
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        if not os.path.exists(path):
            return {}  # nothing registered yet (MLflow creates the file on first use)
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s)
        try:
            rows = db.execute(
                "SELECT alias, version FROM registered_model_aliases WHERE name = ?",
                (model_name,),
            ).fetchall()
        finally:
            db.close()
        return {a: str(v) for a, v in rows if a in ALIASES}
    with using_registry(settings, timeout_s) as registry:
        return registry.aliases(model_name)


def check_version(registry: RegistryClient, model_name: str, version: str | int) -> str:
    """`version` as a string if it is registered under `model_name`, else UnknownVersion."""
    if not registry.version_exists(model_name, str(version)):
        raise UnknownVersion(f"{model_name} has no version {version!r}")
    return str(version)
