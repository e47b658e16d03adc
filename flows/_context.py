"""Where a flow gets its configuration: Settings from the environment, params.yaml."""

from __future__ import annotations

from hearth.config import HearthContext


def load_context() -> HearthContext:
    """Load Settings and Params once per flow run and export Settings' environment."""
    ctx = HearthContext()
    ctx.settings.apply()
    return ctx
