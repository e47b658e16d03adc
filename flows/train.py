"""Training: one run, or a sweep of configurations as parallel tasks, each an MLflow run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows._context import load_context
from hearth import steps
from hearth.config import HearthContext
from hearth.lineage import Lineage
from hearth.model.experiment import TrainConfig
from hearth.registry import RegistrationDecision


@task(cache_policy=NO_CACHE, task_run_name="train {run_name}")
def train_task(
    ctx: HearthContext,
    run_name: str,
    config: TrainConfig,
    experiment: str,
    lineage: Lineage,
    parent_run_id: str | None,
) -> steps.TrainedRun:
    return steps.train_run(ctx, run_name, config, experiment, lineage, parent_run_id)


@task(cache_policy=NO_CACHE)
def register_task(ctx: HearthContext, run: steps.TrainedRun) -> RegistrationDecision:
    return steps.register(ctx, run)


# Two runs at a time. The cast: `@flow` types task_runner as the invariant
# TaskRunner[PrefectFuture[Any]], which Prefect's own ThreadPoolTaskRunner does not match.
TWO_AT_A_TIME = cast(TaskRunner[PrefectFuture[Any]], ThreadPoolTaskRunner(max_workers=2))


@flow(name="train", log_prints=True, task_runner=TWO_AT_A_TIME)
def train_flow(experiment: str | None = None, register_model: bool = True) -> steps.TrainSummary:
    """Train the experiment's runs in parallel, register the best on validation PR-AUC."""
    ctx = load_context()
    plan = steps.plan_training(ctx, Path(experiment) if experiment else None)
    lineage = steps.lineage_for(ctx, plan.experiment_file, steps.recorded_validation(ctx))
    with steps.sweep_parent(ctx, plan) as parent_run_id:
        futures = [
            train_task.submit(ctx, name, config, plan.experiment.name, lineage, parent_run_id)
            for name, config in plan.runs
        ]
        runs = tuple(f.result() for f in futures)
    best = steps.best_run(list(runs))
    registration = register_task(ctx, best) if register_model else None
    return steps.TrainSummary(runs, best, registration)


if __name__ == "__main__":
    train_flow()
