"""Canary analysis on synthetic request logs of known quality."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from hearth.model.evaluate import evaluate
from hearth.params import RolloutParams
from hearth.rollout.statistics import (
    RequestRecord,
    average_precision,
    error_rate_p_value,
    psi,
    split,
)
from hearth.rollout.verdict import (
    TEST_ERROR_SPIKE,
    TEST_ERRORS,
    TEST_LATENCY_LIMIT,
    TEST_NONFINITE,
    TEST_PSI,
    TEST_QUALITY,
    TEST_SAMPLES,
    Verdict,
    analyse,
    analyse_state,
)
from hearth.traffic.rollout_state import HistoryEvent, new_rollout

PARAMS = RolloutParams()
THRESHOLD = 0.5


def requests(
    variant: str,
    n: int,
    seed: int,
    quality: float = 1.0,
    error_rate: float = 0.0,
    latency_ms: float = 5.0,
    labelled: float = 1.0,
    fraud_rate: float = 0.03,
) -> list[RequestRecord]:
    """`n` requests of a model whose separation of fraud grows with `quality`.

    Legitimate scores are the same for every quality (so the score distribution barely
    moves); fraud scores rise with it. `labelled` is the share that got a label back.
    """
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < fraud_rate).astype(int)
    logit = -4.0 + 4.0 * quality * y + rng.normal(0, 1.2, n)
    scores = 1 / (1 + np.exp(-logit))
    failed = rng.random(n) < error_rate
    has_label = rng.random(n) < labelled
    latency = rng.lognormal(math.log(latency_ms), 0.3, n)
    return [
        RequestRecord(
            variant=variant,
            ok=not failed[i],
            latency_ms=float(latency[i]),
            score=None if failed[i] else float(scores[i]),
            label=int(y[i]) if has_label[i] else None,
        )
        for i in range(n)
    ]


def champion(n: int = 6000, **kw: float) -> list[RequestRecord]:
    return requests("champion", n, seed=1, **kw)


def challenger(n: int = 6000, **kw: float) -> list[RequestRecord]:
    return requests("challenger", n, seed=2, **kw)


def judge(rows: list[RequestRecord], **kw: object) -> Verdict:
    return analyse(rows, PARAMS, THRESHOLD, **kw)  # type: ignore[arg-type]


# -- statistics ----------------------------------------------------------------------------
def test_fast_average_precision_equals_sklearn_and_evaluate() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = (rng.random(300) < 0.1).astype(int)
        s = np.round(rng.random(300) + 0.3 * y, 2)  # rounded: plenty of ties
        expected = average_precision_score(y, s)
        assert average_precision(y, s) == pytest.approx(expected, abs=1e-12)
        assert evaluate(y, s, 0.9)["pr_auc"] == pytest.approx(expected, abs=1e-12)


def test_psi_is_small_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.beta(1, 20, 20_000)
    assert psi(ref, rng.beta(1, 20, 5000)) < 0.02
    assert psi(ref, np.clip(ref[:5000] * 3, 0, 1)) > 0.25
    # A constant reference (a broken champion) merges its bins instead of crashing.
    assert math.isfinite(psi(np.full(100, 0.01), rng.random(100)))


def test_error_rate_test_with_margin() -> None:
    assert error_rate_p_value(10, 1000, 12, 1000, margin=0.01) > 0.5
    assert error_rate_p_value(10, 1000, 60, 1000, margin=0.01) < 1e-6
    assert error_rate_p_value(0, 100, 0, 100, margin=0.0) == 1.0


# -- verdicts ------------------------------------------------------------------------------
def test_better_challenger_advances_then_is_promoted() -> None:
    rows = champion() + challenger(quality=1.4)
    step = judge(rows, last_step=False)
    assert step.decision == "advance", step.reason
    assert "psi" in step.test.lower() or "population" in step.test

    final = judge(rows, last_step=True)
    assert final.decision == "promote", final.reason
    assert final.test == TEST_QUALITY
    n = final.numbers
    assert n["challenger_pr_auc"] > n["champion_pr_auc"] and n["pr_auc_diff_lower"] > -0.02
    assert n["challenger_n"] == 6000 and n["psi"] < PARAMS.max_psi
    # The bootstrap's vectorised statistics agree with the plain point estimates.
    assert n["recall_diff"] == pytest.approx(n["challenger_recall"] - n["champion_recall"])
    assert n["pr_auc_diff"] == pytest.approx(n["challenger_pr_auc"] - n["champion_pr_auc"])
    assert {c.name: c.outcome for c in final.checks} == {
        "error_rate": "pass",
        "p99_latency": "pass",
        "psi": "pass",
        "pr_auc": "pass",
        "recall": "pass",
    }


def test_verdict_records_into_history_and_mlflow_shapes() -> None:
    verdict = judge(champion() + challenger(quality=1.4))
    event = HistoryEvent(
        rollout_id="r1", actor="flow", action=verdict.decision, **verdict.history_fields()
    )
    assert HistoryEvent.model_validate_json(event.model_dump_json()) == event
    assert event.numbers["check_pr_auc"] == "pass" and event.test == TEST_QUALITY
    metrics = verdict.mlflow_metrics()
    assert metrics and all(math.isfinite(v) for v in metrics.values())
    assert verdict.mlflow_tags()["rollout.decision"] == "promote"


def test_worse_challenger_is_rolled_back_on_quality_even_mid_rollout() -> None:
    for last_step in (False, True):
        verdict = judge(champion() + challenger(quality=0.25), last_step=last_step)
        assert verdict.decision == "rollback", verdict.reason
        assert verdict.test == TEST_QUALITY and "pr_auc" in verdict.reason
        assert verdict.numbers["pr_auc_diff_upper"] < 0


@pytest.mark.parametrize("n", [3, 5, 40])
def test_erroring_challenger_is_rolled_back_by_the_guard_rail_on_tiny_samples(n: int) -> None:
    failing = challenger(n, error_rate=1.0)
    verdict = judge(champion(1000) + failing)
    assert verdict.decision == "rollback" and verdict.test == TEST_ERROR_SPIKE, verdict.reason


def test_slow_challenger_is_rolled_back_by_the_guard_rail_on_tiny_samples() -> None:
    slow = challenger(8, latency_ms=PARAMS.max_p99_latency_ms * 3)
    verdict = judge(champion(1000) + slow)
    assert verdict.decision == "rollback" and verdict.test == TEST_LATENCY_LIMIT, verdict.reason


def test_one_slow_request_or_one_error_is_not_a_spike() -> None:
    rows = challenger(20)
    rows[0] = RequestRecord("challenger", True, PARAMS.max_p99_latency_ms * 5, 0.1)
    rows[1] = RequestRecord("challenger", False, 3.0)
    verdict = judge(champion(1000) + rows)
    assert verdict.decision == "hold" and verdict.test == TEST_SAMPLES, verdict.reason


@pytest.mark.parametrize("bad", [math.nan, math.inf, -0.1, 1.5, None])
def test_non_finite_scores_roll_back_at_once(bad: float | None) -> None:
    rows = challenger(10)
    rows[3] = RequestRecord("challenger", True, 4.0, bad)
    verdict = judge(champion() + rows)
    assert verdict.decision == "rollback" and verdict.test == TEST_NONFINITE
    assert verdict.numbers["challenger_bad_scores"] == 1


def test_too_few_samples_hold() -> None:
    verdict = judge(champion() + challenger(PARAMS.min_samples - 1))
    assert verdict.decision == "hold" and verdict.test == TEST_SAMPLES
    assert str(PARAMS.min_samples) in verdict.reason


def test_without_labels_a_canary_advances_but_does_not_promote() -> None:
    rows = champion(labelled=0.0) + challenger(quality=1.4, labelled=0.0)
    assert judge(rows, last_step=False).decision == "advance"
    final = judge(rows, last_step=True)
    assert final.decision == "hold" and "labels" in final.reason, final.reason


def test_a_higher_error_rate_below_the_spike_is_caught_by_the_z_test() -> None:
    rows = champion(error_rate=0.005) + challenger(error_rate=0.04)
    verdict = judge(rows, last_step=False)
    assert verdict.decision == "rollback" and verdict.test == TEST_ERRORS, verdict.reason
    assert verdict.numbers["error_rate_p_value"] < PARAMS.significance


def test_slower_challenger_under_the_hard_limit_is_caught_by_the_p99_ratio() -> None:
    verdict = judge(champion(latency_ms=40) + challenger(latency_ms=120), last_step=False)
    assert verdict.decision == "rollback" and "p99" in verdict.reason, verdict.reason


def test_shifted_score_distribution_rolls_back_on_psi() -> None:
    shifted = [
        RequestRecord(r.variant, r.ok, r.latency_ms, min(1.0, (r.score or 0) * 6), r.label)
        for r in challenger(labelled=0.0)
    ]
    verdict = judge(champion(labelled=0.0) + shifted, last_step=False)
    assert verdict.decision == "rollback" and verdict.test == TEST_PSI, verdict.reason


def test_ab_promotes_a_clear_winner_holds_a_tie_and_stops_at_the_budget() -> None:
    ab = {"mode": "ab"}
    assert judge(champion() + challenger(quality=1.6), **ab).decision == "promote"
    tie = champion() + requests("challenger", 6000, seed=3)
    assert judge(tie, **ab).decision == "hold"
    small_budget = PARAMS.model_copy(update={"ab_budget_labelled": 1000})
    spent = analyse(tie, small_budget, THRESHOLD, mode="ab")
    assert spent.decision == "rollback" and "budget" in spent.reason


def test_shadow_is_judged_like_a_last_step_and_state_drives_the_mode() -> None:
    state = new_rollout("1", "2", PARAMS, mode="shadow")
    rows = champion() + challenger(quality=1.4)
    assert analyse_state(rows, state, PARAMS, THRESHOLD).decision == "promote"
    first_step = new_rollout("1", "2", PARAMS)
    assert analyse_state(rows, first_step, PARAMS, THRESHOLD).decision == "advance"


def test_mappings_from_the_prediction_log_are_accepted_with_per_variant_thresholds() -> None:
    rows = [
        {
            "variant": r.variant,
            "ok": r.ok,
            "latency_ms": r.latency_ms,
            "score": r.score,
            "is_fraud": r.label,
        }
        for r in champion() + challenger(quality=1.4)
    ]
    verdict = analyse(rows, PARAMS, {"champion": 0.5, "challenger": 0.6})
    assert verdict.decision == "promote"
    assert verdict.numbers["challenger_threshold"] == 0.6


def test_verdicts_are_reproducible() -> None:
    rows = champion() + challenger(quality=1.1)
    assert judge(rows).numbers == judge(rows).numbers


# -- frauds in bursts per customer ---------------------------------------------------------
def bursty_requests(variant: str, seed: int, fraud_customers: int = 30) -> list[dict[str, Any]]:
    """Prediction-log rows of a model where each fraud customer's burst is alike.

    500 legitimate customers with 6 requests each, and `fraud_customers` customers with a
    burst of 6 frauds (a takeover, card testing) that share how detectable they are: one
    burst scores high throughout, the next low throughout. Both variants are the same model.
    """
    rng = np.random.default_rng(seed)
    rows = [(f"{variant}-{c}", rng.normal(-4.0, 1.2), 0) for c in range(500) for _ in range(6)]
    for c in range(fraud_customers):
        detectable = rng.normal(0.0, 2.0)
        rows += [(f"{variant}-f{c}", detectable + rng.normal(0, 0.3), 1) for _ in range(6)]
    return [
        {"variant": variant, "latency_ms": 5.0, "score": float(1 / (1 + np.exp(-z))),
         "is_fraud": y, "customer_id": customer}
        for customer, z, y in rows
    ]  # fmt: skip


def test_bursty_fraud_per_customer_does_not_roll_back_an_equal_challenger() -> None:
    """The failure that once rolled back a better model: frauds in bursts per customer.

    Champion and challenger are the same model on different customers, so the challenger
    must be rolled back on quality in at most ~alpha of the rollouts per metric (PR-AUC,
    recall: ~10 % here). Resampling rows treats a burst of 6 as 6 independent frauds and
    rolls back about a third of them; resampling customers is honest.
    """
    params = RolloutParams(bootstrap_resamples=200, min_labelled=100)
    rollouts = [
        bursty_requests("champion", 2 * i) + bursty_requests("challenger", 2 * i + 1)
        for i in range(50)
    ]
    by_customer = [analyse(rows, params, THRESHOLD).decision for rows in rollouts]
    anonymous = [[{**r, "customer_id": None} for r in rows] for rows in rollouts]
    by_row = [analyse(rows, params, THRESHOLD).decision for rows in anonymous]
    assert by_row.count("rollback") >= 12  # the failure mode is there (row bootstrap)
    assert by_customer.count("rollback") <= 7, by_customer


def test_quality_waits_for_enough_customers_with_a_fraud() -> None:
    """Thirty frauds from five customers are five pieces of evidence, not thirty."""
    rows = bursty_requests("champion", 0, fraud_customers=5)
    rows += bursty_requests("challenger", 1, fraud_customers=5)
    verdict = analyse(rows, RolloutParams(min_labelled=100), THRESHOLD)
    assert verdict.numbers["challenger_positives"] == 30 >= PARAMS.min_positives
    assert verdict.numbers["challenger_fraud_customers"] == 5
    assert verdict.decision == "hold" and "5 customers" in verdict.reason
    assert {c.name: c.test for c in verdict.checks}["pr_auc"] == TEST_SAMPLES


def test_a_retried_transaction_counts_once_in_quality_and_twice_as_attempts() -> None:
    """A client that retried was answered twice: its label must not weigh double."""
    rows = [
        RequestRecord("champion", False, 9.0, transaction_id="t1"),  # the 503 before the retry
        RequestRecord("champion", True, 3.0, 0.9, 1, "c1", transaction_id="t1"),
        RequestRecord("champion", True, 3.5, 0.8, 1, "c1", transaction_id="t1"),  # answered again
        RequestRecord("champion", True, 2.0, 0.1, 0, "c2", transaction_id="t2"),
        RequestRecord("champion", True, 2.0, 0.2, 0, "c3"),  # no id: never a retry
        RequestRecord("champion", True, 2.0, 0.3, 0, "c4"),
    ]
    champion, _ = split(rows)
    assert (champion.n, champion.errors, champion.latency_ms.size) == (6, 1, 6)
    labels, scores = champion.labelled()
    assert labels.tolist() == [1, 0, 0, 0]
    assert scores.tolist() == [0.8, 0.1, 0.2, 0.3]  # the last answer of t1
