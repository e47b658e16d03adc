"""Where a flow gets its configuration: Settings from the environment, params.yaml."""

from __future__ import annotations

from collections.abc import Callable

from hearth.config import HearthContext, Settings
from hearth.stack.prefect_api import flows_in_this_process


def load_context() -> HearthContext:
    """Load Settings and Params once per flow run and export Settings' environment."""
    ctx = HearthContext()
    ctx.settings.apply()
    return ctx


def run_as_script(flow: Callable[[], object]) -> None:
    """Run `flow` as `python flows/<name>.py` does: Settings' environment exported first
    (Prefect's home among it: the flow's body would do it after Prefect started its client),
    then as Hearth's entry points run flows (`flows_in_this_process`: on `hearth up`'s
    Prefect server when it runs)."""
    settings = Settings()
    settings.apply()
    with flows_in_this_process(settings):
        flow()
