"""Canary analysis on synthetic request logs of known quality."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from hearth.bench import rollout_sim
from hearth.model.evaluate import evaluate
from hearth.params import RolloutParams
from hearth.rollout.statistics import (
    RequestRecord,
    average_precision,
    error_rate_p_value,
    mixture_radius,
    psi,
    split,
)
from hearth.rollout.verdict import (
    TEST_ERROR_SPIKE,
    TEST_ERRORS,
    TEST_LATENCY_LIMIT,
    TEST_NONFINITE,
    TEST_PAIRED,
    TEST_PSI,
    TEST_QUALITY,
    TEST_SAMPLES,
    TEST_SEQUENTIAL,
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


# -- the sequential test -------------------------------------------------------------------
SEQUENTIAL = RolloutParams(quality_test="sequential")
PAIRED = RolloutParams(quality_test="paired")


def test_the_mixture_bounds_hold_at_every_look_where_a_fixed_interval_does_not() -> None:
    """2 000 estimates of a zero difference, looked at 60 times each as evidence grows: the
    one-look 95 % bound is crossed by a third of them at some look, the confidence sequence
    by at most alpha (Ville's inequality), at the price of a wider bound at each look."""
    rng = np.random.default_rng(0)
    looks = np.arange(1, 61)
    walks = np.cumsum(rng.normal(0, 1, (2000, looks.size)), axis=1)
    estimate, se = walks / looks, 1 / np.sqrt(looks)
    radius = np.array([mixture_radius(float(x), 0.05, 0.3) for x in se])
    assert np.mean((estimate > 1.645 * se).any(axis=1)) > 0.25
    assert np.mean((estimate > radius).any(axis=1)) <= 0.05
    assert np.all(radius > 1.645 * se) and np.all(np.diff(radius) < 0)
    assert mixture_radius(0.0, 0.05, 0.1) == 0 and mixture_radius(math.nan, 0.05, 0.1) == math.inf


def test_the_sequential_test_promotes_a_better_and_rolls_back_a_worse_challenger() -> None:
    better = analyse(champion() + challenger(quality=1.4), SEQUENTIAL, THRESHOLD)
    assert better.decision == "promote" and better.test == TEST_SEQUENTIAL, better.reason
    assert "always-valid" in better.reason
    worse = analyse(champion() + challenger(quality=0.25), SEQUENTIAL, THRESHOLD)
    assert worse.decision == "rollback" and worse.test == TEST_SEQUENTIAL, worse.reason
    assert worse.numbers["pr_auc_diff_upper"] < 0


def paired_requests(n: int, seed: int, gap: float) -> list[RequestRecord]:
    """Both variants' requests, each with the other model's score of it: two models that
    score a transaction alike (the same latent, plus a little noise of their own)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.03).astype(int)
    common = rng.normal(0, 1.2, n)
    champion_z = -4.0 + 4.0 * y + common + rng.normal(0, 0.4, n)
    challenger_z = -4.0 + (4.0 + gap) * y + common + rng.normal(0, 0.4, n)
    s0, s1 = 1 / (1 + np.exp(-champion_z)), 1 / (1 + np.exp(-challenger_z))
    to_challenger = rng.random(n) < 0.5
    return [
        RequestRecord(
            "challenger" if to_challenger[i] else "champion", True, 5.0,
            float(s1[i] if to_challenger[i] else s0[i]), int(y[i]), f"c{i}",
            counterfactual=float(s0[i] if to_challenger[i] else s1[i]),
        )
        for i in range(n)
    ]  # fmt: skip


def test_the_paired_test_judges_both_models_on_the_same_requests() -> None:
    rows = paired_requests(8000, seed=3, gap=0.8)
    paired = analyse(rows, PAIRED, THRESHOLD)
    unpaired = analyse(rows, SEQUENTIAL, THRESHOLD)
    assert paired.test == TEST_PAIRED and unpaired.test == TEST_SEQUENTIAL
    n = paired.numbers
    # Each model's PR-AUC is its score of every labelled request, both variants' traffic.
    y = np.array([r.label for r in rows])
    own = np.array([r.score if r.variant == "champion" else r.counterfactual for r in rows])
    assert n["champion_pr_auc"] == pytest.approx(average_precision(y, own))
    assert n["pr_auc_diff"] == pytest.approx(n["challenger_pr_auc"] - n["champion_pr_auc"])
    assert n["paired_labelled"] == 8000
    # What makes a fraud hard is shared, so it cancels: the paired bounds are far narrower.
    width = n["pr_auc_diff_upper"] - n["pr_auc_diff_lower"]
    unpaired_width = unpaired.numbers["pr_auc_diff_upper"] - unpaired.numbers["pr_auc_diff_lower"]
    assert width < unpaired_width / 2
    assert paired.decision == "promote", paired.reason
    worse = analyse(paired_requests(8000, seed=4, gap=-1.5), PAIRED, THRESHOLD)
    assert worse.decision == "rollback" and worse.test == TEST_PAIRED, worse.reason
    # Without counterfactual scores (not scored yet, or no model to score with), the
    # paired test falls back to the unpaired sequential one.
    plain = [
        RequestRecord(r.variant, r.ok, r.latency_ms, r.score, r.label, r.customer_id) for r in rows
    ]
    assert analyse(plain, PAIRED, THRESHOLD).test == TEST_SEQUENTIAL


@pytest.mark.parametrize("params", [SEQUENTIAL, PAIRED], ids=["sequential", "paired"])
def test_guard_rails_act_at_once_whatever_the_quality_test(params: RolloutParams) -> None:
    erroring = analyse(champion(1000) + challenger(5, error_rate=1.0), params, THRESHOLD)
    assert erroring.decision == "rollback" and erroring.test == TEST_ERROR_SPIKE
    slow = challenger(8, latency_ms=params.max_p99_latency_ms * 3)
    verdict = analyse(champion(1000) + slow, params, THRESHOLD)
    assert verdict.decision == "rollback" and verdict.test == TEST_LATENCY_LIMIT
    broken = challenger(10)
    broken[3] = RequestRecord("challenger", True, 4.0, math.nan)
    assert analyse(champion() + broken, params, THRESHOLD).test == TEST_NONFINITE


def test_simulated_canaries_on_generated_traffic() -> None:
    """A few canaries of `make bench-rollout` (which runs 200 per challenger), through the
    real verdict code on the main job's clock: the worse challenger is never promoted, the
    equal one never rolled back on evidence (it may hold until the budget's rollback), the
    main job's kind of retrained challenger (~0.08 PR-AUC better) is promoted."""
    # Rounds every 10 s and a 90 s budget: few rounds, so that the test takes seconds.
    design = replace(rollout_sim.designs()["paired"], step_wait_s=10.0, max_wait_s=90.0)
    arms = (
        rollout_sim.Arm("worse", -0.05),
        rollout_sim.Arm("equal", 0.0),
        rollout_sim.Arm("main job's", 0.08),
    )
    worse, equal, better = rollout_sim.simulate(design, 3, arms=arms)
    assert worse.count("promoted") == 0, worse.outcomes
    assert equal.count("rolled back") == 0, equal.outcomes
    assert better.count("promoted") == 3, better.outcomes
    assert all(o.by in {"pr_auc", "recall", "budget"} for o in worse.outcomes)
    assert rollout_sim.wilson(0, 200)[2] == pytest.approx(0.0188, abs=1e-3)


# -- counterfactual scores (the paired test's input in the rollout flow) ----------------------
class _Scorer:
    """A model that scores a feature row by one of its fields (the version's own)."""

    def __init__(self, version: str) -> None:
        self.version, self.calls = version, 0

    def predict_records(self, records: list[dict[str, Any]]) -> np.ndarray:
        self.calls += len(records)
        return np.array([r[f"x{self.version}"] for r in records])


def test_counterfactual_scores_each_request_once_with_the_model_that_did_not_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hearth.rollout import counterfactual
    from hearth.traffic.prediction_log import PredictionLog, PredictionRecord

    state = new_rollout("1", "2", PARAMS)
    db = PredictionLog(tmp_path / "serving.sqlite")

    def log(transaction: str, variant: str, version: str) -> None:
        db.record_entries([
            PredictionRecord(
                transaction, f"r-{transaction}", variant, version, 0.5, "approve", 3.0,
                features={"x1": 0.1, "x2": 0.2}, rollout_id=state.rollout_id,
            )
        ])  # fmt: skip

    @contextmanager
    def using(_: object) -> Iterator[PredictionLog]:
        yield db

    scorers = {v: _Scorer(v) for v in ("1", "2")}
    monkeypatch.setattr(counterfactual, "using_prediction_log", using)
    monkeypatch.setattr(counterfactual, "_load_scorer", lambda _s, _m, v: scorers[v])
    log("t1", "champion", "1")
    log("t2", "challenger", "2")
    rows = [{"transaction_id": "t1"}, {"transaction_id": "t2"}, {"transaction_id": "t3"}]
    assert counterfactual.annotate(None, "m", state, rows) == 2  # type: ignore[arg-type]
    # The champion's request scored by the challenger (v2), and the other way round.
    assert [r.get("counterfactual") for r in rows] == [0.2, 0.1, None]
    log("t3", "champion", "1")
    assert counterfactual.annotate(None, "m", state, rows) == 3  # type: ignore[arg-type]
    assert scorers["2"].calls == 2 and scorers["1"].calls == 1  # each request scored once

    def unreachable(*_: object) -> None:
        raise ConnectionError("MLflow is down\nand a tutorial")

    log("t4", "challenger", "2")
    monkeypatch.setattr(counterfactual, "_load_scorer", unreachable)
    other = new_rollout("1", "2", PARAMS)  # a new rollout: its models load again, and fail
    assert counterfactual.annotate(None, "m", other, rows) == 0  # type: ignore[arg-type]
    db.close()
