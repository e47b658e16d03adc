"""`python -m hearth.containers.worker [PREFECT WORKER START ARGS…]`: the worker image's process.

Registers Hearth's deployments on the Prefect server that PREFECT_API_URL names, then execs
`prefect worker start` with the arguments given. The deployments are prefect.yaml's, read
from the image's copy of the project (HEARTH_REPO_DIR, /opt/hearth/app): the work pools they
name are created first (process pools, as `hearth up` creates them), then `prefect deploy
--all` registers every deployment there. Their pull step sets the flow run's working
directory to HEARTH_REPO_DIR, so this worker's flow runs load flows/*.py, params.yaml and
experiments/ from the image; what they write (data, reports, Prefect's home) goes under
HEARTH_HOME, a volume. Registering at every start keeps the server's deployments those of the
image that runs them; a failure ends the container (Compose restarts it, its log says why).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from hearth.containers import recipes

log = logging.getLogger("hearth.containers")
PREFECT_YAML = "prefect.yaml"


class DeployError(RuntimeError):
    """A `prefect` command that registers the deployments failed."""


def work_pools(prefect_yaml: str) -> list[str]:
    """The work pools prefect.yaml's deployments name, sorted."""
    deployments = yaml.safe_load(prefect_yaml).get("deployments") or []
    return sorted({d["work_pool"]["name"] for d in deployments if d.get("work_pool")})


def prefect_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", "--no-prompt", *args]


def register_commands(app: Path) -> list[list[str]]:
    """The `prefect` commands that create the pools and deploy prefect.yaml, in order."""
    pools = work_pools((app / PREFECT_YAML).read_text())
    create = [
        prefect_argv("work-pool", "create", pool, "--type", "process", "--overwrite")
        for pool in pools
    ]
    return [*create, prefect_argv("deploy", "--all")]


def register(app: Path) -> None:
    """Create the work pools and deploy prefect.yaml from `app` (its working directory)."""
    for argv in register_commands(app):
        log.info("$ %s", " ".join(argv[1:]))
        done = subprocess.run(argv, cwd=app, capture_output=True, text=True, check=False)
        if done.returncode:
            tail = (done.stdout + done.stderr).strip()[-3000:]
            raise DeployError(f"`{' '.join(argv[3:6])}` failed ({done.returncode}):\n{tail}")


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    app = Path(os.environ.get("HEARTH_REPO_DIR", recipes.APP))
    try:
        register(app)
    except DeployError as exc:
        log.error("%s", exc)
        raise SystemExit(1) from None
    log.info("deployments of %s registered; starting the worker", app / PREFECT_YAML)
    prefect = [sys.executable, "-m", "prefect", "worker", "start", *argv]
    os.execv(sys.executable, prefect)


if __name__ == "__main__":
    main(sys.argv[1:])
