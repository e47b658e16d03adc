"""Training: one run, or a sweep of configurations as parallel tasks on Dask, each an MLflow
run.

The variants go to a Dask cluster (prefect-dask): the scheduler at `HEARTH_DASK_ADDRESS`
when set, so they train on whichever machines run `dask worker` for it; else a small local
cluster in the flow's process. Each variant is still a Prefect task run (the worker reports
it to the flow's Prefect API) and an MLflow child run of the sweep's parent run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, cast

import distributed
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner
from prefect_dask import DaskTaskRunner

from flows._artifacts import post_registration, post_training
from flows._context import load_context, run_as_script
from hearth import steps
from hearth.config import HearthContext, Settings
from hearth.lineage import Lineage
from hearth.model.experiment import TrainConfig
from hearth.registry import RegistrationDecision

# The local cluster when no scheduler is named: one worker of two threads inside the flow's
# process. Threads, not processes: a worker process would import torch, pandas and MLflow
# again (seconds of a 2-core box, and its memory) and receive every argument pickled, for
# work that releases the GIL anyway (torch kernels, one intra-op thread per training). Two
# threads: two variants at a time, one per core, as the thread pool before it ran them.
# Variants in threads of one process stay deterministic: each draws from generators of its
# own (hearth.model.train). The scheduler always serves HTTP (health, metrics, the
# dashboard), by default on 8787 of every interface: loopback and a free port instead.
LOCAL_CLUSTER: dict[str, Any] = {
    "processes": False,
    "n_workers": 1,
    "threads_per_worker": 2,
    "dashboard_address": "127.0.0.1:0",
}
DASK_WORKER_TAG = "hearth.dask_worker"


class SweepTaskRunner(DaskTaskRunner):
    """Dask for a sweep's variants: `HEARTH_DASK_ADDRESS`'s scheduler, else `LOCAL_CLUSTER`.

    The address is read when the flow starts, not when this module is imported, so a
    deployment's environment (or a test's) decides where its variants train.
    """

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("address"):
            kwargs.pop("cluster_kwargs", None)  # `duplicate()` passes both
        elif not kwargs.get("cluster"):
            kwargs["cluster_kwargs"] = {**LOCAL_CLUSTER, **(kwargs.get("cluster_kwargs") or {})}
        super().__init__(**kwargs)

    def __enter__(self) -> SweepTaskRunner:
        address = Settings().dask_address
        if address and not self.address:
            self.address = address  # wins over the local cluster's kwargs
        super().__enter__()
        # A local cluster's scheduler and worker log their whole life at INFO (twenty lines
        # around every sweep): only their warnings, while this runner runs.
        dask_logs = logging.getLogger("distributed")
        self._exit_stack.callback(dask_logs.setLevel, dask_logs.level)
        dask_logs.setLevel(max(dask_logs.getEffectiveLevel(), logging.WARNING))
        return self


def dask_worker() -> str | None:
    """The address of the Dask worker running the caller, or None outside one."""
    try:
        return str(distributed.get_worker().address)
    except ValueError:
        return None


@task(cache_policy=NO_CACHE, task_run_name="train {run_name}")
def train_task(
    ctx: HearthContext,
    run_name: str,
    config: TrainConfig,
    experiment: str,
    lineage: Lineage,
    parent_run_id: str | None,
) -> steps.TrainedRun:
    worker = dask_worker()
    tags = {DASK_WORKER_TAG: worker} if worker else {}
    return steps.train_run(ctx, run_name, config, experiment, lineage, parent_run_id, tags)


def for_workers(ctx: HearthContext) -> HearthContext:
    """The context a sweep's variants get: the flow's MLflow store pinned by its full URI.

    Paths stay as configured: a worker resolves relative ones (data, params) in its own
    working directory, its checkout. But a default tracking store lies under the worker's
    own home, so each worker would log its variants somewhere else than the flow.
    """
    settings = ctx.settings
    if settings.dask_address and not settings.mlflow_uri.startswith(("http://", "https://")):
        get_run_logger().warning(
            "variants go to the Dask scheduler at %s but MLflow is the local store %s: "
            "workers on other machines cannot reach it. Set HEARTH_MLFLOW_TRACKING_URI to "
            "the tracking server (`hearth up` starts one)",
            settings.dask_address,
            settings.mlflow_uri,
        )
    pinned = settings.model_copy(update={"mlflow_tracking_uri": settings.mlflow_uri})
    return HearthContext(pinned, ctx.params)


@task(cache_policy=NO_CACHE)
def register_task(ctx: HearthContext, run: steps.TrainedRun) -> RegistrationDecision:
    decision = steps.register(ctx, run)
    post_registration(decision)
    return decision


# The cast: `@flow` types task_runner as the invariant TaskRunner[PrefectFuture[Any]], which
# prefect-dask's runner (of PrefectDaskFuture) does not match.
SWEEP_RUNNER = cast(TaskRunner[PrefectFuture[Any]], SweepTaskRunner())


@flow(name="train", log_prints=True, task_runner=SWEEP_RUNNER)
def train_flow(
    experiment: str | None = None,
    register_model: bool = True,
    device: Literal["auto", "cpu", "cuda"] | None = None,
) -> steps.TrainSummary:
    """Train the experiment's runs in parallel on Dask, register the best on validation
    PR-AUC. `device`, when given, overrides every run's (the GPU deployment sets cuda)."""
    ctx = load_context()
    plan = steps.plan_training(ctx, Path(experiment) if experiment else None)
    if device is not None:
        plan = steps.on_device(plan, device)
    lineage = steps.lineage_for(ctx, plan.experiment_file, steps.recorded_validation(ctx))
    variants_ctx = for_workers(ctx)
    with steps.sweep_parent(ctx, plan) as parent_run_id:
        futures = [
            train_task.submit(
                variants_ctx, name, config, plan.experiment.name, lineage, parent_run_id
            )
            for name, config in plan.runs
        ]
        runs = tuple(f.result() for f in futures)
    best = steps.best_run(list(runs))
    registration = register_task(ctx, best) if register_model else None
    summary = steps.TrainSummary(runs, best, registration)
    post_training(ctx.settings, summary)
    return summary


if __name__ == "__main__":
    run_as_script(train_flow)
