"""The stack: `hearth up`, `hearth ps`, `hearth down`, and `hearth monitor` (drift).

The stack's process handling (httpx) and the monitor flow (Prefect, ~8 s) are imported inside
the commands, so that the other commands do not pay for them at start-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from hearth.cli._common import console, fail, load_context
from hearth.config import project_root
from hearth.launch.topologies import TOPOLOGIES
from hearth.secrets_file import (
    ensure_secrets,
    read_secrets,
    record_shared,
    secrets_path,
    shared_variables,
)

commands = typer.Typer()


@commands.command()
def up(
    topology: Annotated[
        str | None,
        typer.Option(
            help="Serving topology: monolith or microservices (default: monolith; with "
            "--containers, microservices)."
        ),
    ] = None,
    serve: Annotated[
        bool, typer.Option(help="Start the serving stack too (needs a registered champion).")
    ] = True,
    shared: Annotated[
        bool,
        typer.Option(
            "--shared",
            help="Shared state for several machines: start PostgreSQL and Redis too (unless "
            "HEARTH_DATABASE_URL / HEARTH_REDIS_URL name others) and put Hearth, MLflow and "
            "Prefect on them; writes HEARTH_HOME/join.env for `--join`.",
        ),
    ] = False,
    join: Annotated[
        Path | None,
        typer.Option(
            "--join",
            help="On another machine: the join.env of a `hearth up --shared` (copy it over); "
            "starts only serving and a Prefect worker, on that stack's servers.",
        ),
    ] = None,
    pool: Annotated[
        str,
        typer.Option(
            help="The work pool of this machine's Prefect worker (hearth-gpu on a "
            "machine with a GPU: its deployments then run there)."
        ),
    ] = "hearth-process",
    containers: Annotated[
        bool,
        typer.Option(
            "--containers",
            help="Run the stack as containers (deploy/compose.yaml on the local Docker engine, "
            "from the images of `hearth images base` and `hearth containerize`): PostgreSQL, "
            "Redis, MLflow, Prefect's server and worker, and serving; waits for their health "
            "checks and writes HEARTH_HOME/compose.env (mode 0600).",
        ),
    ] = False,
    gpu: Annotated[
        bool,
        typer.Option(
            "--gpu",
            help="With --containers: the model service with a GPU reserved (needs the "
            "NVIDIA container toolkit).",
        ),
    ] = False,
) -> None:
    """Start Prefect (server, work pool, deployments, worker), MLflow and serving; print URLs."""
    if containers:
        if shared or join is not None:
            fail("--containers runs its own PostgreSQL and Redis: not with --shared or --join")
        _up_containers(topology or "microservices", serve=serve, gpu=gpu)
        return
    if gpu:
        fail("--gpu is for --containers (`hearth serve` uses a GPU whenever torch sees one)")
    topology = topology or "monolith"
    # lazy: httpx, see the module docstring
    from hearth.stack import shared as shared_stack
    from hearth.stack.process import StackError
    from hearth.stack.services import WORK_POOLS, Stack
    from hearth.stack.supervisor import up as stack_up

    if topology not in TOPOLOGIES:
        fail(f"unknown topology {topology!r}", f"choose from {', '.join(TOPOLOGIES)}")
    if shared and join is not None:
        fail("--shared starts the shared servers, --join uses another machine's: choose one")
    _secrets()  # before Settings: they read the file (and production requires real secrets)
    if join is not None:
        try:
            values = shared_stack.read_join_file(join)
        except StackError as exc:
            fail(str(exc))
        path = record_shared(secrets_path().parent, values)
        console.print(f"joining: the servers and secrets of {join} recorded in {path}")
    recorded = [v for v in shared_variables() if v in read_secrets(secrets_path())]
    if recorded and not (shared or join):
        fail(
            f"this home runs on a shared stack's servers ({', '.join(recorded)} in "
            f"{secrets_path()})",
            "`hearth up --shared` (the first machine), `hearth up --join FILE` (another one), "
            "`hearth up --containers` (recorded by it; `hearth down` forgets them), or delete "
            "those lines for a local stack",
        )
    ctx = load_context()
    mode: Literal["local", "shared", "join"] = (
        "join" if join is not None else ("shared" if shared else "local")
    )
    if pool not in WORK_POOLS:
        fail(f"unknown work pool {pool!r}", f"choose from {', '.join(WORK_POOLS)}")
    stack = Stack(ctx.settings, topology, project_root(), mode=mode, pool=pool)
    if serve and (problem := ctx.settings.bind_problem(ctx.settings.serving_host)):
        fail(problem)
    for line in stack.auth_notes() if mode != "join" else []:
        console.print(line)
    try:
        started = stack_up(stack, serve=serve, say=console.print)
    except StackError as exc:
        fail(str(exc), "`hearth ps` shows what did start; `hearth down` stops it")
    console.rule("[bold]Hearth is up")
    for r in started:
        console.print(f"  {r.name:<15} {r.url or '(no UI)':<28} log {r.log}")
    console.print("stop it with `hearth down`; check it with `hearth ps`")


def _up_containers(topology: str, serve: bool, gpu: bool) -> None:
    # lazy: the container module runs docker-compose, see the module docstring
    from hearth.stack import compose
    from hearth.stack.process import StackError

    if topology not in TOPOLOGIES:
        fail(f"unknown topology {topology!r}", f"choose from {', '.join(TOPOLOGIES)}")
    _secrets()
    settings = load_context().settings
    stack = compose.ContainerStack(settings, project_root(), compose.images())
    try:
        states = compose.up(stack, topology, serve=serve, gpu=gpu, say=console.print)
    except StackError as exc:
        champion = (
            "; serving needs a registered champion: `hearth up --containers --no-serve`, then "
            "`hearth run --no-rollout` here (it uses the containers' servers), then `hearth up "
            "--containers`"
        )
        fail(
            str(exc),
            "`hearth ps` shows the containers, `hearth down` takes them down"
            + (champion if serve else ""),
        )
    console.rule("[bold]Hearth is up (containers)")
    for name, url in stack.urls(topology if serve else None).items():
        console.print(f"  {name:<15} {url}")
    console.print(f"  {len(states)} containers healthy (project {stack.project}); stop them "
                  "with `hearth down` (the data volumes stay)")  # fmt: skip


@commands.command("secrets")
def secrets_() -> None:
    """Write random secrets into HEARTH_HOME/secrets.env (mode 0600) unless there; say where."""
    _secrets()


def _secrets() -> None:
    path, made = ensure_secrets()
    if made:
        console.print(f"secrets: generated {', '.join(made)} into {path} (mode 0600)")
    else:
        console.print(f"secrets: {path} (reused)")
    console.print(
        f"  the environment and .env override them; for your shell or clients: "
        f"`set -a; . {path}; set +a`"
    )


@commands.command()
def down() -> None:
    """Stop exactly what `hearth up` started (its pid file under HEARTH_HOME; its containers,
    keeping their data volumes)."""
    # lazy: httpx and docker-compose, see the module docstring
    from hearth.stack import compose
    from hearth.stack.process import StackError
    from hearth.stack.supervisor import down as stack_down

    settings = load_context().settings
    stopped = stack_down(settings.home_abs, say=console.print)
    try:
        stopped += compose.down(settings, project_root(), say=console.print)
    except StackError as exc:
        fail(str(exc))
    console.print(f"[green]✓[/] stopped {len(stopped)} service(s)" if stopped else "nothing runs")


@commands.command()
def ps() -> None:
    """What `hearth up` started: running or not, healthy or not."""
    # lazy: httpx and docker-compose, see the module docstring
    from hearth.stack import compose
    from hearth.stack.supervisor import ps as stack_ps

    settings = load_context().settings
    statuses = stack_ps(settings.home_abs)
    boxes = compose.ps(settings, project_root())
    if not statuses and not boxes:
        typer.echo("nothing started by `hearth up` runs")
        return
    for st in statuses:
        state = "healthy" if st.healthy else ("UNHEALTHY" if st.running else "STOPPED")
        typer.echo(f"{st.name:<15} {st.pid:>7} {state:<9} {st.url or '-':<28} {st.detail}")
    for box in boxes:
        state = "healthy" if box.healthy else box.health or box.status
        typer.echo(f"{box.service:<15} {box.id:>12} {state:<9} (container)")
    if not all(st.healthy for st in statuses) or not all(b.healthy for b in boxes):
        raise typer.Exit(code=1)


@commands.command()
def monitor(
    trigger: Annotated[
        bool, typer.Option(help="Start the retraining deployment when drift calls for it.")
    ] = True,
) -> None:
    """Drift report of recent live traffic vs the training reference (flows/monitor.py)."""
    # lazy: Prefect, see the module docstring
    from hearth.stack.entrypoints import MONITOR, run_flow

    load_context()
    result = run_flow(MONITOR, trigger_retraining=trigger)
    console.print(
        f"drift: {'retrain' if result.report.retrain else 'no action'}; "
        f"report {result.markdown_path}"
    )
    if result.trigger_error:
        console.print(f"[yellow]retraining not started:[/] {result.trigger_error}")
