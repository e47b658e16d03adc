"""`hearth …`: the command line. Each step command is also a DVC stage (see dvc.yaml)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from hearth.config import ConfigError, HearthContext

app = typer.Typer(
    name="hearth",
    help="Hearth: generate → ETL → validate → train → register, on your own hardware.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Raw data: generate synthetic daily drops.", no_args_is_help=True)
ui_app = typer.Typer(help="Open the Prefect or MLflow UI on Hearth's state.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(ui_app, name="ui")
features_app = typer.Typer(
    help="Online feature store: fill it from data/processed/, inspect a customer.",
    no_args_is_help=True,
)
app.add_typer(features_app, name="features")

console = Console(stderr=True)


def _context() -> HearthContext:
    try:
        ctx = HearthContext()
        ctx.params  # noqa: B018 - validate params.yaml now, not halfway through a step
    except (ConfigError, ValueError) as exc:
        _fail(f"configuration error: {exc}")
    ctx.settings.apply()
    return ctx


def _fail(message: str, hint: str | None = None) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}")
    if hint:
        console.print(f"[yellow]hint:[/] {hint}")
    raise typer.Exit(code=1)


def _setup_logging(verbose: bool) -> None:
    json_lines = _log_format() == "json"
    # JSON lines (HEARTH_LOG_FORMAT=json, as `hearth up` runs its children) go to a plain
    # stream: Rich would wrap each object in columns and break it over lines.
    handler = (
        logging.StreamHandler()
        if json_lines
        else RichHandler(console=console, show_path=False, rich_tracebacks=True)
    )
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        datefmt="%H:%M:%S",
        handlers=[handler],
        force=True,
    )
    if json_lines:
        from hearth.config import Settings
        from hearth.observability.logging import configure_logging

        configure_logging(Settings(log_format="json"))
    for noisy in ("alembic", "urllib3", "mlflow.store", "great_expectations", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _log_format() -> str:
    """HEARTH_LOG_FORMAT from the environment or .env; text when Settings cannot load (the
    command then reports why)."""
    from hearth.config import Settings

    try:
        return Settings().log_format
    except ValueError:
        return "text"


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    _setup_logging(verbose)


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
    from hearth import steps

    ctx = _context()
    overrides = {k: v for k, v in {"days": days, "customers": customers, "seed": seed}.items() if v}
    try:
        first_day = date.fromisoformat(start_date) if start_date else None
    except ValueError:
        _fail(f"--start-date {start_date!r} is not a date", "use YYYY-MM-DD, e.g. 2026-02-01")
    with _progress() as progress:
        bar = progress.add_task("generating drops", total=None)

        def on_day(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total)

        try:
            report = steps.generate_data(
                ctx, overrides=overrides, drift=drift, start_date=first_day, progress=on_day
            )
        except ValueError as exc:
            _fail(str(exc))
    console.print(
        f"[green]✓[/] {report.transactions:,} transactions in {report.days} drops "
        f"({report.fraud:,} fraud, {report.dirty_rows:,} dirty rows) → {ctx.settings.raw_dir}"
    )


def _progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


# -- steps (DVC stages) --------------------------------------------------------------------
@app.command()
def etl() -> None:
    """Clean, dedupe and featurise data/raw/ into data/processed/; bad rows → data/quarantine/."""
    from hearth import steps
    from hearth.data.etl import EtlError

    ctx = _context()
    try:
        report = steps.etl(ctx)
    except EtlError as exc:
        _fail(str(exc))
    console.print(
        f"[green]✓[/] {report.rows_clean:,} clean rows, {report.rows_quarantined:,} quarantined "
        f"{dict(report.quarantine_reasons) if report.quarantine_reasons else ''}"
    )
    for split, rows in report.split_rows.items():
        console.print(f"  {split:<5} {rows:>9,} rows  fraud rate {report.fraud_rate[split]:.2%}")


@app.command()
def validate(
    suite: Annotated[
        list[str] | None, typer.Option(help="Suite to run: raw, processed (default: both).")
    ] = None,
) -> None:
    """Run the Great Expectations gate; exits non-zero naming every failed expectation."""
    from hearth import steps
    from hearth.validation import ValidationFailed

    ctx = _context()
    chosen = suite or ["raw", "processed"]
    unknown = set(chosen) - {"raw", "processed"}
    if unknown:
        _fail(f"unknown suite(s) {sorted(unknown)}", "choose from raw, processed")
    runners = {"raw": steps.validate_raw, "processed": steps.validate_processed}
    results = [runners[name](ctx) for name in chosen]
    summary = steps.record_validation(ctx, results)
    try:
        steps.gate(results)
    except ValidationFailed as exc:
        _fail(str(exc), "inspect the Data Docs, fix or quarantine the drop, then re-run")
    console.print(f"[green]✓[/] {summary}")
    for r in results:
        if r.docs_index:
            console.print(f"  Data Docs: {r.docs_index}")


@app.command()
def train(
    experiment: Annotated[
        Path | None, typer.Option(help="Experiment YAML (default: params.yaml train.experiment).")
    ] = None,
    register: Annotated[
        bool, typer.Option(help="Register the best run and apply the champion gate.")
    ] = True,
) -> None:
    """Train the experiment's runs (logged to MLflow) and register the best one."""
    from hearth import steps

    ctx = _context()
    try:
        plan = steps.plan_training(ctx, experiment)
    except ConfigError as exc:
        _fail(str(exc))
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
@app.command()
def run(
    experiment: Annotated[
        Path | None, typer.Option(help="Experiment YAML (default: params.yaml train.experiment).")
    ] = None,
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
    from flows.pipeline import pipeline_flow
    from hearth.validation import ValidationFailed

    ctx = _context()

    try:
        summary = pipeline_flow(experiment=str(experiment) if experiment else None)
    except ValidationFailed as exc:
        _fail(str(exc), "the registry is untouched; fix the data and run again")
    _print_summary(ctx, summary)
    if rollout:
        _run_closed_loop(ctx)


def _run_closed_loop(ctx: HearthContext) -> None:
    from hearth import main_job
    from hearth.validation import ValidationFailed

    console.rule("[bold]Hearth: drift → challenger → canary → drill")
    try:
        closed = main_job.run_closed_loop(ctx, say=console.print)
    except ValidationFailed as exc:
        _fail(str(exc), "the drifted period failed a data gate; the champion still serves")
    console.rule("[bold]Hearth: closed loop done")
    for line in main_job.summary_lines(closed):
        console.print(line, highlight=False)


def _print_summary(ctx: HearthContext, summary: dict[str, Any]) -> None:
    s = ctx.settings
    trained = summary["train"]
    best, reg = trained["best"], trained.get("registration", {})
    m = best["test_metrics"]
    console.rule("[bold]Hearth: main job done")
    console.print(
        f"model  {ctx.params.registry.model_name} v{reg.get('version')} → "
        f"{reg.get('alias') or 'no alias'} ({reg.get('reason', '')})\n"
        f"test   PR-AUC {m['pr_auc']:.3f} vs fraud rate {m['fraud_rate']:.3%} "
        f"(×{m['pr_auc'] / max(m['fraud_rate'], 1e-9):.0f} over chance), "
        f"ROC-AUC {m['roc_auc']:.3f}, trained on {best['device']}\n"
        f"valid. {summary['validation']}\n"
    )
    console.print("[bold]Where to look[/]")
    console.print(f"  MLflow UI   hearth ui mlflow   (store: {s.mlflow_uri})")
    console.print(f"  Prefect UI  hearth ui prefect  (PREFECT_HOME={s.prefect_home})")
    console.print(f"  Data Docs   {s.data_docs_dir}/index.html")
    console.print(f"  data        {s.raw_dir}  {s.processed_dir}  {s.quarantine_dir}")
    console.print(f"  reports     {s.reports_dir}/*.json")


# -- UIs -----------------------------------------------------------------------------------
@ui_app.command("mlflow")
def ui_mlflow(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
) -> None:
    """MLflow's UI over Hearth's tracking store and artifacts."""
    ctx = _context()
    s = ctx.settings
    cmd = [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", s.mlflow_uri,
        "--default-artifact-root", str(s.mlflow_artifact_root), "--host", host,
        "--port", str(port),
    ]  # fmt: skip
    console.print(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


@ui_app.command("prefect")
def ui_prefect(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 4200,
) -> None:
    """Prefect's server and UI over Hearth's Prefect home: every flow run `hearth run` made."""
    _context()
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--port", str(port)]
    console.print(f"Prefect UI on http://127.0.0.1:{port} (Ctrl-C to stop)")
    raise typer.Exit(subprocess.call(cmd, env=os.environ.copy()))


# -- online feature store ------------------------------------------------------------------
@features_app.command("materialize")
def features_materialize(
    clear: Annotated[
        bool, typer.Option(help="Remove every stored customer state first (a clean rebuild).")
    ] = False,
) -> None:
    """Replay data/processed/ into the online store: one state per customer."""
    from hearth.features.store import (
        MaterializeError,
        StoreError,
        materialize,
        open_store,
        store_location,
    )

    s = _context().settings
    where = f"{s.store_backend} store at {store_location(s)}"
    try:
        store = open_store(s)
    except StoreError as exc:
        _fail(str(exc), "check HEARTH_STORE_BACKEND / HEARTH_REDIS_URL")
    try:
        if clear:
            store.clear()
        with _progress() as progress:
            bar = progress.add_task("replaying transactions", total=None)

            def on_chunk(done: int, total: int) -> None:
                progress.update(bar, description="writing states", completed=done, total=total)

            report = materialize(store, s.processed_dir, progress=on_chunk)
    except MaterializeError as exc:
        _fail(str(exc))
    except StoreError as exc:
        _fail(str(exc), f"is the {where} reachable?")
    finally:
        store.close()
    console.print(
        f"[green]✓[/] {report.customers:,} customers ({report.transactions:,} transactions) "
        f"written in {report.seconds:.1f}s → {where}"
    )


@features_app.command("show")
def features_show(
    customer_id: Annotated[str, typer.Argument(help="The customer whose state to print.")],
) -> None:
    """Print a customer's stored state summary as JSON."""
    import json

    from hearth.features.store import StoreError, open_store, state_summary, store_location

    s = _context().settings
    try:
        store = open_store(s)
        try:
            state = store.get(customer_id)
        finally:
            store.close()
    except StoreError as exc:
        _fail(str(exc))
    if state is None:
        raise _fail(
            f"customer {customer_id!r} is not in the {s.store_backend} store at "
            f"{store_location(s)}",
            "run `hearth features materialize`, or check the id",
        )
    typer.echo(json.dumps(state_summary(customer_id, state), indent=2))


# -- serving -------------------------------------------------------------------------------
TOPOLOGIES = {"monolith": "bentos.monolith:Monolith", "microservices": "bentos.gateway:Gateway"}


def _project_root() -> Path:
    """The directory holding bentos/: the working directory, else the source checkout."""
    here = Path.cwd()
    if (here / "bentos").is_dir():
        return here
    return Path(__file__).resolve().parents[2]


def _serving_models(ctx: HearthContext, always: bool) -> list[Any]:
    from hearth.serving import packaging

    name = ctx.params.registry.model_name
    if not always and not packaging.needs_import(ctx.settings, name):
        return []
    console.print(f"importing {name} from the MLflow registry into {ctx.settings.bentoml_home}")
    try:
        imported = packaging.import_models(ctx.settings, name)
    except packaging.NoChampion as exc:
        _fail(str(exc), "run `hearth run` first: it trains and registers a champion")
    for m in imported:
        state = "imported" if m.created else "already in the store"
        console.print(f"  {m.alias:<10} v{m.version} {m.tag} ({state}, data {m.data_version})")
    return imported


def _serving_store(ctx: HearthContext) -> None:
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
        _fail(str(exc), "check HEARTH_STORE_BACKEND / HEARTH_REDIS_URL")
    console.print(f"  {report.customers:,} customers in {report.seconds:.1f}s")


@app.command()
def serve(
    topology: Annotated[
        str, typer.Option(help="monolith (one process) or microservices (gateway+features+model).")
    ] = "monolith",
    port: Annotated[int | None, typer.Option(help="Gateway port (default: Settings).")] = None,
    host: Annotated[str | None, typer.Option(help="Interface (default: Settings).")] = None,
) -> None:
    """Serve the fraud API in the foreground (imports the champion and fills the store first)."""
    if topology not in TOPOLOGIES:
        _fail(f"unknown topology {topology!r}", f"choose from {', '.join(TOPOLOGIES)}")
    ctx = _context()
    _serving_models(ctx, always=False)
    _serving_store(ctx)
    s = ctx.settings
    cmd = [
        sys.executable, "-m", "bentoml", "serve", TOPOLOGIES[topology],
        "--host", host or s.serving_host, "--port", str(port or s.serving_port),
        "--working-dir", str(_project_root()),
    ]  # fmt: skip
    console.print(f"serving {topology} on http://{host or s.serving_host}:{port or s.serving_port}")
    sys.stderr.flush()
    # exec: signals sent to this process (Ctrl-C, a supervisor's SIGTERM) reach BentoML.
    os.execv(sys.executable, cmd)


@app.command()
def build(
    bento: Annotated[
        list[str] | None, typer.Option(help="Bento to build (default: all four).")
    ] = None,
) -> None:
    """Import champion/challenger into the BentoML store and build the bentos."""
    from hearth.serving import packaging

    ctx = _context()
    names = bento or list(packaging.BENTOS)
    unknown = sorted(set(names) - set(packaging.BENTOS))
    if unknown:
        _fail(f"unknown bento(s) {unknown}", f"choose from {', '.join(packaging.BENTOS)}")
    imported = _serving_models(ctx, always=True)
    root = _project_root()
    built = packaging.build_bentos(
        imported, root, names, progress=lambda n: console.print(f"building {n} …")
    )
    for tag in built.values():
        lines = packaging.dockerfile(tag).splitlines()
        base = next((line for line in lines if line.startswith("FROM")), "")
        console.print(f"[green]✓[/] {tag}  {base}".rstrip())
    console.print(f"bentos in {ctx.settings.bentoml_home}; images: `hearth containerize`")


@app.command()
def containerize(
    bento: Annotated[
        list[str] | None, typer.Option(help="Bento to containerize (default: all four).")
    ] = None,
    engine: Annotated[str, typer.Option(help="Container engine: docker or podman.")] = "docker",
) -> None:
    """Build container images of the latest bentos with `bentoml containerize`."""
    from hearth.serving import packaging

    _context()
    problem = packaging.container_engine(engine)
    if problem:
        _fail(
            f"no container engine: {problem}",
            f"start the {engine} daemon (or pass --engine podman), then run this again; "
            "`hearth build` needs no engine",
        )
    for name in bento or list(packaging.BENTOS):
        code = packaging.containerize(f"{name}:latest", engine)
        if code:
            _fail(f"containerizing {name} failed (exit {code})", "run `hearth build` first?")


@app.command()
def info() -> None:
    """Print where Hearth keeps everything, as configured now."""
    ctx = _context()
    s = ctx.settings
    for label, value in (
        ("HEARTH_HOME", s.home_abs),
        ("MLflow tracking", s.mlflow_uri),
        ("MLflow artifacts", s.mlflow_artifact_root),
        ("Prefect home", s.prefect_home),
        ("DVC remote", s.dvc_remote),
        ("Data Docs", s.data_docs_dir),
        ("raw", s.raw_dir),
        ("processed", s.processed_dir),
        ("quarantine", s.quarantine_dir),
        ("reports", s.reports_dir),
    ):
        typer.echo(f"{label:<18} {value}")


# -- the stack: hearth up / down / ps, and drift monitoring ---------------------------------
@app.command()
def up(
    topology: Annotated[
        str, typer.Option(help="Serving topology: monolith or microservices.")
    ] = "monolith",
    serve: Annotated[
        bool, typer.Option(help="Start the serving stack too (needs a registered champion).")
    ] = True,
) -> None:
    """Start Prefect (server, work pool, deployments, worker), MLflow and serving; print URLs."""
    from hearth.stack.process import StackError
    from hearth.stack.services import Stack
    from hearth.stack.supervisor import up as stack_up

    if topology not in TOPOLOGIES:
        _fail(f"unknown topology {topology!r}", f"choose from {', '.join(TOPOLOGIES)}")
    ctx = _context()
    stack = Stack(ctx.settings, topology, _project_root())
    try:
        started = stack_up(stack, serve=serve, say=console.print)
    except StackError as exc:
        _fail(str(exc), "`hearth ps` shows what did start; `hearth down` stops it")
    console.rule("[bold]Hearth is up")
    for r in started:
        console.print(f"  {r.name:<15} {r.url or '(no UI)':<28} log {r.log}")
    console.print("stop it with `hearth down`; check it with `hearth ps`")


@app.command()
def down() -> None:
    """Stop exactly what `hearth up` started (its pid file under HEARTH_HOME)."""
    from hearth.stack.supervisor import down as stack_down

    stopped = stack_down(_context().settings.home_abs, say=console.print)
    console.print(f"[green]✓[/] stopped {len(stopped)} service(s)" if stopped else "nothing runs")


@app.command()
def ps() -> None:
    """What `hearth up` started: running or not, healthy or not."""
    from hearth.stack.supervisor import ps as stack_ps

    statuses = stack_ps(_context().settings.home_abs)
    if not statuses:
        typer.echo("nothing started by `hearth up` runs")
        return
    for st in statuses:
        state = "healthy" if st.healthy else ("UNHEALTHY" if st.running else "STOPPED")
        typer.echo(f"{st.name:<15} {st.pid:>7} {state:<9} {st.url or '-':<28} {st.detail}")
    if not all(st.healthy for st in statuses):
        raise typer.Exit(code=1)


@app.command()
def monitor(
    trigger: Annotated[
        bool, typer.Option(help="Start the retraining deployment when drift calls for it.")
    ] = True,
) -> None:
    """Drift report of recent live traffic vs the training reference (flows/monitor.py)."""
    from flows.monitor import monitor_flow

    _context()
    summary = monitor_flow(trigger_retraining=trigger)
    console.print(
        f"drift: {'retrain' if summary['retrain'] else 'no action'}; report {summary['report']}"
    )
    if summary["trigger_error"]:
        console.print(f"[yellow]retraining not started:[/] {summary['trigger_error']}")


# -- benchmark -----------------------------------------------------------------------------
@app.command(
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
    import dataclasses

    from hearth.bench import bench_report
    from hearth.bench.run import BenchConfig, Progress, run_bench

    ctx = _context()
    config = BenchConfig.quick() if quick else BenchConfig()
    changes: dict[str, Any] = {}
    if contender:
        changes["contenders"] = tuple(contender)
    if concurrency:
        changes["levels"] = tuple(sorted(set(concurrency)))
    if requests:
        changes["requests"] = requests
    if baseline:
        changes["baseline"] = baseline.resolve()
    if not rollback:
        changes["rollback"] = ()
    config = dataclasses.replace(config, **changes)
    console.print(f"hearth bench: {', '.join(config.contenders)} at c={list(config.levels)}")
    try:
        root = code.resolve() if code else _project_root()
        with _sigterm_as_exit():  # a killed bench still stops the servers it started
            data = run_bench(config, ctx.settings, root, Progress(console.print))
    except (ValueError, FileNotFoundError, RuntimeError, TimeoutError) as exc:
        _fail(str(exc), "run `hearth run` first: the benchmark serves the registered champion")
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


# -- rollout: canary / A-B / shadow, promote, rollback -----------------------------------------
rollout_app = typer.Typer(
    help="Put a challenger in front of live traffic, watch it, promote it or roll it back.",
    no_args_is_help=True,
)
app.add_typer(rollout_app, name="rollout")


def _actor() -> str:
    return f"cli:{os.environ.get('USER', 'unknown')}"


def _rollout_call(fn: Any) -> Any:
    """Run a control operation; a refusal becomes an error line and a hint what to do next."""
    from hearth.traffic.rollout_state import (
        InvalidRollout,
        NoActiveRollout,
        RolloutConflict,
        StateUnavailable,
        UnknownVersion,
    )

    hints: list[tuple[type[Exception], str]] = [
        (UnknownVersion, "list registered versions with `hearth ui mlflow`"),
        (RolloutConflict, "see it with `hearth rollout status`; end it with "
                          "`hearth rollout promote` or `hearth rollback`"),
        (NoActiveRollout, "start one: `hearth rollout start --challenger VERSION`"),
        (InvalidRollout, "see `hearth rollout --help` for the accepted values"),
        (StateUnavailable, "is the rollout state reachable? check HEARTH_STORE_BACKEND / "
                           "HEARTH_REDIS_URL"),
    ]  # fmt: skip
    try:
        return fn()
    except tuple(kind for kind, _ in hints) as exc:
        hint = next(h for kind, h in hints if isinstance(exc, kind))
        raise _fail(str(exc), hint) from None


def _parse_steps(steps: str | None) -> list[float] | None:
    if steps is None:
        return None
    try:
        return [float(s) for s in steps.split(",") if s.strip()]
    except ValueError:
        raise _fail(
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
    from hearth.rollout import control

    ctx = _context()
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
    import json

    from hearth.rollout import control

    ctx = _context()
    status = _rollout_call(lambda: control.status(ctx.settings, ctx.params))
    if as_json:
        typer.echo(json.dumps(status, indent=2, default=str))
        return
    _print_rollout_status(status)


def _print_rollout_status(status: dict[str, Any]) -> None:
    from rich.table import Table

    out = Console()
    r, served = status["rollout"], status["served"]
    if r is None:
        out.print("no rollout yet; start one with `hearth rollout start --challenger VERSION`")
    else:
        out.print(
            f"[bold]rollout {r['rollout_id']}[/]  {r['status']}  {r['mode']}  "
            f"v{r['challenger_version']} vs champion v{r['champion_version']}  "
            f"challenger {r['challenger_percent']:g} %  step {r['step_index'] + 1}/"
            f"{len(r['steps'])}  updated {r['updated_at']}"
        )
    aliases = ", ".join(f"{k}=v{v}" for k, v in sorted(status["aliases"].items())) or "none"
    out.print(f"registry aliases: {aliases}")
    out.print(f"served now: champion v{served['champion']}" + (
        f", challenger v{served['challenger']} ({served['mode']}, "
        f"{served['challenger_percent']:g} %)" if served["challenger"] else ""))  # fmt: skip
    if status["pending_repair"]:
        out.print("[yellow]an interrupted promotion/rollback is pending: the next rollout "
                  "command repairs it[/]")  # fmt: skip
    live = Table("variant", "requests", "errors", "labelled", "frauds", title="live (this rollout)")
    for variant, c in sorted(status["live"].items()):
        live.add_row(variant, *(str(c[k]) for k in ("requests", "errors", "labelled", "frauds")))
    out.print(live)
    events = Table("at", "actor", "action", "reason", title="history (latest)")
    for e in status["history"]:
        events.add_row(str(e["at"])[:19], e["actor"], e["action"], e["reason"])
    out.print(events)


@rollout_app.command("weight")
def rollout_weight(
    percent: Annotated[float, typer.Argument(help="Challenger share of customers, 0-100.")],
    reason: Annotated[str, typer.Option(help="Why: recorded in the rollout's history.")] = "",
) -> None:
    """Set the challenger's traffic share by hand (sticky: raising it only adds customers)."""
    from hearth.rollout import control

    ctx = _context()
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
    from hearth.rollout import control

    ctx = _context()
    change = _rollout_call(lambda: control.promote(ctx.settings, ctx.params, _actor(), reason))
    console.print(f"[green]✓[/] promoted: aliases {change.before} → {change.after}")
    console.print("  undo with `hearth rollback` (restores `previous`)")


@rollout_app.command("report")
def rollout_report(
    rollout_id: Annotated[
        str | None, typer.Argument(help="The rollout (default: the current or latest one).")
    ] = None,
) -> None:
    """Write a rollout's report (Markdown + PNG: traffic, metrics and verdict per analysis
    round) from its history, under HEARTH_HOME/reports/rollouts/<rollout_id>/."""
    from hearth.rollout import flow_steps
    from hearth.traffic.stores import open_state_store

    ctx = _context()
    if rollout_id is None:
        store = open_state_store(ctx.settings)
        try:
            current = store.current()
        finally:
            store.close()
        if current is None:
            _fail("there has been no rollout yet", "start one with `hearth rollout start`")
        rollout_id = current.rollout_id
    try:
        written = flow_steps.write_report(ctx.settings, rollout_id)
    except KeyError as exc:
        _fail(str(exc), "`hearth rollout status` names the current rollout")
    console.print(f"[green]✓[/] rollout {rollout_id} ({written.state.status}): {written.markdown}")
    console.print(f"  chart: {written.png}")


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why: recorded in the rollout's history.")] = "",
) -> None:
    """Roll back now: end the running rollout (all traffic to the champion within a second),
    or, with none running, restore the `previous` champion."""
    from hearth.rollout import control

    ctx = _context()
    change = _rollout_call(lambda: control.rollback(ctx.settings, ctx.params, _actor(), reason))
    console.print(f"[green]✓[/] rolled back: {change.reason}; aliases {change.before} → "
                  f"{change.after}")  # fmt: skip


def main() -> None:
    app()
