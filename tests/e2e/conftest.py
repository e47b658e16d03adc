"""E2E fixtures: the environment of a user in the tiny project (tests/conftest.py's)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import free_port
from tests.projects import clean_environ, project_paths

API_KEY = "e2e-key"


def user_env(project: Path) -> dict[str, str]:
    """A user's shell in `project`: absolute HEARTH_* paths, free loopback ports."""
    env = clean_environ("HEARTH_", "BENTOML_", "PREFECT_", "MLFLOW_")
    env.update(project_paths(project))
    env.update(
        HEARTH_API_KEY=API_KEY,
        HEARTH_PREFECT_PORT=str(free_port()),
        HEARTH_MLFLOW_PORT=str(free_port()),
        HEARTH_SERVING_PORT=str(free_port()),
    )
    return env
