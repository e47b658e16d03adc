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
        str, typer.Option(help="Serving topology: monolith or microservices.")
    ] = "monolith",
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
) -> None:
    """Start Prefect (server, work pool, deployments, worker), MLflow and serving; print URLs."""
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
            "or delete those lines for a local stack",
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
    """Stop exactly what `hearth up` started (its pid file under HEARTH_HOME)."""
    from hearth.stack.supervisor import down as stack_down  # lazy: httpx, see the docstring

    stopped = stack_down(load_context().settings.home_abs, say=console.print)
    console.print(f"[green]✓[/] stopped {len(stopped)} service(s)" if stopped else "nothing runs")


@commands.command()
def ps() -> None:
    """What `hearth up` started: running or not, healthy or not."""
    from hearth.stack.supervisor import ps as stack_ps  # lazy: httpx, see the docstring

    statuses = stack_ps(load_context().settings.home_abs)
    if not statuses:
        typer.echo("nothing started by `hearth up` runs")
        return
    for st in statuses:
        state = "healthy" if st.healthy else ("UNHEALTHY" if st.running else "STOPPED")
        typer.echo(f"{st.name:<15} {st.pid:>7} {state:<9} {st.url or '-':<28} {st.detail}")
    if not all(st.healthy for st in statuses):
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
