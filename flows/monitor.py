"""Hourly drift monitoring: live features and scores vs the training reference."""

from __future__ import annotations

import dataclasses

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._artifacts import post_drift
from flows._context import load_context, run_as_script
from hearth.config import HearthContext
from hearth.monitoring.monitor import MonitorResult, log_to_mlflow, prefect_trigger, run_monitor


@task(cache_policy=NO_CACHE)
def monitor_task(ctx: HearthContext, trigger_retraining: bool) -> MonitorResult:
    return run_monitor(ctx, trigger=prefect_trigger if trigger_retraining else None)


@flow(name="monitor", log_prints=True)
def monitor_flow(trigger_retraining: bool = True) -> MonitorResult:
    """Compare, log the drift report to MLflow, start retraining when drift calls for it."""
    ctx = load_context()
    result = monitor_task(ctx, trigger_retraining)
    logged = dataclasses.replace(result, mlflow_run_id=log_to_mlflow(result))
    rep = result.report
    post_drift(rep)
    print(f"drift: {'retrain' if rep.retrain else 'no action'}; {rep.skipped or rep.reasons}")
    if result.trigger_error:
        print(f"retraining NOT started: {result.trigger_error}")
    return logged


if __name__ == "__main__":
    run_as_script(monitor_flow)
