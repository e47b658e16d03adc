"""The registry's side of what serves, read: Hearth's MLflow aliases and its model versions.

``champion`` serves, ``challenger`` is the candidate, ``previous`` is the champion before the
last promotion (`hearth.rollout.promotion` writes them after the rollout state). MLflow is
imported only inside the functions that need it, and `read_aliases` reads without it where
the registry allows (`hearth rollback` and `hearth rollout status` must start fast).
"""

from __future__ import annotations

import json
import os
import sqlite3

from hearth.config import CHALLENGER, CHAMPION, PREVIOUS, Settings
from hearth.traffic.rollout_state import UnknownVersion

ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)


# -- reads --------------------------------------------------------------------------
def aliases(model_name: str) -> dict[str, str]:
    """alias → version of our three aliases (absent ones left out); {} for an unknown model."""
    from mlflow.exceptions import MlflowException  # lazy: MLflow, see the module docstring
    from mlflow.tracking import MlflowClient

    try:
        model = MlflowClient().get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {k: str(v) for k, v in model.aliases.items() if k in ALIASES}


def read_aliases(settings: Settings, model_name: str, timeout_s: float = 2.0) -> dict[str, str]:
    """Our aliases as `aliases` reads them, without importing MLflow where the store allows
    it (a SQLite registry: its table; a tracking server: its REST API, `timeout_s`, no
    retries); OSError/sqlite3.Error (or MLflow's error) when the registry does not answer."""
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
    if uri.startswith(("http://", "https://")):
        import urllib.error  # lazy: ~70 ms that `hearth rollback` does not need
        import urllib.parse
        import urllib.request

        query = urllib.parse.urlencode({"name": model_name})
        request = urllib.request.Request(
            f"{uri.rstrip('/')}/api/2.0/mlflow/registered-models/get?{query}"
        )
        user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
        if user and password:
            import base64

            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as answer:
                model = json.load(answer).get("registered_model", {})
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return {}
            raise
        return {
            a["alias"]: str(a["version"])
            for a in model.get("aliases", [])
            if a.get("alias") in ALIASES
        }
    configure_registry(settings)
    return aliases(model_name)


def version_exists(model_name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException  # lazy: MLflow, see the module docstring
    from mlflow.tracking import MlflowClient

    if not str(version).isdigit():
        return False
    try:
        MlflowClient().get_model_version(model_name, str(version))
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return False
        raise
    return True


def check_version(model_name: str, version: str | int) -> str:
    """`version` as a string if it is registered under `model_name`, else UnknownVersion."""
    if not version_exists(model_name, str(version)):
        raise UnknownVersion(f"{model_name} has no version {version!r}")
    return str(version)


def configure_registry(settings: Settings) -> None:
    from hearth import registry  # lazy: MLflow, see the module docstring

    registry.configure(settings)
