"""Metrics against sklearn on known inputs; threshold semantics; the PR-curve plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, log_loss, precision_score, roc_auc_score

from hearth.model.evaluate import evaluate, pick_thresholds, pr_curve_png, recall_at_precision
from hearth.params import ThresholdParams


@pytest.fixture
def noisy() -> tuple[np.ndarray, np.ndarray]:
    """2 000 rows, 5 % positives, scores that separate the classes imperfectly."""
    rng = np.random.default_rng(0)
    y = (rng.random(2000) < 0.05).astype(int)
    scores = 1 / (1 + np.exp(-(rng.normal(0, 1, y.size) + 2.5 * y - 3)))
    return y, scores


def test_metrics_match_sklearn(noisy: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = noisy
    m = evaluate(y, s, report_precision=0.9)
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["log_loss"] == pytest.approx(log_loss(y, s))
    assert m["fraud_rate"] == pytest.approx(y.mean())
    assert m["n"] == y.size
    assert 0 <= m["recall_at_precision"] <= 1


def test_recall_at_precision_by_hand() -> None:
    y = np.array([1, 1, 0, 1, 0, 0])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    # Top 2 are both fraud: precision 1 at recall 2/3; adding 0.7 drops precision to 2/3.
    assert recall_at_precision(y, s, 0.9) == pytest.approx(2 / 3)
    # Top 4 hold 3 frauds: precision 0.75 at recall 1.
    assert recall_at_precision(y, s, 0.75) == pytest.approx(1.0)
    assert recall_at_precision(y, np.zeros(6), 0.9) == 0.0  # ties: precision 0.5 only


def test_single_class_gives_nan_not_a_crash() -> None:
    m = evaluate(np.zeros(10), np.linspace(0, 1, 10), report_precision=0.9)
    assert math.isnan(m["pr_auc"]) and math.isnan(m["roc_auc"])
    assert m["fraud_rate"] == 0


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        evaluate([0, 1], [0.1, math.nan], report_precision=0.9)
    with pytest.raises(ValueError, match="3 values"):
        evaluate([0, 1, 1], [0.1, 0.2], report_precision=0.9)


def test_thresholds_meet_their_targets(noisy: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = noisy
    params = ThresholdParams(decline_precision=0.8, review_recall=0.9)
    t = pick_thresholds(y, s, params)
    assert t.review <= t.decline
    assert t.decline_target_met
    declined = s >= t.decline
    assert precision_score(y, declined) >= 0.8
    assert (declined & (y == 1)).sum() / y.sum() == pytest.approx(t.decline_recall)
    assert ((s >= t.review) & (y == 1)).sum() / y.sum() >= 0.9
    # decline is the *lowest* threshold reaching the precision: any lower score fails it.
    lower = np.unique(s[s < t.decline])
    assert all(precision_score(y, s >= v) < 0.8 for v in lower[-20:])
    # review is the *highest* threshold keeping the recall.
    higher = np.unique(s[s > t.review])[0]
    assert ((s >= higher) & (y == 1)).sum() / y.sum() < 0.9


def test_unattainable_decline_precision_never_declines() -> None:
    y = np.array([0, 1, 0, 1, 0, 1])
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])  # top score is a false alarm
    t = pick_thresholds(y, s, ThresholdParams(decline_precision=1.0, review_recall=0.5))
    assert not t.decline_target_met
    assert t.decline == 1.0
    assert t.review == pytest.approx(0.6)  # recall 2/3 >= 0.5, and 0.7 would give 1/3


def test_review_is_capped_at_decline() -> None:
    y = np.array([1, 1, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    t = pick_thresholds(y, s, ThresholdParams(decline_precision=0.5, review_recall=0.9))
    assert t.review <= t.decline


def test_no_fraud_cannot_pick_thresholds() -> None:
    with pytest.raises(ValueError, match="no fraud"):
        pick_thresholds(np.zeros(5), np.linspace(0, 1, 5), ThresholdParams())


def test_pr_curve_png(tmp_path: Path, noisy: tuple[np.ndarray, np.ndarray]) -> None:
    y, s = noisy
    t = pick_thresholds(y, s, ThresholdParams())
    path = pr_curve_png(y, s, tmp_path / "plots" / "pr.png", "test", thresholds=t)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
