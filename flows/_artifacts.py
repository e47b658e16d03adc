"""What each flow posts as Prefect artifacts (keys: `hearth.observability.artifacts`).

Every function here is called inside a flow or task run; outside one it posts nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from hearth import steps
from hearth.config import Settings
from hearth.monitoring.drift import DriftReport
from hearth.observability import artifacts as art
from hearth.registry import RegistrationDecision
from hearth.rollout import flow_steps, rollout_report
from hearth.validation import ValidationResult


# -- the validation gate --------------------------------------------------------------------
def validation_rows(results: Sequence[ValidationResult]) -> list[dict[str, Any]]:
    """One row per failed expectation per drop, and one for each suite that passed."""
    rows: list[dict[str, Any]] = []
    for r in results:
        if not r.failed:
            rows.append(
                {"suite": r.suite, "drop": f"all {r.batches}", "expectation": "all",
                 "column": None, "details": f"{r.evaluated} expectations passed",
                 "result": "passed"}
            )  # fmt: skip
        for f in r.failed:
            rows.append(
                {"suite": r.suite, "drop": f.batch, "expectation": f.expectation,
                 "column": f.column, "details": f.details, "result": "failed"}
            )  # fmt: skip
    return rows


def post_validation(results: Sequence[ValidationResult]) -> bool:
    verdict = ", ".join(f"{r.suite} {'passed' if r.success else 'FAILED'}" for r in results)
    return art.post_table(art.VALIDATION_GATE, validation_rows(results), f"validation: {verdict}")


# -- training and registration ----------------------------------------------------------------
def training_rows(runs: Sequence[steps.TrainedRun], best: steps.TrainedRun) -> list[dict[str, Any]]:
    """One row per run: its test metrics, and whether it won on validation."""
    return [
        {"run": r.run_name, "best": r.run_id == best.run_id,
         **{f"test_{k}": v for k, v in r.test_metrics.items()},
         "valid_pr_auc": r.valid_metrics.get("pr_auc"),
         "mlflow_run_id": r.run_id}
        for r in runs
    ]  # fmt: skip


def post_training(settings: Settings, train: steps.TrainSummary) -> None:
    best = train.best
    art.post_table(
        art.TRAINING_METRICS,
        training_rows(train.runs, best),
        f"{len(train.runs)} run(s); best {best.run_name}: test PR-AUC "
        f"{best.test_metrics.get('pr_auc', float('nan')):.3f}",
    )
    url = _mlflow_run_url(settings, best.run_id)
    if url is not None:
        art.post_link(art.TRAINING_MLFLOW_RUN, url, f"MLflow run {best.run_name} ({best.run_id})",
                      f"the best run of this training: {best.run_name}")  # fmt: skip


def _mlflow_run_url(settings: Settings, run_id: str) -> str | None:
    try:
        from mlflow.tracking import MlflowClient

        experiment_id = MlflowClient().get_run(run_id).info.experiment_id
    except Exception:  # no link rather than no training
        return None
    base = art.mlflow_ui_base(settings.mlflow_uri, settings.mlflow_host, settings.mlflow_port)
    return art.mlflow_run_url(base, str(experiment_id), run_id)


def registration_markdown(decision: RegistrationDecision) -> str:
    champion = (
        f"v{decision.champion_version} ({decision.metric} {decision.champion_metric:.4f})"
        if decision.champion_version is not None and decision.champion_metric is not None
        else "none"
    )
    return "\n".join(
        [
            f"# Registration of v{decision.version}: **{decision.decision}**",
            "",
            f"- decision: **{decision.decision}**",
            f"- reason: {decision.reason}",
            f"- {decision.metric}: {decision.candidate_metric:.4f}; champion: {champion}",
        ]
    )


def post_registration(decision: RegistrationDecision) -> bool:
    return art.post_markdown(
        art.MODEL_REGISTRATION,
        registration_markdown(decision),
        f"v{decision.version}: {decision.decision} — {decision.reason}",
    )


# -- rollouts ---------------------------------------------------------------------------------
def round_rows(result: flow_steps.RoundResult) -> list[dict[str, Any]]:
    """A round's verdict as item/value rows: the decision, the test, the checks, the numbers."""
    v = result.verdict
    rows: list[dict[str, Any]] = [
        {"item": "rollout", "value": result.state.rollout_id},
        {"item": "round", "value": result.round},
        {"item": "challenger %", "value": result.judged_percent},
        {"item": "decision", "value": v.decision},
        {"item": "action", "value": result.action},
        {"item": "test", "value": v.test},
        {"item": "reason", "value": v.reason},
        {"item": "requests analysed", "value": result.rows},
    ]
    rows += [{"item": f"check {c.name}", "value": f"{c.outcome}: {c.detail}"} for c in v.checks]
    rows += [{"item": k, "value": n} for k, n in v.numbers.items()]
    return rows


def post_round(result: flow_steps.RoundResult) -> bool:
    v = result.verdict
    return art.post_table(
        art.ROLLOUT_VERDICT,
        round_rows(result),
        f"rollout {result.state.rollout_id} round {result.round} at {result.judged_percent:g} %: "
        f"{v.decision} → {result.action} — {v.reason}",
    )


def report_markdown(
    settings: Settings, report: rollout_report.RolloutReport, mlflow_run_id: str | None
) -> str:
    """The rollout report with its chart inline (a data: URI) and a link to its MLflow run."""
    image = art.png_data_uri(report.png) if report.png is not None else None
    md = rollout_report.markdown(report, png_name=image)
    if mlflow_run_id is not None:
        url = _mlflow_run_url(settings, mlflow_run_id)
        if url is not None:
            md += f"\n[The rollout's MLflow run]({url})\n"
    return md


def post_report(
    settings: Settings, report: rollout_report.RolloutReport, mlflow_run_id: str | None
) -> bool:
    s = report.state
    final = report.final
    verdict = f"{final.decision} — {final.reason}" if final else "no analysis"
    return art.post_markdown(
        art.ROLLOUT_REPORT,
        report_markdown(settings, report, mlflow_run_id),
        f"rollout {s.rollout_id}: {s.status}; v{s.challenger_version} vs champion "
        f"v{s.champion_version}; {verdict}",
    )


# -- drift ------------------------------------------------------------------------------------
def drift_rows(report: DriftReport) -> list[dict[str, Any]]:
    """One row per feature, largest PSI first, and the KS test on the scores."""
    rows = [
        {"feature": name, "psi": psi, "drifted": name in report.drifted_features}
        for name, psi in sorted(report.psi.items(), key=lambda kv: -_sortable(kv[1]))
    ]
    if report.scores is not None:
        rows.append({"feature": "model score (KS)", **_scores(report)})
    return rows


def post_drift(report: DriftReport) -> bool:
    outcome = "retrain" if report.retrain else "no action"
    why = report.skipped or "; ".join(report.reasons) or "within thresholds"
    return art.post_table(art.DRIFT_PSI, drift_rows(report), f"drift: {outcome} — {why}")


def _sortable(value: float) -> float:
    return value if value == value else -1.0  # NaN last


def _scores(report: DriftReport) -> dict[str, Any]:
    assert report.scores is not None
    fields = dataclasses.asdict(report.scores)
    return {"psi": None, "drifted": report.retrain and any("score" in r for r in report.reasons),
            **{f"ks_{k}": v for k, v in fields.items()}}  # fmt: skip
