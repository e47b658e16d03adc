"""How Hearth's entry points run flows in their own process: on `hearth up`'s Prefect
server when it runs, without flow-run heartbeats.

Without ``PREFECT_API_URL``, the first flow of a process makes Prefect start a temporary
server of its own (a subprocess on the same database in ``HEARTH_HOME/prefect``: ~15 s of a
2-core machine), and a second server then writes the SQLite file that `hearth up`'s writes.
So every Hearth entry point that runs a flow (`hearth run`, `hearth train --dask`, `hearth
monitor`, a flow started as a script) runs it inside `flows_in_this_process`: when `hearth
up`'s Prefect server runs in this home (its pid file names it, it lives and answers), the
process reports there; when none runs, it says so once in the log and Prefect starts its own.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from hearth.config import Settings
from hearth.launch.launcher import alive, http_ok
from hearth.stack.process import read_state

log = logging.getLogger(__name__)

PREFECT_SERVER = "prefect-server"  # its name in `hearth up`'s pid file (Stack.prefect_server)
HEALTH_SUFFIX = "/health"  # the pid file records `<api>/health` as its health URL
# A heartbeat interval set by the user wins over `flows_in_this_process`'s (the second name
# is Prefect's older one).
HEARTBEAT_ENV = ("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "PREFECT_RUNNER_HEARTBEAT_FREQUENCY")


@contextmanager
def flows_in_this_process(settings: Settings) -> Iterator[str | None]:
    """Prefect as Hearth's entry points run flows in their own process; the API URL the
    flows report to (None: Prefect's temporary server).

    They report to `hearth up`'s server when it runs (`use_stack_prefect`), and emit no
    flow-run heartbeats: Prefect (≥ 3.9, every 180 s by default) runs them in a thread that
    sleeps in one-second steps, and each flow run waits for it to notice its end, 0.5–1 s
    added to every run (a third of a short training). They let the server mark a run whose
    process died unseen as crashed; these runs live in the process the user started, which
    reports its own failure or interruption. The deployments that `hearth up`'s worker runs
    keep them, as does a process where the user set the interval."""
    url = use_stack_prefect(settings)
    # lazy: Prefect takes a second to import; only the commands that run a flow need it
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    user_set = any(name in os.environ for name in HEARTBEAT_ENV)
    with temporary_settings(
        updates=None if user_set else {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    ):
        yield url


def stack_prefect_api(home: Path) -> str | None:
    """The API URL of `hearth up`'s Prefect server in `home` when it runs and answers."""
    for r in read_state(home):
        if (
            r.name == PREFECT_SERVER
            and r.health_url is not None
            and alive(r.pid)
            and http_ok(r.health_url, timeout_s=1.0)
        ):
            return r.health_url.removesuffix(HEALTH_SUFFIX)
    return None


def use_stack_prefect(settings: Settings) -> str | None:
    """Point this process's Prefect client at `hearth up`'s server when it runs; the API
    URL the flows report to, or None where Prefect will start its temporary server.

    A URL already given wins (HEARTH_PREFECT_API_URL, PREFECT_API_URL: a worker's, a
    shared stack's, the user's)."""
    given = settings.prefect_api_url or os.environ.get("PREFECT_API_URL")
    if given:
        return given
    url = stack_prefect_api(settings.home_abs)
    if url is None:
        _say_once(
            "no `hearth up` Prefect server runs in %s: this process's first flow starts "
            "Prefect's temporary server (~15 s); `hearth up` runs one that flows share",
            str(settings.home_abs),
        )
        return None
    os.environ["PREFECT_API_URL"] = url
    if "prefect.context" in sys.modules:
        # Prefect read its settings from the environment when it was imported: again.
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    _say_once("flows report to `hearth up`'s Prefect server at %s", url)
    return url


@cache
def _say_once(message: str, arg: str) -> None:
    log.info(message, arg)
