"""Serving: `hearth serve` (foreground), `hearth build` (bentos); images: `hearth.cli.images`.

The serving packaging, the rollout promotion and the online store are imported inside the
commands: they load pandas, pyarrow and mlflow (~1.5 s+), which the other commands should
not pay for at start-up.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer

from hearth.cli._common import choose, console, fail, load_context
from hearth.config import HearthContext, project_root
from hearth.launch.bentoml_main import multiproc_dir
from hearth.launch.topologies import TOPOLOGIES, default_workers
from hearth.serving.workers import WORKERS_ENV, queued_connections_hint

commands = typer.Typer()

BentoOption = Annotated[
    list[str] | None, typer.Option(help="A bento, by name; repeatable (default: all four).")
]


def _served(ctx: HearthContext) -> dict[str, str]:
    """variant → version that serves, from the rollout state (which first adopts the
    registry's champion, or repairs an interrupted promotion)."""
    from hearth.rollout import promotion  # lazy: mlflow, see the module docstring
    from hearth.traffic.rollout_state import StateUnavailable

    name = ctx.params.registry.model_name
    try:
        versions = promotion.reconciled(ctx.settings, ctx.params).versions()
    except StateUnavailable as exc:
        fail(str(exc), "check HEARTH_DATABASE_URL (PostgreSQL), or HEARTH_STORE_BACKEND / "
             "HEARTH_REDIS_URL")  # fmt: skip
    if "champion" not in versions:
        fail(
            f"no {name}@champion in the MLflow registry",
            "run `hearth run` first: it trains and registers a champion",
        )
    served = ", ".join(f"{variant} v{version}" for variant, version in versions.items())
    console.print(f"{name}: {served} (the rollout state)")
    return versions


def _bento_models(ctx: HearthContext) -> list[Any]:
    from hearth.serving import packaging  # lazy: pandas, see the module docstring

    name = ctx.params.registry.model_name
    versions = _served(ctx)
    console.print(f"importing {name} from the MLflow registry into {ctx.settings.bentoml_home}")
    imported = packaging.import_models(ctx.settings, name, versions)
    for m in imported:
        state = "imported" if m.created else "already in the store"
        console.print(f"  {m.alias:<10} v{m.version} {m.tag} ({state}, data {m.data_version})")
    return imported


def _serving_store(ctx: HearthContext) -> None:
    # lazy: pandas, see the module docstring
    from hearth.features.store import MaterializeError, StoreError, materialize, open_store

    s = ctx.settings
    try:
        store = open_store(s)
        try:
            if store.count():
                return
            console.print(f"the {s.store_backend} online store is empty: materialising it")
            report = materialize(store, s.processed_dir)
        finally:
            store.close()
    except MaterializeError as exc:
        console.print(f"[yellow]warning:[/] {exc}; every customer will be a cold start")
        return
    except StoreError as exc:
        fail(str(exc), "check HEARTH_STORE_BACKEND / HEARTH_REDIS_URL")
    console.print(f"  {report.customers:,} customers in {report.seconds:.1f}s")


@commands.command()
def serve(
    topology: Annotated[
        str, typer.Option(help="monolith (one process) or microservices (gateway+features+model).")
    ] = "monolith",
    port: Annotated[int | None, typer.Option(help="Gateway port (default: Settings).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface (default: Settings).")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Serving processes (the monolith, or the microservices' gateway) sharing the "
            "port, the stores and the rollout state (default: one per core); more than one "
            "keep their threads on a core each (HEARTH_SERVE_PIN_WORKERS=false: not).",
        ),
    ] = None,
) -> None:
    """Serve the fraud API in the foreground (adopts the champion and fills the store first)."""
    if topology not in TOPOLOGIES:
        fail(f"unknown topology {topology!r}", f"choose from {', '.join(TOPOLOGIES)}")
    n_workers = workers or default_workers()
    ctx = load_context()
    s = ctx.settings
    # No development default secret serves beyond loopback (before any slow work).
    if problem := s.bind_problem(host or s.serving_host):
        fail(problem)
    _served(ctx)
    _serving_store(ctx)
    # `bentoml serve` with its metrics directory under HEARTH_HOME (hearth.launch.bentoml_main)
    cmd = [
        sys.executable, "-m", "hearth.launch.bentoml_main", str(multiproc_dir(s)),
        "serve", TOPOLOGIES[topology],
        "--host", host or s.serving_host, "--port", str(port or s.serving_port),
        "--working-dir", str(project_root()),
    ]  # fmt: skip
    # The services read their number of workers from it (bentos/monolith.py, gateway.py).
    os.environ[WORKERS_ENV] = str(n_workers)
    # Each worker listens on its own socket (SO_REUSEPORT, hearth.launch.bentoml_main), so
    # the kernel, not the first worker to wake, spreads a burst of connections over them.
    where = f"http://{host or s.serving_host}:{port or s.serving_port}"
    plural = "s" if n_workers > 1 else ""
    console.print(f"serving {topology} on {where} ({n_workers} worker{plural})")
    if hint := queued_connections_hint(n_workers):
        console.print(f"[dim]hint: {hint}[/dim]")
    sys.stderr.flush()
    # exec: signals sent to this process (Ctrl-C, a supervisor's SIGTERM) reach BentoML.
    os.execv(sys.executable, cmd)


@commands.command()
def build(bento: BentoOption = None) -> None:
    """Import the versions that serve into the BentoML store and build the bentos."""
    from hearth.serving import packaging  # lazy: pandas, see the module docstring

    ctx = load_context()
    names = choose(bento, list(packaging.BENTOS), "bento")
    imported = _bento_models(ctx)
    root = project_root()
    built = packaging.build_bentos(
        imported, root, names, progress=lambda n: console.print(f"building {n} …")
    )
    for tag in built.values():
        lines = packaging.dockerfile(tag).splitlines()
        base = next((line for line in lines if line.startswith("FROM")), "")
        console.print(f"[green]✓[/] {tag}  {base}".rstrip())
    console.print(f"bentos in {ctx.settings.bentoml_home}; images: `hearth containerize`")
