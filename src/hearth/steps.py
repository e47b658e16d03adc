"""The pipeline's steps as plain functions.

`hearth <step>` (and so every DVC stage) and the Prefect flows call these; each takes the
loaded `HearthContext`, does one thing, writes its small JSON report under `reports/` (the
DVC metrics) and returns a typed result. Nothing here knows about Prefect or DVC.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hearth.config import HearthContext
from hearth.data.etl import EtlReport, run_etl
from hearth.data.generate import GenerateReport, generate
from hearth.lineage import Lineage, dvc_data_version, git_commit
from hearth.model.experiment import Experiment, TrainConfig, load_experiment

if TYPE_CHECKING:
    from hearth.registry import RegistrationDecision
    from hearth.validation import ValidationResult

log = logging.getLogger(__name__)

VALIDATION_REPORT = "validation.json"


def write_report(ctx: HearthContext, name: str, payload: dict[str, Any]) -> Path:
    """Write one step's report as `reports/<name>` (pretty JSON, stable key order)."""
    path = ctx.settings.reports_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


def raw_drops(ctx: HearthContext) -> list[Path]:
    return sorted(ctx.settings.transactions_dir.glob("*.csv"))


# -- data ----------------------------------------------------------------------------------
def generate_data(
    ctx: HearthContext,
    *,
    overrides: dict[str, Any] | None = None,
    drift: str = "none",
    start_date: date | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> GenerateReport:
    """Generate raw drops into `data/raw/` from params.data (with optional overrides)."""
    data_params = ctx.params.data.model_copy(update=overrides or {})
    report = generate(
        ctx.settings.raw_dir, data_params, drift=drift, start_date=start_date, progress=progress
    )
    log.info(
        "generated %d transactions (%d fraud, %d dirty rows) in %d daily drops",
        report.transactions,
        report.fraud,
        report.dirty_rows,
        report.days,
    )
    return report


def etl(ctx: HearthContext) -> EtlReport:
    """Clean, quarantine and featurise the raw drops into `data/processed/`."""
    s = ctx.settings
    report = run_etl(s.raw_dir, s.processed_dir, s.quarantine_dir, ctx.params)
    write_report(ctx, "etl.json", report.to_dict())
    return report


# -- validation ----------------------------------------------------------------------------
def validate_raw(ctx: HearthContext) -> ValidationResult:
    """Run the raw-contract suite on every drop; returns the ValidationResult (not gated)."""
    # lazy: Great Expectations' suites load only for the commands that validate
    from hearth.validation import validate_raw as _validate_raw

    return _validate_raw(ctx.settings.raw_dir, ctx.params.validation, ctx.settings.data_docs_dir)


def validate_processed(ctx: HearthContext) -> ValidationResult:
    """Run the processed-features suite; returns the ValidationResult (not gated)."""
    # lazy: Great Expectations' suites load only for the commands that validate
    from hearth.validation import validate_processed as _validate_processed

    s = ctx.settings
    return _validate_processed(
        s.processed_dir, s.reference_dir, ctx.params.validation, s.data_docs_dir
    )


def record_validation(ctx: HearthContext, results: Sequence[ValidationResult]) -> str:
    """Write `reports/validation.json` and return the one-line summary kept for lineage."""
    summary = "; ".join(
        f"{r.suite} {'passed' if r.success else 'FAILED'} "
        f"({r.batches} batches, {len(r.failed)} failed expectations)"
        for r in results
    )
    write_report(
        ctx,
        VALIDATION_REPORT,
        {
            "success": all(r.success for r in results),
            "summary": summary,
            "suites": [r.to_dict() for r in results],
        },
    )
    return summary


def recorded_validation(ctx: HearthContext) -> str:
    """The validation summary recorded by the last `hearth validate`, for lineage tags."""
    path = ctx.settings.reports_dir / VALIDATION_REPORT
    if not path.exists():
        return "not validated"
    payload = json.loads(path.read_text())
    return str(payload.get("summary", "unknown"))


def gate(results: Sequence[ValidationResult]) -> None:
    """Raise `ValidationFailed` for the first failed suite (its message names the failures)."""
    # lazy: Great Expectations' suites load only for the commands that validate
    from hearth.validation import gate as _gate

    for result in results:
        _gate(result)


# -- training and registration -------------------------------------------------------------
@dataclass(frozen=True)
class TrainedRun:
    run_id: str
    run_name: str
    device: str
    seconds: float
    valid_metrics: dict[str, float]
    test_metrics: dict[str, float]
    best_epoch: int

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass(frozen=True)
class TrainingPlan:
    experiment: Experiment
    experiment_file: Path
    runs: list[tuple[str, TrainConfig]] = field(default_factory=list)


def plan_training(ctx: HearthContext, experiment_file: Path | None = None) -> TrainingPlan:
    """Load the experiment file (params.train.experiment by default) into its runs."""
    path = experiment_file or ctx.params.train.experiment
    experiment = load_experiment(path)
    return TrainingPlan(experiment, path, experiment.configurations())


def on_device(plan: TrainingPlan, device: str) -> TrainingPlan:
    """The plan with every run on `device` ("auto", "cpu" or "cuda")."""
    runs = [
        (name, TrainConfig.model_validate({**config.model_dump(), "device": device}))
        for name, config in plan.runs
    ]
    return TrainingPlan(plan.experiment, plan.experiment_file, runs)


def lineage_for(ctx: HearthContext, experiment_file: Path, validation: str) -> Lineage:
    """Everything a model version must carry about where it came from."""
    return Lineage(
        data_version=dvc_data_version(ctx.settings.processed_dir),
        git_commit=git_commit(Path.cwd()),
        validation=validation,
        experiment_file=str(experiment_file),
    )


def train_run(
    ctx: HearthContext,
    run_name: str,
    config: TrainConfig,
    experiment: str,
    lineage: Lineage,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> TrainedRun:
    """Train one configuration and log it as one MLflow run (with `tags` added to it)."""
    # lazy: torch and mlflow load only for the commands that train
    from mlflow import MlflowClient

    from hearth import registry
    from hearth.model.train import load_splits, train_model

    registry.configure(ctx.settings)
    splits = load_splits(ctx.settings.processed_dir)
    result = train_model(splits, config, ctx.params.thresholds)
    run_id = registry.log_training_run(
        result,
        lineage,
        experiment=experiment,
        run_name=run_name,
        test_df=splits.test,
        thresholds=ctx.params.thresholds,
        out_dir=ctx.settings.home_abs / "runs" / run_name,
        parent_run_id=parent_run_id,
    )
    for key, value in (tags or {}).items():
        MlflowClient().set_tag(run_id, key, value)
    return TrainedRun(
        run_id=run_id,
        run_name=run_name,
        device=result.device,
        seconds=round(result.seconds, 2),
        valid_metrics=dict(result.valid_metrics),
        test_metrics=dict(result.test_metrics),
        best_epoch=result.best_epoch,
    )


def best_run(runs: list[TrainedRun]) -> TrainedRun:
    """The sweep's winner, chosen on validation PR-AUC (the test split stays held out)."""
    return max(runs, key=lambda r: r.valid_metrics.get("pr_auc", float("-inf")))


def register(ctx: HearthContext, run: TrainedRun) -> RegistrationDecision:
    """Register the run's model and apply the champion/challenger gate."""
    # lazy: torch and mlflow load only for the commands that train
    from hearth import registry
    from hearth.model.train import load_splits

    registry.configure(ctx.settings)
    test_df = load_splits(ctx.settings.processed_dir).test
    decision = registry.register_and_gate(run.run_id, test_df, ctx.params.registry)
    write_report(
        ctx,
        "train.json",
        {"run": run.to_dict(), "registration": decision.to_dict()},
    )
    return decision


@dataclass(frozen=True)
class TrainSummary:
    """A training pass: every run, the winner on validation, and what the gate did with it."""

    runs: tuple[TrainedRun, ...]
    best: TrainedRun
    registration: RegistrationDecision | None = None  # None when asked not to register


@dataclass(frozen=True)
class PipelineSummary:
    """The pipeline end to end: data generated (if it had to be), ETL, the gates, training."""

    etl: EtlReport
    validation: str  # the one-line summary `record_validation` wrote and lineage carries
    train: TrainSummary
    generated: GenerateReport | None = None  # None when data/raw already had drops


@contextmanager
def sweep_parent(ctx: HearthContext, plan: TrainingPlan) -> Iterator[str | None]:
    """A parent MLflow run grouping a sweep's runs; no parent for a single run."""
    if len(plan.runs) < 2:
        yield None
        return
    # lazy: mlflow loads only for the commands that train
    from hearth import registry

    registry.configure(ctx.settings)
    parent = registry.start_parent_run(
        plan.experiment.name,
        run_name=f"{plan.experiment.name} sweep",
        tags={"hearth.sweep": "true", "hearth.experiment_file": str(plan.experiment_file)},
    )
    failed = True
    try:
        yield parent
        failed = False
    finally:
        registry.end_run(parent, failed=failed)
