"""A rollout as a Prefect flow: start, then wait → analyse → act, until promoted or rolled back.

The steps live in `hearth.rollout.flow_steps`; this file only orders them and makes each
round a task run, so the Prefect UI shows the rollout's rounds with their verdicts.
"""

from __future__ import annotations

import dataclasses
import time

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows._artifacts import post_report, post_round
from flows._context import load_context, run_as_script
from hearth.config import HearthContext
from hearth.rollout import flow_steps, rollout_report
from hearth.traffic.rollout_state import Mode, RolloutState
from hearth.traffic.state_store import StateStore
from hearth.traffic.stores import open_state_store


@task(cache_policy=NO_CACHE)
def start_task(
    ctx: HearthContext, challenger_version: str | None, mode: Mode | None, steps: list[float] | None
) -> RolloutState:
    return flow_steps.start(ctx, challenger_version, mode, steps)


@task(cache_policy=NO_CACHE, task_run_name="analyse round {round_no}")
def round_task(
    ctx: HearthContext,
    store: StateStore,
    state: RolloutState,
    plan: flow_steps.RolloutPlan,
    thresholds: dict[str, float],
    round_no: int,
    out_of_time: bool,
) -> flow_steps.RoundResult:
    result = flow_steps.run_round(ctx, store, state, plan, thresholds, round_no, out_of_time)
    post_round(result)
    return result


@task(cache_policy=NO_CACHE)
def report_task(
    ctx: HearthContext, rollout_id: str, mlflow_run_id: str | None
) -> rollout_report.RolloutReport:
    written = flow_steps.write_report(ctx.settings, rollout_id, mlflow_run_id)
    post_report(ctx.settings, written, mlflow_run_id)
    return written


@flow(name="rollout", log_prints=True)
def rollout_flow(
    challenger_version: str | None = None,
    mode: Mode | None = None,
    steps: list[float] | None = None,
    step_wait_s: float | None = None,
    max_wait_s: float | None = None,
    analysis_profile: str | None = None,
) -> flow_steps.RolloutOutcome:
    """Roll `challenger_version` (default: the registry's challenger) out and decide.

    Waits `step_wait_s` (params.yaml rollout.step_wait_s) before each analysis; a rollout
    still holding after `max_wait_s` is rolled back. `analysis_profile` names one of
    params.yaml's rollout.profiles to analyse with instead of the rollout values themselves.
    """
    ctx = load_context()
    plan = flow_steps.RolloutPlan.make(ctx.params, step_wait_s, max_wait_s, analysis_profile)
    state = start_task(ctx, challenger_version, mode, steps)
    rounds: list[flow_steps.RoundResult] = []
    thresholds: dict[str, float] = {}
    mlflow_run_id: str | None = None
    began = time.monotonic()
    store = open_state_store(ctx.settings)
    try:
        thresholds = flow_steps.decision_thresholds(ctx.settings, ctx.params, state)
        mlflow_run_id = flow_steps.start_mlflow_run(
            ctx.settings, state, plan, ctx.params.registry.model_name
        )
        while state.running:
            time.sleep(plan.step_wait_s)
            round_no = len(rounds) + 1
            out_of_time = time.monotonic() - began >= plan.max_wait_s
            result = round_task(ctx, store, state, plan, thresholds, round_no, out_of_time)
            flow_steps.log_round(mlflow_run_id, result)
            rounds.append(result)
            state = result.state
            print(
                f"round {round_no}: {result.verdict.decision} → {result.action} "
                f"({result.rows} requests) — {result.verdict.reason}"
            )
    except BaseException as exc:
        flow_steps.abort(ctx, store, state.rollout_id, exc)
        raise
    finally:
        store.close()
        outcome = flow_steps.RolloutOutcome(
            state, tuple(rounds), thresholds, mlflow_run_id, seconds=time.monotonic() - began
        )
        flow_steps.end_mlflow_run(ctx.settings, ctx.params, outcome, failed=state.running)
    written = report_task(ctx, state.rollout_id, mlflow_run_id)
    print(f"rollout {state.rollout_id} {state.status}; report: {written.markdown}")
    return dataclasses.replace(outcome, report_md=written.markdown, report_png=written.png)


if __name__ == "__main__":
    run_as_script(rollout_flow)
