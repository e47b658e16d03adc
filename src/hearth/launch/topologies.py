"""The serving topologies: which BentoML service each one serves, and how it is started.

Light on purpose (no HTTP or process libraries): the CLI imports it for every command.
"""

from __future__ import annotations

import sys

# Topology → the BentoML service `hearth serve` runs (microservices: the gateway's service,
# which starts the features and model services it depends on).
TOPOLOGIES = {"monolith": "bentos.monolith:Monolith", "microservices": "bentos.gateway:Gateway"}
READY_PATH = "/readyz"  # 200 once every service of the topology is up and has a model


def serve_command(topology: str, port: int, host: str | None = None) -> list[str]:
    """`hearth serve` of `topology` on `port` (and `host`, default: Settings), as a child of
    this interpreter."""
    cmd = [sys.executable, "-m", "hearth", "serve", "--topology", topology]
    if host is not None:
        cmd += ["--host", host]
    return [*cmd, "--port", str(port)]
