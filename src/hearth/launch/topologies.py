"""The serving topologies: which BentoML service each one serves, and how it is started.

Light on purpose (no HTTP or process libraries): the CLI imports it for every command.
"""

from __future__ import annotations

import os
import sys

# Topology → the BentoML service `hearth serve` runs (microservices: the gateway's service,
# which starts the features and model services it depends on).
TOPOLOGIES = {"monolith": "bentos.monolith:Monolith", "microservices": "bentos.gateway:Gateway"}
READY_PATH = "/readyz"  # 200 once every service of the topology is up and has a model


def default_workers() -> int:
    """`hearth serve`'s default number of workers: the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def serve_command(
    topology: str, port: int, host: str | None = None, workers: int | None = None
) -> list[str]:
    """`hearth serve` of `topology` on `port` (and `host`, default: Settings) with `workers`
    serving processes (default: `hearth serve`'s, one per core), as a child of this
    interpreter."""
    cmd = [sys.executable, "-m", "hearth", "serve", "--topology", topology]
    if host is not None:
        cmd += ["--host", host]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    return [*cmd, "--port", str(port)]
