"""E2E fixtures: the environment of a user in the tiny project (tests/conftest.py's), and
`hearth` run as that user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

from hearth.stack.process import read_state
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


def hearth(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`hearth ARGS` as the user runs it in `cwd`, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "hearth", *args], cwd=cwd, env=env, capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip


def stack_pids(home: Path) -> set[int]:
    """Every process `hearth up` recorded in `home` and runs now, and all its descendants."""
    pids: set[int] = set()
    for r in read_state(home):
        try:
            root = psutil.Process(r.pid)
        except psutil.NoSuchProcess:
            continue
        pids |= {root.pid, *(c.pid for c in root.children(recursive=True))}
    return pids


def still_running(pids: set[int]) -> list[int]:
    """Those of `pids` that still run (zombies waiting for their parent do not)."""
    return [p for p in pids if psutil.pid_exists(p)
            and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]  # fmt: skip
