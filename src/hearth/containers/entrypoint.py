"""`python -m hearth.containers.entrypoint SERVICE [BENTOML SERVE ARGS…]`: an image's process.

Seeds HEARTH_HOME's model cache with the versions the image carries (`CARRIED`, in the
cache's layout), reconciles the rollout state with the registry as `hearth serve` does
(`adopt_champion`; gateway, model and monolith), then execs `bentoml serve SERVICE` on all
interfaces, port 3000, with Prometheus' multiprocess directory inside the container (a
HEARTH_HOME volume shared by several containers must not share it). Seeding at start, not
at build, lets HEARTH_HOME be a bind mount or a volume made by an older image: the carried
versions are there either way, and the registry is asked only for the others.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

from hearth.containers import recipes
from hearth.rollout.registry_client import over_rest
from hearth.serving.model_cache import CACHE_DIR, RECORD_FILE

CARRIED = Path(recipes.CARRIED)
# The services that serve what the rollout state names; the features service never asks.
FOLLOWS_ROLLOUT = frozenset(
    s.service for s in recipes.SERVING.values() if s.service and s.name != "features"
)
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


def reaches_registry(mlflow_uri: str) -> bool:
    """Whether this image can talk to the registry at `mlflow_uri`: a tracking server over its
    REST API (httpx, in every image), an embedded registry only with MLflow installed (the
    model images; not the gateway's nor the features')."""
    return over_rest(mlflow_uri) or importlib.util.find_spec("mlflow") is not None


def adopt_champion() -> None:
    """As `hearth serve` does before serving: the rollout state adopts the registry's champion
    when it names none, or finishes an interrupted promotion. Skipped where this image cannot
    reach the registry (`reaches_registry`); a registry or state that does not answer only
    delays readiness until someone else does it (the services follow the state, they never
    write it)."""
    # An answer within seconds, not MLflow's minutes of retries (as the admin API does).
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        # lazy: the rollout controls, only when the container starts
        from hearth.config import HearthContext
        from hearth.rollout import promotion

        ctx = HearthContext()
        if not reaches_registry(ctx.settings.mlflow_uri):
            return
        ctx.settings.apply()
        served = promotion.reconciled(ctx.settings, ctx.params).versions()
    except Exception as exc:  # any failure: serve anyway, following the state
        log.warning("rollout state not reconciled with the registry: %s", str(exc)[:300])
        return
    log.info("serving what the rollout state names: %s", served or "nothing yet")


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
    if service in FOLLOWS_ROLLOUT:
        adopt_champion()
    os.execv(sys.executable, serve_argv(service, extra, os.getcwd()))


if __name__ == "__main__":
    main(sys.argv[1:])
