"""The closed-loop demo's framework-free parts: its plan, its decisions, what it prints."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from hearth.config import HearthContext, Settings
from hearth.data.etl import EtlReport
from hearth.data.generate import GenerateReport
from hearth.demo import closed_loop as loop
from hearth.demo.drifted_period import DriftedData, drift_period
from hearth.demo.summary_lines import closed_loop_lines, pipeline_lines, profile_changes
from hearth.params import Params, load_params
from hearth.registry import RegistrationDecision
from hearth.rollout.flow_steps import RolloutOutcome, RoundResult
from hearth.rollout.replay import ReplayReport
from hearth.rollout.verdict import Check, Verdict
from hearth.steps import PipelineSummary, TrainedRun, TrainSummary
from hearth.traffic.rollout_state import RolloutState

ROOT = Path(__file__).parents[2]
PARAMS = load_params(ROOT / "params.yaml")


def _run(name: str = "default") -> TrainedRun:
    metrics = {"pr_auc": 0.5, "fraud_rate": 0.01, "roc_auc": 0.95}
    return TrainedRun("run-id", name, "cpu", 3.0, metrics, metrics, 4)


def _pipeline(alias: str | None, version: int = 2, reason: str = "beats v1") -> PipelineSummary:
    decision = RegistrationDecision(version, alias, reason, "pr_auc", 0.5, 1, 0.4)
    etl = EtlReport(10, 9, 1, {"bad amount": 1}, 1, {}, {}, {}, {})
    trained = TrainSummary((_run(),), _run(), decision)
    return PipelineSummary(etl, "raw passed; processed passed", trained)


def test_only_a_version_the_gate_made_challenger_gets_a_canary() -> None:
    assert loop.challenger_of(_pipeline("challenger")) == ("2", None)
    version, why = loop.challenger_of(_pipeline(None, reason="not better than v1"))
    assert version is None and why is not None
    assert "v2 was not made challenger" in why and "not better than v1" in why


def test_a_training_pass_without_registration_has_no_decision() -> None:
    with pytest.raises(ValueError, match="not registered"):
        loop.registration(TrainSummary((_run(),), _run(), None))


def test_the_drifted_period_follows_the_default_data(tmp_path: Path) -> None:
    ctx = HearthContext(Settings(home=tmp_path), PARAMS)
    period = drift_period(ctx)
    assert period.start == date(2026, 1, 31)  # params.data: 30 days from 2026-01-01
    assert period.live_start == date(2026, 2, 14)
    assert period.live_dir == tmp_path.resolve() / "live" / "fraud-pattern-2026-02-14"


def test_the_demo_plans_its_two_rollouts_with_the_params_profile() -> None:
    canary, drill = loop.canary("2"), loop.drill("3")
    assert canary.steps == (10.0, 50.0, 100.0) and canary.step_wait_s == 4.0
    assert drill.steps == (50.0, 100.0) and drill.step_wait_s == 40.0
    for plan in (canary, drill):
        assert PARAMS.rollout.profile(plan.analysis_profile) != PARAMS.rollout.profile(None)


def _rollout(plan: loop.DemoRollout, status: str, numbers: dict[str, float]) -> loop.TrafficRollout:
    state = RolloutState(
        rollout_id="r1", champion_version="1", challenger_version=plan.challenger_version,
        challenger_percent=100.0, steps=plan.steps, step_index=len(plan.steps) - 1, salt="s",
        status=status,
    )  # fmt: skip
    checks = (Check("pr_auc", "fail", "bootstrap", "worse"), Check("psi", "pass", "psi", "ok"))
    final = Verdict(
        "rollback" if status == "rolled_back" else "promote", "why", "t", numbers, checks
    )
    first = Verdict("advance", "step passed", "t", {}, ())
    rounds = (
        RoundResult(1, first, "advance to 50 %", state, 300, 0.1, plan.steps[0]),
        RoundResult(2, final, final.decision, state, 900, 0.1, plan.steps[1]),
    )
    outcome = RolloutOutcome(state, rounds, {}, None, Path("report.md"), None, 61.0)
    replayed = ReplayReport(sent=1000, answered=990, labels_posted=400, seconds=5.0)
    return loop.TrafficRollout(plan, outcome, replayed)


def test_the_printed_summary_names_versions_verdicts_numbers_and_the_profile() -> None:
    generated = GenerateReport(14, 40_000, 1_200, 100, (), Path("c.csv"))
    live = GenerateReport(16, 45_000, 1_300, 110, (), Path("c.csv"))
    ctx = HearthContext(Settings(home=Path("/tmp/h")), PARAMS)
    drift = DriftedData(drift_period(ctx), "fraud-pattern", 0.03, generated, live)
    numbers = {"champion_pr_auc": 0.41, "challenger_pr_auc": 0.52, "psi": float("nan")}
    summary = loop.ClosedLoopSummary(
        drift, _pipeline("challenger"), _rollout(loop.canary("2"), "promoted", numbers), None,
        TrainSummary((_run(),), _run(), None), _rollout(loop.drill("3"), "rolled_back", {}),
        {"canary rollout": 61.2}, Path("serve.log"),
    )  # fmt: skip
    text = "\n".join(closed_loop_lines(PARAMS, summary))
    assert "drift    fraud-pattern (fraud rate 3.0%): 40,000 rows trained on" in text
    assert "retrain  v2 → challenger (beats v1); test PR-AUC 0.500" in text
    assert "canary: v2 vs champion v1 → [bold]promoted[/] after 2 analysis rounds (61s)" in text
    assert "PR-AUC   champion 0.410 vs challenger 0.520" in text
    assert "PSI –" in text  # not finite: shown as missing, not as nan
    assert "rounds   10% advance → 50% promote" in text
    assert "drill: v3 vs champion v1 → [bold]rolled_back[/]" in text
    assert "failed   pr_auc" in text
    assert "traffic  1000 requests at 200.0 req/s, 0 failed, 400 labels" in text
    assert (
        "profile  params.yaml rollout.profiles.demo: p99_slack_ms=50, max_psi=2, "
        "recall_tolerance=0.1, quality_test=paired; step wait 4s (drill: wait 40s)"
    ) in text
    assert "timings  canary rollout 61s" in text


def test_the_printed_pipeline_summary_compares_pr_auc_with_chance() -> None:
    lines = pipeline_lines(PARAMS, _pipeline("champion", version=1, reason="first version"))
    assert lines[0] == "model  fraud-detector v1 → champion (first version)"
    assert "PR-AUC 0.500 vs fraud rate 1.000% (×50 over chance)" in lines[1]
    assert lines[2] == "valid. raw passed; processed passed"


def test_profile_changes_lists_what_a_profile_changes() -> None:
    params = Params.model_validate({"rollout": {"profiles": {"p": {"min_samples": 20}}}})
    assert profile_changes(params, "p") == {"min_samples": 20}
