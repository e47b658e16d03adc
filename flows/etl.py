"""Daily ETL: validate the raw drops against their contract, then clean and featurise them."""

from __future__ import annotations

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._artifacts import post_validation
from flows._context import load_context, run_as_script
from hearth import steps
from hearth.config import HearthContext
from hearth.data.etl import EtlReport
from hearth.validation import ValidationResult


@task(cache_policy=NO_CACHE)
def validate_raw_task(ctx: HearthContext) -> ValidationResult:
    result = steps.validate_raw(ctx)
    post_validation([result])
    steps.gate([result])
    return result


@task(retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def etl_task(ctx: HearthContext) -> EtlReport:
    return steps.etl(ctx)


@flow(name="etl", log_prints=True)
def etl_flow(validate_raw: bool = True) -> EtlReport:
    """Gate the raw drops (unless told not to), then build data/processed/ and quarantine."""
    ctx = load_context()
    if validate_raw:
        validate_raw_task(ctx)
    return etl_task(ctx)


if __name__ == "__main__":
    run_as_script(etl_flow)
