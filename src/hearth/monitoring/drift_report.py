"""The drift report: a Markdown table and a PNG (PSI per feature, score distributions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hearth.monitoring.drift import DriftReport
from hearth.observability.figures import png_figure
from hearth.params import MonitoringParams


def markdown(report: DriftReport, params: MonitoringParams) -> str:
    """A human-readable summary: the verdict first, then the numbers behind it."""
    verdict = "**retrain**" if report.retrain else "no action"
    lines = [
        "# Drift report",
        "",
        f"Verdict: {verdict}. Reference rows: {report.n_reference:,}; "
        f"live rows: {report.n_live:,}.",
    ]
    if report.skipped:
        lines += ["", f"Skipped: {report.skipped}."]
        return "\n".join(lines) + "\n"
    lines += ["", *(f"- {r}" for r in report.reasons or ["every feature within its threshold"])]
    if report.scores is not None:
        s = report.scores
        lines += [
            "",
            "## Scores",
            "",
            f"KS D = {s.statistic:.4f} (p = {s.pvalue:.3g}, threshold {params.ks_threshold}); "
            f"mean score {s.reference_mean:.4f} → {s.live_mean:.4f}.",
        ]
    lines += ["", "## PSI per feature", "", "| feature | PSI | drifted |", "|---|---:|:---:|"]
    for name, value in sorted(report.psi.items(), key=lambda kv: -np.nan_to_num(kv[1])):
        flag = "yes" if name in report.drifted_features else ""
        lines.append(f"| {name} | {value:.4f} | {flag} |")
    lines += ["", f"PSI threshold {params.psi_threshold}; {params.psi_bins} quantile bins."]
    return "\n".join(lines) + "\n"


def plot(
    report: DriftReport,
    reference_scores: np.ndarray | None,
    live_scores: np.ndarray | None,
    params: MonitoringParams,
    out: Path,
) -> Path:
    """PSI bars (threshold marked) and the two score histograms, side by side."""
    with png_figure(out, save_dpi=80, nrows=1, ncols=2, figsize=(11, 4.5)) as (fig, axes):
        left, right = axes
        names = sorted(report.psi, key=lambda n: np.nan_to_num(report.psi[n]))
        values = [np.nan_to_num(report.psi[n]) for n in names]
        colors = ["tab:red" if n in report.drifted_features else "tab:blue" for n in names]
        left.barh(names, values, color=colors)
        left.axvline(params.psi_threshold, color="tab:red", linestyle="--", label="threshold")
        left.set_xlabel("PSI (live vs reference)")
        left.legend(loc="lower right")
        if reference_scores is not None and live_scores is not None and len(live_scores):
            bins = np.linspace(0, 1, 41)
            right.hist(reference_scores, bins=bins, alpha=0.5, density=True, label="reference")
            right.hist(live_scores, bins=bins, alpha=0.5, density=True, label="live")
            right.set_yscale("log")
            right.legend()
        right.set_xlabel("fraud probability")
        fig.suptitle("Drift: " + ("retrain" if report.retrain else "no action"))
    return out
