"""Drift statistics: PSI per feature, a two-sample KS test on scores, and the verdict.

Pure functions over DataFrames and arrays: the flow (`flows/monitor.py`) loads the data,
this module decides whether it drifted, `hearth.monitoring.drift_report` writes it down.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from hearth.features.definitions import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from hearth.params import MonitoringParams

# A bin that is empty on one side would make PSI infinite; this floor keeps it finite while
# still scoring "appeared from nowhere" as a large shift.
_EPS = 1e-4


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.clip(expected / max(expected.sum(), 1), _EPS, None)
    a = np.clip(actual / max(actual.sum(), 1), _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_psi(reference: np.ndarray, live: np.ndarray, bins: int) -> float:
    """PSI over the reference's quantile bins (ties merged, so binary features get 2 bins)."""
    reference = reference[np.isfinite(reference)]
    live = live[np.isfinite(live)]
    if reference.size == 0 or live.size == 0:
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    # side="right": a value equal to an edge falls into the bin above it, on both sides.
    ref_counts = np.bincount(np.searchsorted(edges, reference, "right"), minlength=edges.size + 1)
    live_counts = np.bincount(np.searchsorted(edges, live, "right"), minlength=edges.size + 1)
    return _psi(ref_counts.astype(float), live_counts.astype(float))


def categorical_psi(reference: Iterable[Any], live: Iterable[Any], levels: Iterable[str]) -> float:
    """PSI over the declared levels plus one bucket for anything else."""
    order = [*levels, "<other>"]
    known = set(order)

    def counts(values: Iterable[Any]) -> np.ndarray:
        s = pd.Series([str(v) for v in values], dtype=object)
        s = s.where(s.isin(known), "<other>")
        return s.value_counts().reindex(order, fill_value=0).to_numpy(dtype=float)

    return _psi(counts(reference), counts(live))


@dataclass(frozen=True)
class ScoreShift:
    """Two-sample Kolmogorov–Smirnov test of live scores against reference scores."""

    statistic: float
    pvalue: float
    reference_mean: float
    live_mean: float


def score_shift(reference: np.ndarray, live: np.ndarray) -> ScoreShift:
    result = stats.ks_2samp(reference, live)
    return ScoreShift(
        float(result.statistic),
        float(result.pvalue),
        float(np.mean(reference)),
        float(np.mean(live)),
    )


@dataclass(frozen=True)
class DriftReport:
    """Everything the monitor measured, and whether it calls for retraining."""

    n_reference: int
    n_live: int
    psi: dict[str, float]
    scores: ScoreShift | None
    drifted_features: list[str]
    retrain: bool
    reasons: list[str] = field(default_factory=list)
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature_psi(reference: pd.DataFrame, live: pd.DataFrame, bins: int) -> dict[str, float]:
    """PSI of every model feature present in both frames."""
    out: dict[str, float] = {}
    for name in NUMERIC_FEATURES:
        if name in reference and name in live:
            ref = pd.to_numeric(reference[name], errors="coerce").to_numpy(dtype=float)
            cur = pd.to_numeric(live[name], errors="coerce").to_numpy(dtype=float)
            out[name] = numeric_psi(ref, cur, bins)
    for name, levels in CATEGORICAL_FEATURES.items():
        if name in reference and name in live:
            out[name] = categorical_psi(reference[name], live[name], levels)
    return out


def compare(
    reference: pd.DataFrame,
    live: pd.DataFrame,
    reference_scores: np.ndarray | None,
    live_scores: np.ndarray | None,
    params: MonitoringParams,
) -> DriftReport:
    """Compare live features/scores with the reference; `retrain` when past the thresholds."""
    if len(live) < params.min_live_rows:
        return DriftReport(
            len(reference), len(live), {}, None, [], False,
            skipped=f"{len(live)} live rows, fewer than min_live_rows={params.min_live_rows}",
        )  # fmt: skip
    psi = feature_psi(reference, live, params.psi_bins)
    drifted = sorted(n for n, v in psi.items() if np.isfinite(v) and v >= params.psi_threshold)
    reasons = [f"PSI {name} = {psi[name]:.3f} ≥ {params.psi_threshold}" for name in drifted]
    shift = None
    if reference_scores is not None and live_scores is not None and len(live_scores):
        shift = score_shift(np.asarray(reference_scores), np.asarray(live_scores))
        # Huge samples make any shift "significant": the effect size (the KS statistic) decides.
        if shift.statistic >= params.ks_threshold and shift.pvalue < params.ks_alpha:
            reasons.append(
                f"KS on scores D = {shift.statistic:.3f} ≥ {params.ks_threshold} "
                f"(p = {shift.pvalue:.2g})"
            )
    retrain = len(drifted) >= params.min_drifted_features or any(
        r.startswith("KS") for r in reasons
    )
    return DriftReport(len(reference), len(live), psi, shift, drifted, retrain, reasons)
