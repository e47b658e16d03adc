"""`hearth bench`: the serving benchmark (hearth.bench) from the command line.

The benchmark runner is imported inside the command: it loads pandas and httpx, which the other
commands should not pay for at start-up.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from hearth.bench import bench_report
from hearth.cli._common import console, fail, load_context
from hearth.config import project_root

commands = typer.Typer()


@commands.command(
    epilog="Serves the registered champion (run `hearth run` first) from real servers on "
    "loopback and writes reports/bench.md (latency, throughput, CPU, memory, ratios, hop cost, "
    "batching, wrk's cross-check, rollback under load, targets, verdict), bench.json and two "
    "plots. The full run is `make bench` (~12 min on 2 cores); its servers stop even when the "
    "bench is interrupted."
)
def bench(
    quick: Annotated[
        bool, typer.Option(help="Smoke run (< 2 min): fewer contenders, levels and requests.")
    ] = False,
    contender: Annotated[
        list[str] | None,
        typer.Option(
            help="Contender to run (repeatable): model, echo, mlflow, bentoml, monolith, "
            "microservices, monolith-w2 (the monolith, --workers 2), model-batched, "
            "model-unbatched."
        ),
    ] = None,
    concurrency: Annotated[
        list[int] | None, typer.Option(help="Concurrency level (repeatable; default 1 8 32 128).")
    ] = None,
    requests: Annotated[
        int | None,
        typer.Option(
            help="Requests per contender and level (all rounds); default 1500, and the long "
            "cells: at c=1 10 000 or 40 s, at c=32 20 000 or 20 s, whichever comes first."
        ),
    ] = None,
    wrk_seconds: Annotated[
        float | None,
        typer.Option(
            help="Seconds of the wrk cross-check per server contender (0: none; "
            "default 10, --quick 1); skipped when wrk is not installed."
        ),
    ] = None,
    wrk_concurrency: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Connections of the wrk cross-check (default 1; e.g. 32 to compare "
            "monolith and monolith-w2 with a load generator lighter than the bench's own).",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Report directory (default: reports/).")] = None,
    code: Annotated[
        Path | None, typer.Option(help="Checkout whose serving code runs (default: this one).")
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(help="Another checkout: its Hearth contenders run too (before/after)."),
    ] = None,
    rollback: Annotated[
        bool,
        typer.Option(
            help="Also time `hearth rollback` under load on each Hearth topology chosen "
            "(--quick: the monolith only), on a copy of the registry; adds ~30 s per topology."
        ),
    ] = True,
) -> None:
    """Monolith vs microservices vs mlflow models serve vs plain BentoML, side by side."""
    from hearth.bench.run import BenchConfig, Progress, run_bench  # lazy: see the docstring

    ctx = load_context()
    config = (BenchConfig.quick() if quick else BenchConfig()).choose(
        contenders=contender,
        levels=concurrency,
        requests=requests,
        wrk_s=wrk_seconds,
        wrk_concurrency=wrk_concurrency,
        baseline=baseline,
        rollback=rollback,
    )
    console.print(f"hearth bench: {', '.join(config.contenders)} at c={list(config.levels)}")
    try:
        root = code.resolve() if code else project_root()
        with _sigterm_as_exit():  # a killed bench still stops the servers it started
            data = run_bench(config, ctx.settings, root, Progress(console.print))
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as exc:
        fail(str(exc), "run `hearth run` first: the benchmark serves the registered champion")
    for path in bench_report.write(data, out or ctx.settings.reports_dir):
        console.print(f"[green]✓[/] {path}")


@commands.command(
    epilog="Starts the monolith on loopback (a fresh home, this project's registry and data), "
    "measures its capacity closed loop, then sends a new transaction every 1/rate seconds "
    "(open loop) and prints p50/p99, errors and RSS per window. Passes with zero errors, the "
    "last window's p99 within 1.5x the first's and RSS growth under 10 %. Writes "
    "reports/soak.md, soak.json and soak.png; exits 1 when a criterion fails. `make soak` runs "
    "the full ten minutes."
)
def soak(
    duration: Annotated[float, typer.Option(help="Seconds at the constant rate.")] = 600.0,
    fraction: Annotated[
        float, typer.Option(help="The rate, as a fraction of the measured capacity.")
    ] = 0.8,
    window: Annotated[
        float | None,
        typer.Option(help="Seconds per reported window (default: 60, or half a short run)."),
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="A fixed rate in req/s (skips using the capacity).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Report directory (default: reports/).")] = None,
    clock: Annotated[
        str,
        typer.Option(
            help="How transactions are dated: 'data' replays the population at the data's own "
            "pace (each customer as often as in the data, after its last transaction); 'wall' "
            "uses the send time (every customer every few seconds: a stress of growing "
            "histories)."
        ),
    ] = "data",
) -> None:
    """Soak the monolith at 80 % of its measured capacity: errors, p99 drift, RSS growth."""
    from hearth.bench.soak import CLOCKS, SoakConfig, run_soak  # lazy: see the docstring
    from hearth.bench.soak_report import verdict_line, write

    ctx = load_context()
    # Under two minutes, the in-suite shape: two windows (halves), a shorter capacity run.
    short = window is None and duration < 120
    base = SoakConfig.short(duration) if short else SoakConfig(duration_s=duration)
    if clock not in CLOCKS:
        fail(f"--clock {clock!r} is not one of {', '.join(CLOCKS)}", "use --clock data or wall")
    config = replace(
        base, fraction=fraction, rate=rate, window_s=window or base.window_s, clock=clock
    )
    if rate:  # a fixed rate: the open-loop steps that find the capacity are not needed
        config = replace(config, probe_fractions=())
    console.print(
        f"hearth soak: the monolith for {duration:.0f} s, windows of {config.window_s:.0f} s"
    )
    try:
        with _sigterm_as_exit():  # a killed soak still stops its server
            data = run_soak(config, ctx.settings, project_root(), console.print)
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as exc:
        fail(str(exc), "run `hearth run` first: the soak serves the registered champion")
    for path in write(data, out or ctx.settings.reports_dir):
        console.print(f"[green]✓[/] {path}")
    console.print(verdict_line(data))
    if not data["passed"]:
        raise typer.Exit(1)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    """SIGTERM (`kill`, `timeout`, a CI runner) raises SystemExit here, so `finally` blocks
    run; Python's default would end the process at once and orphan its child servers."""

    def leave(signum: int, _: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
