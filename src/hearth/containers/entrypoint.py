"""`python -m hearth.containers.entrypoint SERVICE [BENTOML SERVE ARGS…]`: an image's process.

Seeds HEARTH_HOME's model cache with the versions the image carries (`CARRIED`, in the
cache's layout), then execs `bentoml serve SERVICE` on all interfaces, port 3000, with
Prometheus' multiprocess directory inside the container (a HEARTH_HOME volume shared by
several containers must not share it). Seeding at start, not at build, lets HEARTH_HOME be
a bind mount or a volume made by an older image: the carried versions are there either way,
and the registry is asked only for the others.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from hearth.containers import recipes
from hearth.serving.model_cache import CACHE_DIR, RECORD_FILE

CARRIED = Path(recipes.CARRIED)
PROMETHEUS_DIR = "/tmp/hearth-prometheus"
log = logging.getLogger("hearth.containers")


def seed_model_cache(carried: Path, cache: Path) -> list[str]:
    """Copy each carried `<name>/<version>` the cache lacks (whole, by rename); their names."""
    seeded = []
    for version in sorted(carried.glob(f"*/*/{RECORD_FILE}")):
        source = version.parent
        rel = source.relative_to(carried)
        target = cache / rel
        if (target / RECORD_FILE).exists():
            continue
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                shutil.copytree(source, Path(tmp) / "v")
                os.replace(Path(tmp) / "v", target)
        except OSError as exc:  # e.g. a read-only home: the registry serves it instead
            log.warning("could not seed %s into %s: %s", rel, cache, exc)
            continue
        seeded.append(str(rel))
    return seeded


def serve_argv(service: str, extra: list[str], app: str) -> list[str]:
    return [
        sys.executable, "-m", "hearth.launch.bentoml_main", PROMETHEUS_DIR,
        "serve", service, "--host", "0.0.0.0", "--port", "3000", "--working-dir", app, *extra,
    ]  # fmt: skip


def main(argv: list[str]) -> None:
    service, *extra = argv
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    # Not Settings(): it refuses production without secrets, which the service says better.
    home = Path(os.environ.get("HEARTH_HOME", ".hearth")).resolve()
    seeded = seed_model_cache(CARRIED, home / CACHE_DIR)
    if seeded:
        log.info("model cache seeded with %s", ", ".join(seeded))
    os.execv(sys.executable, serve_argv(service, extra, os.getcwd()))


if __name__ == "__main__":
    main(sys.argv[1:])
