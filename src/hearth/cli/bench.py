"""`hearth bench`: the serving benchmark (hearth.bench) from the command line.

The benchmark runner is imported inside the command: it loads pandas and httpx, which the other
commands should not pay for at start-up.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
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
    "batching, rollback under load, targets, verdict), bench.json and two plots. The full run "
    "is `make bench` (~5 min on 2 cores); its servers stop even when the bench is interrupted."
)
def bench(
    quick: Annotated[
        bool, typer.Option(help="Smoke run (< 2 min): fewer contenders, levels and requests.")
    ] = False,
    contender: Annotated[
        list[str] | None,
        typer.Option(
            help="Contender to run (repeatable): model, echo, mlflow, bentoml, monolith, "
            "microservices, model-batched, model-unbatched."
        ),
    ] = None,
    concurrency: Annotated[
        list[int] | None, typer.Option(help="Concurrency level (repeatable; default 1 8 32 128).")
    ] = None,
    requests: Annotated[
        int | None, typer.Option(help="Requests per contender and level (all rounds).")
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
