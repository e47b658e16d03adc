"""The admin API's operations: the rollout controls, injected into the serving graph.

`hearth.serving` never imports `hearth.rollout` (they are peers over `hearth.traffic`);
the services here, the orchestration layer, wire the two together.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from hearth.config import HearthContext
from hearth.serving.admin import AdminOps

# An admin call should answer within seconds: with the registry down, a 503 to retry, not
# minutes of MLflow's own retries (its defaults: 7 retries, exponential backoff, 120 s per
# request). A tracking server's REST API is called with short timeouts and no retries
# (`hearth.rollout.registry_client`); these bound MLflow's client wherever this process
# still uses it (a monolith loading a model version). Set on the first admin call, unless
# set already.
MLFLOW_FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def controls(ctx: HearthContext) -> Callable[[], AdminOps]:
    """Makes `hearth.rollout.control.Controls` for `ctx` on the first admin call."""

    def make() -> AdminOps:
        # lazy: a gateway without admin calls never needs the rollout controls
        from hearth.rollout.control import Controls

        for name, value in MLFLOW_FAIL_FAST.items():
            os.environ.setdefault(name, value)
        return Controls(ctx.settings, ctx.params)

    return make
