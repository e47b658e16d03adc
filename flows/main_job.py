"""The main job as one flow: the pipeline, then drift → retrain → canary → drill.

`hearth run` runs it by its entrypoint. The parts that know nothing of Prefect live in
`hearth.demo` (its module doc tells the story); this file orders them, runs the pipeline,
training and rollout flows as subflows, and makes the data steps tasks.
"""

from __future__ import annotations

from contextlib import ExitStack

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._context import load_context, run_as_script
from flows.pipeline import pipeline_flow
from flows.rollout import rollout_flow
from flows.train import train_flow
from hearth.config import HearthContext, Settings
from hearth.demo import closed_loop as loop
from hearth.demo.drifted_period import (
    DriftedData,
    DriftPeriod,
    drift_period,
    generate_drift,
    refresh_online_store,
)
from hearth.demo.live_traffic import LiveTraffic, serving, with_live_traffic
from hearth.launch.hearth_server import ServerProcess
from hearth.validation import ValidationFailed


@task(cache_policy=NO_CACHE)
def generate_drift_task(ctx: HearthContext, period: DriftPeriod) -> DriftedData:
    return generate_drift(ctx, period)


@task(cache_policy=NO_CACHE)
def refresh_online_store_task(settings: Settings) -> int:
    return refresh_online_store(settings)


def _rollout(
    plan: loop.DemoRollout, server: ServerProcess, settings: Settings, traffic: LiveTraffic
) -> loop.TrafficRollout:
    outcome, replayed = with_live_traffic(
        lambda: rollout_flow(
            challenger_version=plan.challenger_version,
            mode="canary",
            steps=list(plan.steps),
            step_wait_s=plan.step_wait_s,
            max_wait_s=plan.max_wait_s,
            analysis_profile=plan.analysis_profile,
        ),
        server,
        settings,
        traffic,
        print,
    )
    return loop.TrafficRollout(plan, outcome, replayed)


def run_closed_loop(ctx: HearthContext) -> loop.ClosedLoopSummary:
    """Drift → retrain → canary with live traffic → drill rollback (see `hearth.demo`)."""
    clock = loop.Stopwatch()
    period = drift_period(ctx)
    with clock("generate drifted period"):
        drift = generate_drift_task(ctx, period)
    print(
        f"drifted period ({drift.drift}): {drift.train.transactions:,} rows for training from "
        f"{period.start}, {drift.live.transactions:,} live rows from {period.live_start}"
    )
    with clock("pipeline on all data"):
        try:
            retrain = pipeline_flow(generate_if_missing=False)
        except ValidationFailed as exc:
            raise loop.DriftedPeriodRejected(exc.result) from exc
    challenger, canary_skipped = loop.challenger_of(retrain)
    if canary_skipped:
        print(canary_skipped)
    with clock("refresh online store"):
        customers = refresh_online_store_task(ctx.settings)
    print(f"online store rebuilt from data/processed: {customers:,} customers")
    traffic = LiveTraffic.of(period)
    with ExitStack() as stack:
        with clock("start server"):
            server = stack.enter_context(serving(ctx.settings, print))
        canary = None
        if challenger is not None:
            print(f"canary: v{challenger} against the champion, with live traffic")
            with clock("canary rollout"):
                canary = _rollout(loop.canary(challenger), server, ctx.settings, traffic)
        with clock("train broken model"):
            drill_training = train_flow(experiment=str(loop.BROKEN_EXPERIMENT))
        broken = loop.registration(drill_training)
        print(
            f"drill: broken v{broken.version} ({broken.reason}); rolled out anyway, by "
            "explicit version: a drill bypasses the registration gate"
        )
        with clock("drill rollout"):
            drill = _rollout(loop.drill(str(broken.version)), server, ctx.settings, traffic)
    return loop.ClosedLoopSummary(
        drift, retrain, canary, canary_skipped, drill_training, drill, clock.seconds,
        server.log_path,
    )  # fmt: skip


@flow(name="main-job", log_prints=True)
def main_job_flow(experiment: str | None = None, closed_loop: bool = True) -> loop.MainJobSummary:
    """The pipeline to a first champion; then (unless `closed_loop` is false) a drifted
    period, a retrained challenger, its canary on replayed live traffic, and a drill."""
    ctx = load_context()
    first = pipeline_flow(experiment=experiment)
    if not closed_loop:
        return loop.MainJobSummary(first)
    print("first champion registered; now drift → challenger → canary → drill")
    return loop.MainJobSummary(first, run_closed_loop(ctx))


if __name__ == "__main__":
    run_as_script(main_job_flow)
