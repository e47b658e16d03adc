"""The main job: raw drops → validated features → trained, tracked, registered model."""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._context import load_context
from flows.etl import etl_task
from flows.train import train_flow
from flows.validate import validate_task
from hearth import steps
from hearth.config import HearthContext


@task(cache_policy=NO_CACHE)
def generate_task(ctx: HearthContext) -> dict[str, Any]:
    return steps.generate_data(ctx).to_dict()


@flow(name="pipeline", log_prints=True)
def pipeline_flow(
    experiment: str | None = None, generate_if_missing: bool = True
) -> dict[str, Any]:
    """Generate default data if there is none, then raw gate → ETL → feature gate → train.

    Each gate records its result (reports/validation.json, Data Docs) before it stops the
    run, and nothing is registered unless every step before registration succeeded.
    """
    ctx = load_context()
    summary: dict[str, Any] = {}
    if generate_if_missing and not steps.raw_drops(ctx):
        print("no raw drops yet: generating the default data set")
        summary["generate"] = generate_task(ctx)
    results = [validate_task(ctx, "raw")]
    if results[0].success:
        summary["etl"] = etl_task(ctx)
        results.append(validate_task(ctx, "processed"))
    summary["validation"] = steps.record_validation(ctx, results)
    steps.gate(results)
    summary["train"] = train_flow(experiment=experiment)
    return summary


if __name__ == "__main__":
    pipeline_flow()
