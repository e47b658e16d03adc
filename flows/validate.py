"""The validation gate: Great Expectations suites on raw and processed data."""

from __future__ import annotations

from typing import Literal

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._artifacts import post_validation
from flows._context import load_context, run_as_script
from hearth import steps
from hearth.config import HearthContext
from hearth.validation import ValidationResult

Suite = Literal["raw", "processed"]


@task(cache_policy=NO_CACHE)
def validate_task(ctx: HearthContext, suite: Suite) -> ValidationResult:
    return steps.validate_raw(ctx) if suite == "raw" else steps.validate_processed(ctx)


@flow(name="validate", log_prints=True)
def validate_flow(suites: tuple[Suite, ...] = ("raw", "processed")) -> str:
    """Run the suites, record the result for lineage, and stop here if any failed."""
    ctx = load_context()
    results = [validate_task(ctx, suite) for suite in suites]
    summary = steps.record_validation(ctx, results)
    post_validation(results)
    steps.gate(results)
    print(f"validation: {summary}")
    return summary


if __name__ == "__main__":
    run_as_script(validate_flow)
