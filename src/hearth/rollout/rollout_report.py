"""The rollout report: what a rollout did, step by step, as Markdown and one PNG.

Built only from the rollout's state and its history (`StateStore.history`), so a report can
be rebuilt at any time, by any process, for any past rollout. The analysis rounds are the
history events whose numbers carry ``analysis_round`` (written by
`hearth.rollout.flow_steps`); every other event (start, a manual weight change, a
promotion) is listed as it happened.

Files: ``<HEARTH_HOME>/reports/rollouts/<rollout_id>/report.md`` and ``report.png``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.config import Settings
from hearth.observability.figures import png_figure
from hearth.traffic.rollout_state import HistoryEvent, RolloutState

REPORT_MD, REPORT_PNG = "report.md", "report.png"

# (label, champion key, challenger key, format) of the compared metrics, in report order.
_PAIRS: tuple[tuple[str, str, str, str], ...] = (
    ("requests", "champion_n", "challenger_n", "{:.0f}"),
    ("error rate", "champion_error_rate", "challenger_error_rate", "{:.2%}"),
    ("p99 ms", "champion_p99_ms", "challenger_p99_ms", "{:.1f}"),
    ("labelled", "champion_labelled", "challenger_labelled", "{:.0f}"),
    ("labelled fraud", "champion_positives", "challenger_positives", "{:.0f}"),
    ("PR-AUC", "champion_pr_auc", "challenger_pr_auc", "{:.3f}"),
    ("recall@thr", "champion_recall", "challenger_recall", "{:.3f}"),
)


def report_dir(settings: Settings, rollout_id: str) -> Path:
    """Where the report of `rollout_id` lives (under the Hearth home, not the DVC reports)."""
    return settings.home_abs / "reports" / "rollouts" / rollout_id


@dataclass(frozen=True)
class AnalysisRound:
    """One analysis of the rollout, as recorded in its history."""

    round: int
    at: str
    step_index: int
    percent: float
    decision: str
    reason: str
    test: str
    numbers: dict[str, Any]

    def number(self, key: str) -> float:
        """`numbers[key]` as a float; NaN when absent or not a number."""
        value = self.numbers.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return math.nan
        return float(value)


@dataclass(frozen=True)
class RolloutReport:
    """The report's content and, once written, its files."""

    state: RolloutState
    rounds: tuple[AnalysisRound, ...]
    events: tuple[HistoryEvent, ...]
    markdown: Path | None = None
    png: Path | None = None

    @property
    def final(self) -> AnalysisRound | None:
        return self.rounds[-1] if self.rounds else None


def analysis_rounds(events: Sequence[HistoryEvent]) -> list[AnalysisRound]:
    """The analysis rounds among `events`, in the order they happened."""
    rounds = []
    for event in events:
        numbers = event.numbers
        if "analysis_round" not in numbers:
            continue
        rounds.append(
            AnalysisRound(
                round=int(numbers["analysis_round"] or 0),
                at=f"{event.at:%Y-%m-%d %H:%M:%S}",
                step_index=int(numbers.get("step_index") or 0),
                percent=float(numbers.get("challenger_percent") or 0.0),
                decision=str(numbers.get("decision") or event.action),
                reason=event.reason,
                test=event.test or "",
                numbers=dict(numbers),
            )
        )
    return rounds


def build(state: RolloutState, events: Sequence[HistoryEvent]) -> RolloutReport:
    """The report's content from the rollout's final state and its history."""
    mine = tuple(e for e in events if e.rollout_id == state.rollout_id)
    return RolloutReport(state, tuple(analysis_rounds(mine)), mine)


# -- Markdown -------------------------------------------------------------------------------
def _fmt(value: float, pattern: str) -> str:
    return "–" if math.isnan(value) else pattern.format(value)


def _header(report: RolloutReport) -> list[str]:
    s = report.state
    final = report.final
    lines = [
        f"# Rollout {s.rollout_id}",
        "",
        f"- champion **v{s.champion_version}**, challenger **v{s.challenger_version}**, "
        f"mode {s.mode}, steps {', '.join(f'{p:g} %' for p in s.steps)}",
        f"- started {s.started_at:%Y-%m-%d %H:%M:%S} UTC, last change "
        f"{s.updated_at:%Y-%m-%d %H:%M:%S} UTC",
        f"- outcome: **{s.status}**",
    ]
    if final is not None:
        lines += [
            f"- final verdict: **{final.decision}** — {final.reason}",
            f"- test: {final.test}",
        ]
    return [*lines, ""]


def _rounds_table(rounds: Sequence[AnalysisRound]) -> list[str]:
    if not rounds:
        return ["No analysis was recorded for this rollout.", ""]
    head = ["round", "time (UTC)", "step", "challenger %", "verdict"]
    for label, *_ in _PAIRS:
        head.append(f"{label} (champ / chall)")
    head += ["PSI", "PR-AUC diff [lower, upper]"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rounds:
        cells = [str(r.round), r.at[11:], str(r.step_index + 1), f"{r.percent:g}", r.decision]
        for _, champ, chall, pattern in _PAIRS:
            cells.append(f"{_fmt(r.number(champ), pattern)} / {_fmt(r.number(chall), pattern)}")
        cells.append(_fmt(r.number("psi"), "{:.3f}"))
        diff = r.number("pr_auc_diff")
        lo, hi = r.number("pr_auc_diff_lower"), r.number("pr_auc_diff_upper")
        cells.append("–" if math.isnan(diff) else f"{diff:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _reasons(rounds: Sequence[AnalysisRound]) -> list[str]:
    lines = ["## Verdicts", ""]
    for r in rounds:
        checks = ", ".join(
            f"{k.removeprefix('check_')} {v}"
            for k, v in r.numbers.items()
            if k.startswith("check_")
        )
        lines.append(f"{r.round}. **{r.decision}** at {r.percent:g} % — {r.reason}")
        if checks:
            lines.append(f"   (checks: {checks}; test: {r.test})")
    return [*lines, ""]


def _history(events: Sequence[HistoryEvent]) -> list[str]:
    lines = ["## History", "", "| time (UTC) | actor | action | changes | reason |"]
    lines.append("|---|---|---|---|---|")
    for e in events:
        changes = ", ".join(
            f"{k}: {before} → {after}"
            for k, (before, after) in e.changes.items()
            if k in {"challenger_percent", "step_index", "status"}
        )
        reason = e.reason.replace("|", "/").replace("\n", " ")
        lines.append(f"| {e.at:%H:%M:%S} | {e.actor} | {e.action} | {changes} | {reason} |")
    return [*lines, ""]


def markdown(report: RolloutReport, png_name: str | None = REPORT_PNG) -> str:
    """The report as Markdown (with the PNG linked when `png_name` is given)."""
    lines = _header(report)
    if png_name:
        lines += [f"![traffic and metrics per analysis round]({png_name})", ""]
    lines += ["## Per analysis round", "", *_rounds_table(report.rounds)]
    lines += _reasons(report.rounds) + _history(report.events)
    return "\n".join(lines)


# -- PNG ------------------------------------------------------------------------------------
def _series(rounds: Sequence[AnalysisRound], key: str) -> list[float]:
    return [r.number(key) for r in rounds]


def plot(report: RolloutReport, path: Path) -> Path:
    """Four panels over the analysis rounds: traffic share, error rate, p99, PSI/PR-AUC."""
    from matplotlib.ticker import MaxNLocator  # lazy: matplotlib loads only when a report draws

    rounds = report.rounds
    x = [r.round for r in rounds]
    with png_figure(path, nrows=2, ncols=2, figsize=(10, 7), dpi=100) as (fig, axes):
        share, errors, p99, quality = axes.flat
        share.bar(x, [r.percent for r in rounds], color="tab:orange", width=0.6)
        share.set(title="challenger traffic share (%)", ylim=(0, 105))
        for ax, key, title in (
            (errors, "error_rate", "error rate"),
            (p99, "p99_ms", "p99 latency (ms)"),
            (quality, "pr_auc", "PR-AUC (labelled requests)"),
        ):
            for variant, colour in (("champion", "tab:blue"), ("challenger", "tab:orange")):
                ax.plot(x, _series(rounds, f"{variant}_{key}"), "o-", color=colour, label=variant)
            ax.set(title=title)
        psi_axis = quality.twinx()
        psi_axis.plot(x, _series(rounds, "psi"), "s--", color="grey", label="PSI")
        psi_axis.set_ylabel("PSI")
        quality.legend(loc="lower left", fontsize=8)
        for ax, r in ((share, rounds[-1] if rounds else None),):
            if r is not None:
                ax.annotate(r.decision, (r.round, r.percent), textcoords="offset points",
                            xytext=(0, 6), ha="center")  # fmt: skip
        for ax in axes.flat:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("analysis round")
            ax.grid(alpha=0.3)
        s = report.state
        fig.suptitle(
            f"rollout {s.rollout_id}: v{s.challenger_version} vs v{s.champion_version} → {s.status}"
        )
    return path


def write(report: RolloutReport, out_dir: Path) -> RolloutReport:
    """Write report.md and report.png into `out_dir`; the report with its paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot(report, out_dir / REPORT_PNG)
    md = out_dir / REPORT_MD
    md.write_text(markdown(report) + "\n")
    return RolloutReport(report.state, report.rounds, report.events, md, png)


def log_to_mlflow(report: RolloutReport, run_id: str) -> None:
    """Attach the written report files to MLflow run `run_id` (under ``rollout_report/``)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for path in (report.markdown, report.png):
        if path is not None:
            client.log_artifact(run_id, str(path), artifact_path="rollout_report")
