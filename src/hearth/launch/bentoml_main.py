"""`python -m hearth.launch.bentoml_main DIR ARGS…`: BentoML's command line (`bentoml
ARGS…`), with Prometheus' multiprocess directory at DIR.

`hearth serve` execs it so that the directory every worker of one server writes its
metrics to lies under that server's HEARTH_HOME (`multiproc_dir`), whatever BENTOML_HOME
is; `bentoml serve` empties it at start, so /metrics begins at zero with each server. Each
worker gets its own listening socket on the port (SO_REUSEPORT), so that the kernel spreads
connections evenly over the workers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hearth.config import Settings


def multiproc_dir(settings: Settings) -> Path:
    """PROMETHEUS_MULTIPROC_DIR of the servers of `settings`' home."""
    return settings.serving_dir / "prometheus"


def main(argv: list[str]) -> None:
    directory, *args = argv
    from bentoml_cli.cli import cli  # lazy: BentoML loads only in the process that serves

    from hearth.serving.bentoml_internals import (
        give_each_worker_its_own_listening_socket,
        set_prometheus_multiproc_dir,
    )

    set_prometheus_multiproc_dir(directory)
    give_each_worker_its_own_listening_socket()
    sys.argv = ["bentoml", *args]
    cli()


if __name__ == "__main__":
    main(sys.argv[1:])
