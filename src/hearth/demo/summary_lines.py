"""What `hearth run` prints at the end: the first champion, then the closed loop."""

from __future__ import annotations

import math
from collections.abc import Mapping

from hearth.demo.closed_loop import ClosedLoopSummary, TrafficRollout
from hearth.params import Params
from hearth.rollout.flow_steps import RolloutOutcome
from hearth.steps import PipelineSummary


def pipeline_lines(params: Params, summary: PipelineSummary) -> list[str]:
    """The pipeline's model, its test metrics against chance, and the validation summary."""
    best, reg = summary.train.best, summary.train.registration
    m = best.test_metrics
    model = f"model  {params.registry.model_name} "
    if reg is None:
        model += "not registered"
    else:
        model += f"v{reg.version} → {reg.alias or 'no alias'} ({reg.reason})"
    return [
        model,
        f"test   PR-AUC {m['pr_auc']:.3f} vs fraud rate {m['fraud_rate']:.3%} "
        f"(×{m['pr_auc'] / max(m['fraud_rate'], 1e-9):.0f} over chance), "
        f"ROC-AUC {m['roc_auc']:.3f}, trained on {best.device}",
        f"valid. {summary.validation}",
    ]


def _num(numbers: Mapping[str, float], key: str, pattern: str = "{:.3f}") -> str:
    value = numbers.get(key)
    return "–" if value is None or not math.isfinite(value) else pattern.format(value)


def rollout_lines(title: str, rollout: TrafficRollout) -> list[str]:
    """One rollout: verdict, quality and ops numbers, samples, rounds, traffic, report."""
    outcome: RolloutOutcome = rollout.outcome
    s, final = outcome.state, outcome.final
    verdict = final.verdict if final else None
    n = verdict.numbers if verdict else {}
    lines = [
        f"{title}: v{s.challenger_version} vs champion v{s.champion_version} "
        f"→ [bold]{s.status}[/] after {len(outcome.rounds)} analysis rounds "
        f"({outcome.seconds:.0f}s)",
        f"  verdict  {verdict.decision if verdict else None} — "
        f"{verdict.reason if verdict else None}",
        f"  test     {verdict.test if verdict else None}",
        f"  PR-AUC   champion {_num(n, 'champion_pr_auc')} vs challenger "
        f"{_num(n, 'challenger_pr_auc')} (diff {_num(n, 'pr_auc_diff', '{:+.3f}')}, bounds "
        f"[{_num(n, 'pr_auc_diff_lower', '{:+.3f}')}, {_num(n, 'pr_auc_diff_upper', '{:+.3f}')}])",
        f"  recall   champion {_num(n, 'champion_recall')} vs challenger "
        f"{_num(n, 'challenger_recall')} at each model's review threshold",
        f"  ops      errors {_num(n, 'champion_error_rate', '{:.2%}')} vs "
        f"{_num(n, 'challenger_error_rate', '{:.2%}')}, p99 {_num(n, 'champion_p99_ms', '{:.0f}')}"
        f" vs {_num(n, 'challenger_p99_ms', '{:.0f}')} ms, PSI {_num(n, 'psi')}",
        f"  samples  champion {_num(n, 'champion_n', '{:.0f}')} requests "
        f"({_num(n, 'champion_labelled', '{:.0f}')} labelled, "
        f"{_num(n, 'champion_positives', '{:.0f}')} fraud), challenger "
        f"{_num(n, 'challenger_n', '{:.0f}')} ({_num(n, 'challenger_labelled', '{:.0f}')}, "
        f"{_num(n, 'challenger_positives', '{:.0f}')})",
    ]
    failed = [c.name for c in (verdict.checks if verdict else ()) if c.outcome == "fail"]
    if failed:
        lines.append(f"  failed   {', '.join(failed)}")
    steps = " → ".join(f"{r.judged_percent:g}% {r.verdict.decision}" for r in outcome.rounds)
    lines.append(f"  rounds   {steps}")
    r = rollout.replay
    lines.append(
        f"  traffic  {r.sent} requests at {r.requests_per_s:.1f} req/s, "
        f"{sum(r.failed.values())} failed, {r.labels_posted} labels"
    )
    lines.append(f"  report   {outcome.report_md}")
    return lines


def _value(value: object) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def profile_changes(params: Params, profile: str) -> dict[str, object]:
    """The rollout values that params.yaml's `profile` changes, with their new values."""
    base, chosen = params.rollout.profile(None), params.rollout.profile(profile)
    return {
        name: value for name, value in chosen.model_dump().items() if value != getattr(base, name)
    }


def closed_loop_lines(params: Params, summary: ClosedLoopSummary) -> list[str]:
    """The closed loop's summary as printable lines (rich markup)."""
    d = summary.drift
    lines = [
        f"drift    {d.drift} (fraud rate {d.fraud_rate:.1%}): "
        f"{d.train.transactions:,} rows trained on, {d.live.transactions:,} live rows "
        f"from {d.period.live_start}"
    ]
    reg = summary.retrain.train.registration
    if reg is not None:
        pr_auc = summary.retrain.train.best.test_metrics.get("pr_auc", float("nan"))
        lines.append(
            f"retrain  v{reg.version} → {reg.alias or 'no alias'} ({reg.reason}); "
            f"test PR-AUC {pr_auc:.3f}"
        )
    if summary.canary is not None:
        lines += rollout_lines("canary", summary.canary)
    elif summary.canary_skipped:
        lines.append(f"canary   skipped: {summary.canary_skipped}")
    lines += rollout_lines("drill", summary.drill)
    plan = summary.drill.plan
    changed = profile_changes(params, plan.analysis_profile)
    changes = ", ".join(f"{k}={_value(v)}" for k, v in changed.items()) or "no changes"
    clock = f"drill: wait {plan.step_wait_s:g}s"
    if summary.canary is not None:
        clock = f"step wait {summary.canary.plan.step_wait_s:g}s ({clock})"
    lines.append(
        f"profile  params.yaml rollout.profiles.{plan.analysis_profile}: {changes}; {clock}"
    )
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in summary.timings.items())
    lines.append(f"timings  {timings}")
    lines.append(f"server   log {summary.server_log}")
    return lines
