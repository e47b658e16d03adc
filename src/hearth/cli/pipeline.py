"""The pipeline: `hearth data generate`, `etl`, `validate`, `train` (each a DVC stage, see
dvc.yaml) and `hearth run`, the main job.

Steps and flows (run by entrypoint) are loaded inside their command: they load pandas (~1.5 s),
and where used Great Expectations, torch, MLflow and Prefect (~8 s), which no other command
should pay for at start-up.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer

from hearth.cli._common import choose, console, fail, load_context, progress_bar
from hearth.config import HearthContext
from hearth.params import ConfigError

commands = typer.Typer()
data_app = typer.Typer(help="Raw data: generate synthetic daily drops.", no_args_is_help=True)

# `hearth train` and `hearth run` read the same experiment file.
ExperimentOption = Annotated[
    Path | None, typer.Option(help="Experiment YAML (default: params.yaml train.experiment).")
]


# -- data ----------------------------------------------------------------------------------
@data_app.command("generate")
def data_generate(
    days: Annotated[int | None, typer.Option(help="Days of drops (default: params.yaml).")] = None,
    customers: Annotated[int | None, typer.Option(help="Number of customers.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed; same seed, same files.")] = None,
    drift: Annotated[
        str, typer.Option(help="none | spending | fraud-pattern: a shifted later period.")
    ] = "none",
    start_date: Annotated[
        str | None, typer.Option(help="First day, YYYY-MM-DD (default: params.yaml).")
    ] = None,
) -> None:
    """Write synthetic daily transaction drops (dirty, like real ones) into data/raw/."""
    from hearth import steps  # lazy: pandas, see the module docstring

    ctx = load_context()
    overrides = {k: v for k, v in {"days": days, "customers": customers, "seed": seed}.items() if v}
    try:
        first_day = date.fromisoformat(start_date) if start_date else None
    except ValueError:
        fail(f"--start-date {start_date!r} is not a date", "use YYYY-MM-DD, e.g. 2026-02-01")
    with progress_bar() as progress:
        bar = progress.add_task("generating drops", total=None)

        def on_day(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total)

        try:
            report = steps.generate_data(
                ctx, overrides=overrides, drift=drift, start_date=first_day, progress=on_day
            )
        except ValueError as exc:
            fail(str(exc))
    console.print(
        f"[green]✓[/] {report.transactions:,} transactions in {report.days} drops "
        f"({report.fraud:,} fraud, {report.dirty_rows:,} dirty rows) → {ctx.settings.raw_dir}"
    )


# -- steps (DVC stages) --------------------------------------------------------------------
@commands.command()
def etl() -> None:
    """Clean, dedupe and featurise data/raw/ into data/processed/; bad rows → data/quarantine/."""
    # lazy: pandas, see the module docstring
    from hearth import steps
    from hearth.data.etl import EtlError

    ctx = load_context()
    try:
        report = steps.etl(ctx)
    except EtlError as exc:
        fail(str(exc))
    console.print(
        f"[green]✓[/] {report.rows_clean:,} clean rows, {report.rows_quarantined:,} quarantined "
        f"{dict(report.quarantine_reasons) if report.quarantine_reasons else ''}"
    )
    for split, rows in report.split_rows.items():
        console.print(f"  {split:<5} {rows:>9,} rows  fraud rate {report.fraud_rate[split]:.2%}")


@commands.command()
def validate(
    suite: Annotated[
        list[str] | None, typer.Option(help="Suite to run: raw, processed (default: both).")
    ] = None,
) -> None:
    """Run the Great Expectations gate; exits non-zero naming every failed expectation."""
    # lazy: Great Expectations, see the module docstring
    from hearth import steps
    from hearth.validation import ValidationFailed

    ctx = load_context()
    runners = {"raw": steps.validate_raw, "processed": steps.validate_processed}
    results = [runners[name](ctx) for name in choose(suite, list(runners), "suite")]
    summary = steps.record_validation(ctx, results)
    try:
        steps.gate(results)
    except ValidationFailed as exc:
        fail(str(exc), "inspect the Data Docs, fix or quarantine the drop, then re-run")
    console.print(f"[green]✓[/] {summary}")
    for r in results:
        if r.docs_index:
            console.print(f"  Data Docs: {r.docs_index}")


@commands.command()
def train(
    experiment: ExperimentOption = None,
    register: Annotated[
        bool, typer.Option(help="Register the best run and apply the champion gate.")
    ] = True,
    dask: Annotated[
        bool,
        typer.Option(
            "--dask",
            help="Run it as the train flow: the variants in parallel on Dask (the scheduler "
            "at HEARTH_DASK_ADDRESS, else a local cluster), each a Prefect task run. Without "
            "it, one after another in this process.",
        ),
    ] = False,
) -> None:
    """Train the experiment's runs (logged to MLflow) and register the best one."""
    from hearth import steps  # lazy: pandas, see the module docstring

    ctx = load_context()
    try:
        plan = steps.plan_training(ctx, experiment)
    except ConfigError as exc:
        fail(str(exc))
    if dask:
        # lazy: Prefect and Dask load only for the runs that use them
        from hearth.stack.entrypoints import TRAIN, run_flow

        summary = run_flow(TRAIN, experiment=str(plan.experiment_file), register_model=register)
        _print_run(summary.best)
        if summary.registration is not None:
            _print_decision(summary.registration)
        return
    lineage = steps.lineage_for(ctx, plan.experiment_file, steps.recorded_validation(ctx))
    with steps.sweep_parent(ctx, plan) as parent:
        runs = [
            steps.train_run(ctx, name, config, plan.experiment.name, lineage, parent)
            for name, config in plan.runs
        ]
    best = steps.best_run(runs)
    _print_run(best)
    if register:
        _print_decision(steps.register(ctx, best))


def _print_run(run: Any) -> None:
    m = run.test_metrics
    console.print(
        f"[green]✓[/] run {run.run_name} ({run.run_id[:8]}) on {run.device} in {run.seconds:.1f}s: "
        f"test PR-AUC {m.get('pr_auc', float('nan')):.3f} vs fraud rate "
        f"{m.get('fraud_rate', float('nan')):.3%} (chance), ROC-AUC {m.get('roc_auc', 0):.3f}"
    )


def _print_decision(decision: Any) -> None:
    alias = f"alias [bold]{decision.alias}[/]" if decision.alias else "[yellow]no alias[/]"
    console.print(f"[green]✓[/] registered version {decision.version}: {alias} — {decision.reason}")


# -- the main job --------------------------------------------------------------------------
@commands.command()
def run(
    experiment: ExperimentOption = None,
    rollout: Annotated[
        bool,
        typer.Option(
            help="Go on after the first champion: drifted period, challenger, canary with "
            "live traffic, broken-model drill (--no-rollout: stop after registering)."
        ),
    ] = True,
) -> None:
    """The main job: (generate) → raw gate → ETL → feature gate → train → register, then
    drift → retrain → canary rollout on replayed traffic → drill rollback."""
    # lazy: Prefect and the whole pipeline, see the module docstring
    from hearth.demo.closed_loop import DriftedPeriodRejected
    from hearth.demo.summary_lines import closed_loop_lines, pipeline_lines
    from hearth.stack.entrypoints import MAIN_JOB, run_flow
    from hearth.validation import ValidationFailed

    ctx = load_context()
    try:
        summary = run_flow(
            MAIN_JOB, experiment=str(experiment) if experiment else None, closed_loop=rollout
        )
    except DriftedPeriodRejected as exc:
        fail(str(exc), "the drifted period failed a data gate; the champion still serves")
    except ValidationFailed as exc:
        fail(str(exc), "the registry is untouched; fix the data and run again")
    console.rule("[bold]Hearth: main job done")
    console.print("\n".join(pipeline_lines(ctx.params, summary.pipeline)) + "\n")
    _print_where_to_look(ctx)
    if summary.closed_loop is not None:
        console.rule("[bold]Hearth: closed loop done")
        for line in closed_loop_lines(ctx.params, summary.closed_loop):
            console.print(line, highlight=False)


def _print_where_to_look(ctx: HearthContext) -> None:
    s = ctx.settings
    console.print("[bold]Where to look[/]")
    console.print(f"  MLflow UI   hearth ui mlflow   (store: {s.mlflow_uri})")
    console.print(f"  Prefect UI  hearth ui prefect  (PREFECT_HOME={s.prefect_home})")
    console.print(f"  Data Docs   {s.data_docs_dir}/index.html")
    console.print(f"  data        {s.raw_dir}  {s.processed_dir}  {s.quarantine_dir}")
    console.print(f"  reports     {s.reports_dir}/*.json")
