"""A flow run by a Hearth entry point reports to `hearth up`'s running Prefect server instead
of starting Prefect's temporary one: the run appears in that server's API."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from hearth import steps
from hearth.config import Settings
from hearth.params import Params
from hearth.stack.prefect_api import PREFECT_SERVER
from hearth.stack.process import Running, write_state
from tests.helpers import write_project
from tests.prefect_api import flow_runs
from tests.projects import REPO, clean_environ, in_project, project_paths, project_settings

# What Prefect logs when it starts a server of its own for the process.
TEMPORARY_SERVER = "Starting temporary server"


def test_run_flow_reports_to_the_stack_server(
    tmp_path: Path, small_params: Params, prefect_server: None
) -> None:
    from prefect.settings import PREFECT_API_URL

    api = PREFECT_API_URL.value()  # the session's server stands in for `hearth up`'s
    write_project(tmp_path, small_params)
    settings: Settings = project_settings(tmp_path)
    with in_project(tmp_path, settings) as ctx:
        steps.generate_data(ctx)
    settings.home_abs.mkdir(parents=True, exist_ok=True)
    log = str(settings.home_abs / "logs" / "prefect-server.log")
    # As `hearth up` records its server; this process is alive as long as the server is.
    write_state(settings.home_abs, [Running(PREFECT_SERVER, os.getpid(), api, f"{api}/health",
                                            log, time.time())])  # fmt: skip
    before = {run.id for run in flow_runs("etl")}

    done = subprocess.run(
        [sys.executable, "-c", "from hearth.stack.entrypoints import ETL, run_flow; "
         "print(run_flow(ETL, validate_raw=False).rows_clean)"],
        cwd=REPO, env=clean_environ("HEARTH_", "MLFLOW_", "PREFECT_") | project_paths(tmp_path),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert TEMPORARY_SERVER not in done.stderr + done.stdout
    new = [run for run in flow_runs("etl") if run.id not in before]
    assert len(new) == 1 and new[0].state is not None and new[0].state.is_completed()
    assert new[0].parameters == {"validate_raw": False}
