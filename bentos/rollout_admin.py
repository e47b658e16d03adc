"""The admin API's operations: the rollout controls, injected into the serving graph.

`hearth.serving` never imports `hearth.rollout` (they are peers over `hearth.traffic`);
the services here, the orchestration layer, wire the two together.
"""

from __future__ import annotations

from collections.abc import Callable

from hearth.config import HearthContext
from hearth.serving.admin import AdminOps


def controls(ctx: HearthContext) -> Callable[[], AdminOps]:
    """Makes `hearth.rollout.control.Controls` for `ctx` on the first admin call."""

    def make() -> AdminOps:
        # lazy: the rollout controls load MLflow, which a gateway without admin calls never needs
        from hearth.rollout.control import Controls

        return Controls(ctx.settings, ctx.params)

    return make
