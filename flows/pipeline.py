"""The pipeline: raw drops → validated features → trained, tracked, registered model."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._artifacts import post_validation
from flows._context import load_context, run_as_script
from flows.etl import etl_task
from flows.train import train_flow
from flows.validate import validate_task
from hearth import steps
from hearth.config import HearthContext
from hearth.data.generate import GenerateReport


@task(cache_policy=NO_CACHE)
def generate_task(ctx: HearthContext) -> GenerateReport:
    return steps.generate_data(ctx)


@flow(name="pipeline", log_prints=True)
def pipeline_flow(
    experiment: str | None = None, generate_if_missing: bool = True
) -> steps.PipelineSummary:
    """Generate default data if there is none, then raw gate → ETL → feature gate → train.

    Each gate records its result (reports/validation.json, Data Docs) before it stops the
    run, and nothing is registered unless every step before registration succeeded.
    """
    ctx = load_context()
    generated = None
    if generate_if_missing and not steps.raw_drops(ctx):
        print("no raw drops yet: generating the default data set")
        generated = generate_task(ctx)
    results = [validate_task(ctx, "raw")]
    etl = etl_task(ctx) if results[0].success else None
    if etl is not None:
        results.append(validate_task(ctx, "processed"))
    validation = steps.record_validation(ctx, results)
    post_validation(results)
    steps.gate(results)
    assert etl is not None  # the raw gate passed, or gate() raised
    trained = train_flow(experiment=experiment)
    return steps.PipelineSummary(etl, validation, trained, generated)


if __name__ == "__main__":
    run_as_script(pipeline_flow)
