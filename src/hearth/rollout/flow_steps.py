"""The rollout flow's steps as plain functions: start, analyse a round, act, report.

`flows/rollout.py` wires these into a Prefect flow; nothing here knows about Prefect. The
shared rollout state store is the truth the gateways route by (`StateStore.current()`), so
driving a rollout is writing to it (and to the MLflow registry when it ends) — no HTTP.

One analysis round: read the rollout's logged requests joined with their labels
(`PredictionLog.analysis_rows`), run `analyse` with each variant's decision threshold, then
record the verdict in the rollout's history *with* the action it causes (one event: the
weight change of an ``advance``, or the end of a ``promote``/``rollback``, carries the
numbers that justified it), and log it to MLflow. Rows are cumulative over the rollout:
sticky assignment keeps every customer on one variant, and at a canary's 100 % step the
champion gets no new traffic, so only the earlier steps' requests can speak for it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hearth import registry
from hearth.config import CHALLENGER, HearthContext, Settings
from hearth.params import Params, RolloutParams
from hearth.rollout import control, counterfactual, rollout_report
from hearth.rollout.registry_reads import aliases
from hearth.rollout.verdict import Verdict, analyse_state
from hearth.traffic.rollout_state import (
    Decision,
    InvalidRollout,
    Mode,
    NoActiveRollout,
    RolloutConflict,
    RolloutState,
)
from hearth.traffic.state_store import StateStore
from hearth.traffic.stores import open_state_store, using_prediction_log

log = logging.getLogger(__name__)

ACTOR = "rollout-flow"
MLFLOW_EXPERIMENT = "rollouts"
# Which of a model's thresholds.json cut-offs the analysis judges recall at (see
# `decision_thresholds` for why the review one).
THRESHOLD_KEY = "review"
TEST_MAX_WAIT = "max wait without a verdict"


@dataclass(frozen=True)
class RolloutPlan:
    """How one rollout is driven: the analysis params and the clock."""

    analysis: RolloutParams
    step_wait_s: float
    max_wait_s: float

    @classmethod
    def make(
        cls,
        params: Params,
        step_wait_s: float | None = None,
        max_wait_s: float | None = None,
        profile: str | None = None,
    ) -> RolloutPlan:
        """The plan from params.yaml's rollout values (or its named `profile`), given waits."""
        analysis = params.rollout.profile(profile)
        wait = step_wait_s if step_wait_s is not None else analysis.step_wait_s
        # Default budget: each step may hold for up to three more waits before giving up.
        budget = max_wait_s if max_wait_s is not None else 4 * wait * len(analysis.steps)
        if wait <= 0 or budget <= 0:
            raise ValueError(f"step_wait_s and max_wait_s must be positive, got {wait}, {budget}")
        return cls(analysis, wait, budget)


@dataclass(frozen=True)
class RoundResult:
    """One analysis round: the verdict, what was done about it, the state afterwards."""

    round: int
    verdict: Verdict
    action: str
    state: RolloutState
    rows: int
    seconds: float
    judged_percent: float = 0.0  # the challenger's share while the analysed traffic came in

    @property
    def ended(self) -> bool:
        return not self.state.running

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "decision": self.verdict.decision,
            "action": self.action,
            "reason": self.verdict.reason,
            "test": self.verdict.test,
            "challenger_percent": self.judged_percent,
            "percent_after": self.state.challenger_percent,
            "status": self.state.status,
            "rows": self.rows,
            "checks": {c.name: c.outcome for c in self.verdict.checks},
            "numbers": _finite(self.verdict.numbers),
        }


@dataclass(frozen=True)
class RolloutOutcome:
    """How a rollout ended, with every round and where its report is."""

    state: RolloutState
    rounds: tuple[RoundResult, ...] = ()
    thresholds: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    report_md: Path | None = None
    report_png: Path | None = None
    seconds: float = 0.0

    @property
    def final(self) -> RoundResult | None:
        """The last analysis round (its verdict ended the rollout), if there was one."""
        return self.rounds[-1] if self.rounds else None

    def to_dict(self) -> dict[str, Any]:
        s = self.state
        final = self.final
        return {
            "rollout_id": s.rollout_id,
            "champion_version": s.champion_version,
            "challenger_version": s.challenger_version,
            "mode": s.mode,
            "status": s.status,
            "decision": final.verdict.decision if final else None,
            "reason": final.verdict.reason if final else None,
            "test": final.verdict.test if final else None,
            "numbers": _finite(final.verdict.numbers) if final else {},
            "rounds": [r.to_dict() for r in self.rounds],
            "thresholds": self.thresholds,
            "mlflow_run_id": self.mlflow_run_id,
            "report_md": str(self.report_md) if self.report_md else None,
            "report_png": str(self.report_png) if self.report_png else None,
            "seconds": round(self.seconds, 1),
        }


def _finite(numbers: dict[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in numbers.items()}


# -- starting -------------------------------------------------------------------------------
def start(
    ctx: HearthContext,
    challenger_version: str | None = None,
    mode: Mode | None = None,
    steps: list[float] | None = None,
    reason: str = "",
) -> RolloutState:
    """Start a rollout of `challenger_version` (default: the registry's challenger)."""
    name = ctx.params.registry.model_name
    if challenger_version is None:
        registry.configure(ctx.settings)
        challenger_version = aliases(name).get(CHALLENGER)
        if challenger_version is None:
            raise InvalidRollout(f"name a challenger version: {name} has no challenger alias")
    state: RolloutState = control.start(
        ctx.settings,
        ctx.params,
        challenger_version=challenger_version,
        mode=mode,
        steps=tuple(float(s) for s in steps) if steps else None,
        actor=ACTOR,
        reason=reason,
    )
    log.info(
        "rollout %s: v%s against champion v%s, %s, steps %s",
        state.rollout_id,
        state.challenger_version,
        state.champion_version,
        state.mode,
        list(state.steps),
    )
    return state


def decision_thresholds(
    settings: Settings, params: Params, state: RolloutState
) -> dict[str, float]:
    """Each variant's *review* threshold, from its training run's thresholds.json.

    Review, not decline: recall at the review threshold is the share of fraud that gets a
    look at all (the safety net a worse model would tear), and at its ~0.9 target its
    binomial variance is about 2.5x smaller than recall near 0.65 at the decline
    threshold, so a canary can judge it on fewer labels. Each model is judged at its own
    threshold, because that is how each one decides when it serves.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    registry.configure(settings)
    client, name = MlflowClient(), params.registry.model_name
    out = {}
    for variant, version in (
        ("champion", state.champion_version),
        ("challenger", state.challenger_version),
    ):
        run_id = client.get_model_version(name, version).run_id
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="thresholds.json")
        out[variant] = float(json.loads(Path(path).read_text())[THRESHOLD_KEY])
    return out


# -- MLflow ---------------------------------------------------------------------------------
def start_mlflow_run(
    settings: Settings, state: RolloutState, plan: RolloutPlan, model_name: str
) -> str:
    """A dedicated MLflow run for the rollout (experiment ``rollouts``), tagged with both
    model versions; its id. Each round's verdict is logged to it (`log_round`)."""
    from mlflow.tracking import MlflowClient

    registry.configure(settings)
    experiment_id = registry.ensure_experiment(MLFLOW_EXPERIMENT)
    client = MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name=state.rollout_id,
        tags={
            "hearth.rollout_id": state.rollout_id,
            "hearth.champion_version": state.champion_version,
            "hearth.challenger_version": state.challenger_version,
            "hearth.rollout_mode": state.mode,
            "hearth.model_name": model_name,
            "hearth.champion_model_uri": f"models:/{model_name}/{state.champion_version}",
            "hearth.challenger_model_uri": f"models:/{model_name}/{state.challenger_version}",
        },
    )
    run_id = str(run.info.run_id)
    logged = {**plan.analysis.model_dump(exclude={"profiles"}), "step_wait_s": plan.step_wait_s}
    logged["max_wait_s"] = plan.max_wait_s
    for key, value in logged.items():
        client.log_param(run_id, key, json.dumps(value) if isinstance(value, tuple) else value)
    return run_id


def log_round(run_id: str, result: RoundResult) -> None:
    """The round's finite numbers as metrics (step = round), its verdict as tags."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    now = int(time.time() * 1000)
    metrics = dict(result.verdict.mlflow_metrics())
    metrics["challenger_percent"] = result.state.challenger_percent
    client = MlflowClient()
    client.log_batch(
        run_id, metrics=[Metric(k, float(v), now, result.round) for k, v in metrics.items()]
    )
    for key, value in result.verdict.mlflow_tags().items():
        client.set_tag(run_id, key, value)
    client.set_tag(run_id, "rollout.status", result.state.status)


def end_mlflow_run(
    settings: Settings, params: Params, outcome: RolloutOutcome, failed: bool = False
) -> None:
    """Close the run; tag the challenger's model version with how its rollout ended."""
    from mlflow.tracking import MlflowClient

    if outcome.mlflow_run_id is None:
        return
    client = MlflowClient()
    s = outcome.state
    name = params.registry.model_name
    # Each version names the rollout (its outcome) and its MLflow run; the run names both.
    for version, value in ((s.challenger_version, s.status), (s.champion_version, "champion")):
        client.set_model_version_tag(name, version, f"hearth.rollout.{s.rollout_id}", value)
        client.set_model_version_tag(
            name, version, f"hearth.rollout.{s.rollout_id}.run_id", outcome.mlflow_run_id
        )
    client.set_terminated(outcome.mlflow_run_id, "FAILED" if failed else "FINISHED")


# -- one round ------------------------------------------------------------------------------
def analysis_rows(settings: Settings, rollout_id: str) -> list[dict[str, Any]]:
    """Every logged request of `rollout_id`, joined with its label where one arrived."""
    with using_prediction_log(settings) as predictions:
        rows: list[dict[str, Any]] = predictions.analysis_rows(rollout_id=rollout_id)
    return rows


def judge(
    rows: list[dict[str, Any]],
    state: RolloutState,
    plan: RolloutPlan,
    thresholds: dict[str, float],
    report_precision: float,
) -> Verdict:
    """The analysis of `rows` under the rollout's mode and step."""
    return analyse_state(rows, state, plan.analysis, thresholds, report_precision)


def _history_fields(verdict: Verdict, state: RolloutState, round_no: int) -> dict[str, Any]:
    fields = verdict.history_fields()
    # Context a report needs to rebuild the round from the history alone.
    fields["numbers"].update(
        analysis_round=round_no,
        decision=verdict.decision,
        step_index=state.step_index,
        challenger_percent=state.challenger_percent,
    )
    return fields


def act(
    ctx: HearthContext,
    store: StateStore,
    state: RolloutState,
    verdict: Verdict,
    round_no: int,
) -> tuple[str, RolloutState]:
    """Record `verdict` in the history together with what it causes; (action, new state).

    Every write names the rollout judged (compare-and-set on its id): when an operator ended
    it meanwhile, their decision stands and this one is dropped (action ``superseded``)."""
    decision = Decision(ACTOR, **_history_fields(verdict, state, round_no))
    rid = state.rollout_id
    try:
        if verdict.decision in {"advance", "hold"}:
            # The analysis advances only before the last step; be safe.
            advance = verdict.decision == "advance" and not state.last_step
            action = "advance" if advance else "hold"
            new = store.update(
                (lambda s: s.next_step()) if advance else (lambda s: s), action=action,
                rollout_id=rid, **decision.fields(),
            )  # fmt: skip
            return (f"advance to {new.challenger_percent:g} %" if advance else "hold"), new
        if verdict.decision == "promote":
            control.promote(ctx.settings, ctx.params, decision, rollout_id=rid, store=store)
        else:
            control.rollback(
                ctx.settings, ctx.params, decision, rollout_id=rid, store=store,
                sync_aliases=True,
            )  # fmt: skip
        action = verdict.decision
    except (RolloutConflict, NoActiveRollout) as exc:
        log.warning("rollout %s: %s not applied: %s", rid, verdict.decision, exc)
        action = "superseded"
    ended = store.current()
    assert ended is not None  # it existed a moment ago and states are never deleted
    return action, ended


def give_up(
    ctx: HearthContext, store: StateStore, state: RolloutState, last: Verdict, round_no: int
) -> tuple[Verdict, str, RolloutState]:
    """Roll back a rollout that found no verdict within its time budget."""
    verdict = Verdict(
        "rollback",
        f"no verdict within the time budget; last analysis: {last.reason}",
        TEST_MAX_WAIT,
        dict(last.numbers),
        last.checks,
    )
    action, new = act(ctx, store, state, verdict, round_no)
    return verdict, action, new


def abort(ctx: HearthContext, store: StateStore, rollout_id: str, error: BaseException) -> None:
    """Roll back a rollout whose flow failed: a challenger nobody watches gets no traffic."""
    current = store.current()
    if current is None or not current.running or current.rollout_id != rollout_id:
        return
    # The first line only: some exceptions (MLflow's) carry a tutorial in their message.
    first_line = (str(error).splitlines() or [""])[0][:300]
    log.error("rollout %s: flow failed (%s), rolling back", rollout_id, first_line)
    reason = f"rollout flow failed: {type(error).__name__}: {first_line}"
    decision = Decision(ACTOR, reason, test="flow failure")
    # One state write (no MLflow first: the flow may have failed because MLflow is down);
    # the aliases follow at the next repair.
    try:
        control.rollback(ctx.settings, ctx.params, decision, rollout_id=rollout_id, store=store)
    except RolloutConflict as exc:  # promoted meanwhile by an operator: that stands
        log.warning("rollout %s: not rolled back: %s", rollout_id, exc)


def run_round(
    ctx: HearthContext,
    store: StateStore,
    state: RolloutState,
    plan: RolloutPlan,
    thresholds: dict[str, float],
    round_no: int,
    out_of_time: bool,
) -> RoundResult:
    """Analyse the rollout's requests so far and act on the verdict (see the module doc)."""
    began = time.monotonic()
    rows = analysis_rows(ctx.settings, state.rollout_id)
    if plan.analysis.quality_test == "paired":
        # Both models' scores of each request, for the paired quality test (its module doc).
        counterfactual.annotate(ctx.settings, ctx.params.registry.model_name, state, rows)
    verdict = judge(rows, state, plan, thresholds, ctx.params.thresholds.report_precision)
    if verdict.decision == "hold" and out_of_time:
        verdict, action, new = give_up(ctx, store, state, verdict, round_no)
    else:
        action, new = act(ctx, store, state, verdict, round_no)
    log.info(
        "rollout %s round %d at %g %%: %s → %s (%s)",
        state.rollout_id,
        round_no,
        state.challenger_percent,
        verdict.decision,
        action,
        verdict.reason,
    )
    seconds = time.monotonic() - began
    return RoundResult(round_no, verdict, action, new, len(rows), seconds, state.challenger_percent)


# -- reports --------------------------------------------------------------------------------
def write_report(
    settings: Settings, rollout_id: str, mlflow_run_id: str | None = None
) -> rollout_report.RolloutReport:
    """Build the rollout's report from the state store, write it, attach it to MLflow."""
    store = open_state_store(settings)
    try:
        state = store.current()
        events = store.history(rollout_id)
    finally:
        store.close()
    if state is None or state.rollout_id != rollout_id:
        state = _state_from_history(rollout_id, events)
    built = rollout_report.build(state, events)
    written = rollout_report.write(built, rollout_report.report_dir(settings, rollout_id))
    if mlflow_run_id is not None:
        rollout_report.log_to_mlflow(written, mlflow_run_id)
    return written


def _state_from_history(rollout_id: str, events: list[Any]) -> RolloutState:
    """A past rollout's last state, replayed from the field changes of its history."""
    fields: dict[str, Any] = {}
    for event in events:
        fields.update({k: after for k, (_, after) in event.changes.items()})
    if not fields:
        raise KeyError(f"no rollout {rollout_id!r} in the history")
    return RolloutState.model_validate(fields)
