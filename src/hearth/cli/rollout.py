"""`hearth rollout start|status|weight|promote|repair|report` and `hearth rollback`.

The rollout control and report modules are imported inside the commands: they load MLflow,
pandas and scipy (~5 s), which the other commands should not pay for at start-up. `hearth
rollback` imports none of them (`hearth.rollout.promotion` loads MLflow only to touch the
registry): it is one write to the rollout state and must answer in well under a second,
with MLflow up or down.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from hearth.cli._common import console, fail, load_context
from hearth.traffic.fleet import FleetStatus, ServingProcess
from hearth.traffic.rollout_state import (
    Decision,
    InvalidRollout,
    NoActiveRollout,
    RegistryError,
    RolloutConflict,
    StateUnavailable,
    UnknownVersion,
)
from hearth.traffic.stores import open_state_store

if TYPE_CHECKING:
    from hearth.config import Settings
    from hearth.params import Params
    from hearth.rollout.control import RolloutStatus

T = TypeVar("T")

commands = typer.Typer()
rollout_app = typer.Typer(
    help="Put a challenger in front of live traffic, watch it, promote it or roll it back.",
    no_args_is_help=True,
)

# A refused control operation → what to do next.
_HINTS: list[tuple[type[Exception], str]] = [
    (UnknownVersion, "list registered versions with `hearth ui mlflow`"),
    (RolloutConflict, "see it with `hearth rollout status`; end it with "
                      "`hearth rollout promote` or `hearth rollback`"),
    (NoActiveRollout, "start one: `hearth rollout start --challenger VERSION`"),
    (InvalidRollout, "see `hearth rollout --help` for the accepted values"),
    (StateUnavailable, "is the rollout state reachable? check HEARTH_DATABASE_URL "
                       "(PostgreSQL), or HEARTH_STORE_BACKEND / HEARTH_REDIS_URL"),
    (RegistryError, "is the MLflow server reachable? check HEARTH_MLFLOW_TRACKING_URI and "
                    "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"),
]  # fmt: skip


def _actor() -> str:
    return f"cli:{os.environ.get('USER', 'unknown')}"


def _rollout_call(fn: Callable[[], T]) -> T:
    """Run a control operation; a refusal becomes an error line and a hint what to do next."""
    try:
        return fn()
    except tuple(kind for kind, _ in _HINTS) as exc:
        hint = next(h for kind, h in _HINTS if isinstance(exc, kind))
        raise fail(str(exc), hint) from None


def _parse_steps(steps: str | None) -> list[float] | None:
    if steps is None:
        return None
    try:
        return [float(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        raise fail(
            f"--steps {steps!r} is not a list of numbers", "e.g. --steps 5,25,50,100"
        ) from None


@rollout_app.command("start")
def rollout_start(
    challenger: Annotated[
        str, typer.Option(help="The registered model version to put in front of traffic.")
    ],
    mode: Annotated[
        str | None,
        typer.Option(
            help="canary (steps), ab (fixed split) or shadow (copies only); "
            "default: params.yaml rollout.mode."
        ),
    ] = None,
    steps: Annotated[
        str | None, typer.Option(help="Canary steps in percent, e.g. 5,25,50,100.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why: recorded in the rollout's history.")] = "",
) -> None:
    """Start a rollout of a challenger version against the champion (serving follows live)."""
    from hearth.rollout import control  # lazy: MLflow, see the module docstring

    ctx = load_context()
    state = _rollout_call(
        lambda: control.start(
            ctx.settings, ctx.params, challenger, mode=mode, steps=_parse_steps(steps),
            actor=_actor(), reason=reason,
        )
    )  # fmt: skip
    console.print(
        f"[green]✓[/] rollout {state.rollout_id}: v{state.challenger_version} against champion "
        f"v{state.champion_version}, {state.mode} at {state.challenger_percent:g} % "
        f"(steps {' → '.join(f'{s:g}' for s in state.steps)})"
    )
    console.print("  watch it: `hearth rollout status`; end it: `hearth rollout promote` or "
                  "`hearth rollback`")  # fmt: skip


@rollout_app.command("status")
def rollout_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print the full status as JSON.")] = False,
) -> None:
    """Show the rollout: versions, traffic, live counts per variant and recent history."""
    from hearth.rollout import control  # lazy: MLflow, see the module docstring

    ctx = load_context()
    status = _rollout_call(lambda: control.status(ctx.settings, ctx.params))
    if as_json:
        typer.echo(status.model_dump_json(indent=2))
        return
    _print_rollout_status(status)


def _print_rollout_status(status: RolloutStatus) -> None:
    out = Console()
    r, served = status.rollout, status.served
    if r is None:
        out.print("no rollout yet; start one with `hearth rollout start --challenger VERSION`")
    else:
        out.print(
            f"[bold]rollout {r.rollout_id}[/]  {r.status}  {r.mode}  "
            f"v{r.challenger_version} vs champion v{r.champion_version}  "
            f"challenger {r.challenger_percent:g} %  step {r.step_index + 1}/"
            f"{len(r.steps)}  updated {r.updated_at.isoformat()}"
        )
    aliases = ", ".join(f"{k}=v{v}" for k, v in sorted(status.aliases.items())) or "none"
    if status.aliases_error:
        aliases = f"[yellow]unavailable[/] ({status.aliases_error})"
    out.print(f"registry aliases: {aliases}")
    out.print(f"served now: champion v{served.champion}" + (
        f", challenger v{served.challenger} ({served.mode}, "
        f"{served.challenger_percent:g} %)" if served.challenger else ""))  # fmt: skip
    if status.pending_repair:
        intent = status.pending_repair
        out.print(f"[yellow]the aliases of a {intent.action} are not written yet (MLflow did "
                  "not answer, or a crash): `hearth rollout repair` or the next rollout "
                  "command makes them[/]")  # fmt: skip
    if status.fleet is not None:
        _print_fleet(out, status.fleet)
    live = Table("variant", "requests", "errors", "labelled", "frauds", title="live (this rollout)")
    for variant, c in sorted(status.live.items()):
        live.add_row(variant, *(str(n) for n in (c.requests, c.errors, c.labelled, c.frauds)))
    out.print(live)
    events = Table("at", "actor", "action", "reason", title="history (latest)")
    for e in status.history:
        events.add_row(e.at.isoformat()[:19], e.actor, e.action, e.reason)
    out.print(events)


def _print_fleet(out: Console, fleet: FleetStatus) -> None:
    """How many serving processes reported within the window, each one, and the quiet ones."""
    window = f"{fleet.window_s:g} s"
    if fleet.error:
        out.print(f"serving processes: [yellow]unknown[/] ({fleet.error})")
        return
    out.print(f"serving processes: {len(fleet.live)} reported in the last {window}"
              + (f", [red]{len(fleet.quiet)} quiet[/]" if fleet.quiet else ""))  # fmt: skip
    for p in fleet.live:
        out.print(f"  {p.process:<24} {p.role:<8} {_versions(p)}  seen {p.age_s:g} s ago  "
                  f"home {p.home}", highlight=False)  # fmt: skip
    for p in fleet.quiet:
        out.print(f"  [red]quiet[/] {p.process} ({p.role}, home {p.home}): not heard from "
                  f"for {p.age_s:g} s, last seen {p.seen_at.isoformat()[:19]}",
                  highlight=False)  # fmt: skip


def _versions(process: ServingProcess) -> str:
    """`champion v1, challenger v2 (loading)`: what a process serves."""
    return (
        ", ".join(
            f"{variant} v{v.version}" + (" (loading)" if v.loaded is False else "")
            for variant, v in sorted(process.versions.items())
        )
        or "nothing yet"
    )


@rollout_app.command("weight")
def rollout_weight(
    percent: Annotated[float, typer.Argument(help="Challenger share of customers, 0-100.")],
    reason: Annotated[str, typer.Option(help="Why: recorded in the rollout's history.")] = "",
) -> None:
    """Set the challenger's traffic share by hand (sticky: raising it only adds customers)."""
    from hearth.rollout import control  # lazy: MLflow, see the module docstring

    ctx = load_context()
    state = _rollout_call(
        lambda: control.set_weight(ctx.settings, ctx.params, percent, _actor(), reason)
    )
    console.print(
        f"[green]✓[/] rollout {state.rollout_id}: challenger v{state.challenger_version} "
        f"now at {state.challenger_percent:g} %"
    )


@rollout_app.command("promote")
def rollout_promote(
    reason: Annotated[str, typer.Option(help="Why: recorded in the rollout's history.")] = "",
) -> None:
    """Make the challenger the champion now (the old champion is kept as `previous`)."""
    from hearth.rollout import control  # lazy: MLflow, see the module docstring

    ctx = load_context()
    change = _rollout_call(
        lambda: control.promote(ctx.settings, ctx.params, Decision(_actor(), reason))
    )
    console.print(f"[green]✓[/] promoted: aliases {change.before} → {change.after}"
                  + _pending(change.aliases))  # fmt: skip
    champion = change.after.get("champion", "N")
    console.print(f"  undo with `hearth rollback --to-previous --expect-champion {champion}`")


def _pending(aliases: str) -> str:
    if aliases != "pending":
        return ""
    return (" [yellow](MLflow did not answer: the aliases follow at `hearth rollout repair` "
            "or the next rollout command)[/]")  # fmt: skip


@rollout_app.command("repair")
def rollout_repair() -> None:
    """Make the MLflow aliases follow the rollout state: finish the alias writes of a
    promotion or rollback that MLflow did not take (it was down, or a crash)."""
    from hearth.rollout import promotion  # lazy: MLflow, see the module docstring

    ctx = load_context()
    change = _rollout_call(lambda: promotion.repair(ctx.settings, ctx.params))
    if change is None:
        console.print("[green]✓[/] the aliases already follow the rollout state")
    else:
        console.print(f"[green]✓[/] {change.action}: aliases {change.before} → {change.after}")


@rollout_app.command("report")
def rollout_report(
    rollout_id: Annotated[
        str | None, typer.Argument(help="The rollout (default: the current or latest one).")
    ] = None,
) -> None:
    """Write a rollout's report (Markdown + PNG: traffic, metrics and verdict per analysis
    round) from its history, under HEARTH_HOME/reports/rollouts/<rollout_id>/."""
    from hearth.rollout import flow_steps  # lazy: scipy, see the module docstring

    ctx = load_context()
    if rollout_id is None:
        store = open_state_store(ctx.settings)
        try:
            current = store.current()
        finally:
            store.close()
        if current is None:
            fail("there has been no rollout yet", "start one with `hearth rollout start`")
        rollout_id = current.rollout_id
    try:
        written = flow_steps.write_report(ctx.settings, rollout_id)
    except KeyError as exc:
        fail(str(exc), "`hearth rollout status` names the current rollout")
    console.print(f"[green]✓[/] rollout {rollout_id} ({written.state.status}): {written.markdown}")
    console.print(f"  chart: {written.png}")


@commands.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why: recorded in the rollout's history.")] = "",
    to_previous: Annotated[
        bool,
        typer.Option(
            "--to-previous",
            help="Instead: undo the last promotion, making the `previous` version the "
            "champion again (needs --expect-champion and MLflow).",
        ),
    ] = False,
    expect_champion: Annotated[
        str | None,
        typer.Option(
            help="With --to-previous: the champion version you mean to replace; refused if "
            "it is no longer the champion."
        ),
    ] = None,
) -> None:
    """Roll back now: end the running rollout (all traffic to the champion within a second;
    works with MLflow down, the aliases follow when it answers). With no rollout running it
    changes nothing and says so, so running it twice is safe. To undo a promotion, use
    `--to-previous --expect-champion N`."""

    ctx = load_context()
    decision = Decision(_actor(), reason)
    if to_previous:
        if expect_champion is None:
            fail("--to-previous needs --expect-champion VERSION",
                 "the champion you mean to replace: see `hearth rollout status`")  # fmt: skip
        _rollback_to_previous(ctx.settings, ctx.params, expect_champion, decision)
        return
    if expect_champion is not None:
        fail("--expect-champion goes with --to-previous")
    from hearth.rollout import promotion  # lazy; imports no MLflow (see the module docstring)

    ended = _rollout_call(lambda: promotion.rollback(ctx.settings, ctx.params, decision))
    if not ended.changed:
        console.print(f"[green]✓[/] {ended.message}")
        console.print("  to undo a promotion: `hearth rollback --to-previous "
                      f"--expect-champion {ended.champion or 'N'}`")  # fmt: skip
        return
    console.print(f"[green]✓[/] {ended.message}")
    console.print("  the `challenger` alias is dropped at `hearth rollout repair` or the next "
                  "rollout command (MLflow is not needed for the rollback itself)")  # fmt: skip


def _rollback_to_previous(
    settings: Settings, params: Params, expect_champion: str, decision: Decision
) -> None:
    from hearth.rollout import promotion  # lazy: MLflow, see the module docstring

    change = _rollout_call(
        lambda: promotion.rollback_to_previous(settings, params, expect_champion, decision)
    )
    console.print(f"[green]✓[/] {change.reason}; aliases {change.before} → {change.after}"
                  + _pending(change.aliases))  # fmt: skip
