"""Canary verdicts: the rules that turn the statistics into advance, promote, hold or roll back.

The numbers come from `hearth.rollout.statistics`; nothing here reads a database or a clock,
so a verdict is a pure function of the requests and `RolloutParams`, and can be replayed.
The order of the checks is the order of urgency:

1. **Guard rails** act on any sample size and roll back at once: non-finite scores, an
   error-rate spike, requests beyond the hard latency limit (p99 over it).
2. **Minimum samples** per variant before any other verdict: below them, *hold*.
3. **Operations**: error rate (two-proportion z-test with a margin), p99 latency (ratio to
   the champion's), score distribution (PSI against the champion's quantile bins). A failure
   rolls back.
4. **Quality**, once enough labels, frauds and customers with a fraud arrived for both
   variants: PR-AUC and recall at the decision threshold, compared by the stratified
   customer-cluster bootstrap of their differences (see `hearth.rollout.statistics` for
   why customers, not rows), or, with ``quality_test: sequential``, by an always-valid
   confidence sequence (normal mixture over a customer-cluster jackknife standard error),
   whose bounds hold at every round at once, so that looking every few seconds costs no
   error. Either way: significantly worse (upper bound < 0) → roll back; non-inferior
   within the tolerance (lower bound > -tolerance) → pass; otherwise inconclusive.

Then, by mode: a canary *advances* at intermediate steps (operations passed, quality not
shown worse) and *promotes* at its last step only on passed quality, else holds; shadow is
judged like a canary's last step; A/B promotes on a significantly higher PR-AUC, rolls back
when its label budget is spent without a clear win, and holds meanwhile.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hearth.config import CHALLENGER, CHAMPION
from hearth.params import RolloutParams
from hearth.rollout.statistics import (
    Interval,
    RequestRecord,
    VariantSample,
    at_threshold,
    average_precision,
    bootstrap_differences,
    error_rate_p_value,
    has_counterfactual,
    paired_labelled,
    psi,
    sequential_differences,
    split,
)
from hearth.traffic.rollout_state import Mode, RolloutState, Scalar

Decision = Literal["advance", "promote", "hold", "rollback"]
Outcome = Literal["pass", "fail", "inconclusive"]

_SLOW_SHARE = 0.01  # more than 1 % of requests over the limit means the p99 is over it

TEST_NONFINITE = "guard: non-finite or out-of-range scores"
TEST_ERROR_SPIKE = "guard: error-rate spike"
TEST_LATENCY_LIMIT = "guard: p99 latency over the hard limit"
TEST_SAMPLES = "minimum sample sizes"
TEST_ERRORS = "two-proportion z-test, one-sided, with margin"
TEST_P99 = "p99 latency ratio (point estimate)"
TEST_PSI = "population stability index over champion-quantile bins"
TEST_QUALITY = "stratified customer-cluster bootstrap CI of challenger - champion (one-sided)"
TEST_PAIRED = (
    "always-valid confidence sequence of challenger - champion on the same requests (paired: "
    "counterfactual scores; normal mixture, customer-cluster jackknife SE)"
)
TEST_SEQUENTIAL = (
    "always-valid confidence sequence of challenger - champion (normal mixture, "
    "customer-cluster jackknife SE)"
)


@dataclass(frozen=True)
class Check:
    """The outcome of one comparison, with the test it used and a readable detail."""

    name: str
    outcome: Outcome
    test: str
    detail: str


@dataclass(frozen=True)
class Verdict:
    """What to do with the challenger, why, on which numbers and by which test.

    ``advance``: this canary step passed, go to the next; ``promote``: make the challenger
    the champion; ``hold``: not enough evidence yet, keep the weights; ``rollback``: end the
    rollout, everything back to the champion. Record it with `history_fields()`.
    """

    decision: Decision
    reason: str
    test: str
    numbers: dict[str, float] = field(default_factory=dict)
    checks: tuple[Check, ...] = ()

    def history_fields(self) -> dict[str, Any]:
        """Keyword arguments for `StateStore.update` (reason, test, numbers)."""
        numbers: dict[str, Scalar] = {
            k: (v if math.isfinite(v) else None) for k, v in self.numbers.items()
        }
        numbers.update({f"check_{c.name}": c.outcome for c in self.checks})
        return {"reason": self.reason, "test": self.test, "numbers": numbers}

    def mlflow_metrics(self) -> dict[str, float]:
        """The finite numbers, for `mlflow.log_metrics` (MLflow rejects NaN in some stores)."""
        return {k: v for k, v in self.numbers.items() if math.isfinite(v)}

    def mlflow_tags(self) -> dict[str, str]:
        tags = {"rollout.decision": self.decision, "rollout.reason": self.reason[:4000]}
        tags["rollout.test"] = self.test
        tags.update({f"rollout.check.{c.name}": c.outcome for c in self.checks})
        return tags


def _numbers(champion: VariantSample, challenger: VariantSample) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, s in ((CHAMPION, champion), (CHALLENGER, challenger)):
        y, _ = s.labelled()
        out.update(
            {
                f"{name}_n": float(s.n),
                f"{name}_errors": float(s.errors),
                f"{name}_error_rate": s.error_rate,
                f"{name}_p99_ms": s.p99_ms,
                f"{name}_labelled": float(y.size),
                f"{name}_positives": float(y.sum()),
                f"{name}_fraud_customers": float(s.fraud_customers()),
            }
        )
    return out


@dataclass(frozen=True)
class _Comparison:
    """What every check reads: both samples and the params; `nums` collects the numbers."""

    champion: VariantSample
    challenger: VariantSample
    params: RolloutParams
    nums: dict[str, float]


def _guard_rails(c: _Comparison) -> list[Check]:
    """Failed guard rails (each is enough to roll back at once, whatever the sample size)."""
    champion, challenger, params = c.champion, c.challenger, c.params
    failed: list[Check] = []
    bad = challenger.bad_scores
    c.nums["challenger_bad_scores"] = float(bad)
    if bad:
        detail = f"{bad} challenger scores are NaN, infinite or outside [0, 1]"
        failed.append(Check("scores", "fail", TEST_NONFINITE, detail))
    rate, base = challenger.error_rate, champion.error_rate if champion.n else 0.0
    if (
        challenger.errors >= params.guard_min_events
        and rate >= params.guard_error_rate
        and rate > base + params.max_error_rate_increase
    ):
        detail = (
            f"challenger failed {challenger.errors}"
            f" of {challenger.n} requests ({rate:.1%}; champion {base:.1%}, spike limit "
            f"{params.guard_error_rate:.0%})"
        )
        failed.append(Check("error_spike", "fail", TEST_ERROR_SPIKE, detail))
    slow = int(np.count_nonzero(challenger.latency_ms > params.max_p99_latency_ms))
    c.nums["challenger_over_limit"] = float(slow)
    if slow >= params.guard_min_events and slow > _SLOW_SHARE * challenger.n:
        detail = (
            f"{slow} of {challenger.n} "
            f"challenger requests took over {params.max_p99_latency_ms:g} ms (p99 "
            f"{challenger.p99_ms:.0f} ms)"
        )
        failed.append(Check("latency_limit", "fail", TEST_LATENCY_LIMIT, detail))
    return failed


def _operations(c: _Comparison) -> list[Check]:
    champion, challenger, params = c.champion, c.challenger, c.params
    margin = params.max_error_rate_increase
    p = error_rate_p_value(champion.errors, champion.n, challenger.errors, challenger.n, margin)
    c.nums["error_rate_p_value"] = p
    checks = [
        Check(
            "error_rate",
            "fail" if p < params.significance else "pass",
            TEST_ERRORS,
            f"error rate {challenger.error_rate:.2%} vs {champion.error_rate:.2%} "
            f"(margin {margin:.2%}, p = {p:.3g}, alpha {params.significance:g})",
        )
    ]
    limit = max(params.max_p99_ratio * champion.p99_ms, champion.p99_ms + params.p99_slack_ms)
    c.nums["p99_ratio"] = challenger.p99_ms / champion.p99_ms if champion.p99_ms > 0 else math.nan
    checks.append(
        Check(
            "p99_latency",
            "fail" if challenger.p99_ms > limit else "pass",
            TEST_P99,
            f"p99 {challenger.p99_ms:.1f} ms vs {champion.p99_ms:.1f} ms (allowed {limit:.1f} ms)",
        )
    )
    checks.append(_psi_check(c))
    return checks


def _psi_check(c: _Comparison) -> Check:
    reference = c.champion.scores[np.isfinite(c.champion.scores)]
    actual = c.challenger.scores[np.isfinite(c.challenger.scores)]
    if reference.size == 0 or actual.size == 0:
        c.nums["psi"] = math.nan
        return Check("psi", "inconclusive", TEST_PSI, "no answered requests to compare scores")
    value = psi(reference, actual, c.params.psi_bins)
    c.nums["psi"] = value
    outcome: Outcome = "fail" if value > c.params.max_psi else "pass"
    detail = f"PSI {value:.3f} over {c.params.psi_bins} bins (max {c.params.max_psi:g})"
    return Check("psi", outcome, TEST_PSI, detail)


def _enough_labels(sample: VariantSample, params: RolloutParams) -> bool:
    """Labels, frauds and fraud customers to judge quality on; the last is the binding one
    when frauds come in bursts: a cluster bootstrap on a handful of customers cannot give
    an honest interval, however many frauds each contributed."""
    y, _ = sample.labelled()
    return (
        y.size >= params.min_labelled
        and y.sum() >= params.min_positives
        and sample.fraud_customers() >= params.min_fraud_customers
    )


def _paired(c: _Comparison) -> bool:
    """Whether quality is judged paired: asked for, and the requests carry counterfactual
    scores (without them the paired test falls back to the unpaired sequential one)."""
    return c.params.quality_test == "paired" and (
        has_counterfactual(c.champion) or has_counterfactual(c.challenger)
    )


def _too_few_labels(c: _Comparison) -> str | None:
    """Why quality cannot be judged yet (None: it can)."""
    params, nums = c.params, c.nums
    need = (
        f"{params.min_labelled} ({params.min_positives} fraud from "
        f"{params.min_fraud_customers} customers)"
    )
    if _paired(c):
        y, _, _, customers = paired_labelled(c.champion, c.challenger)
        nums["paired_labelled"], nums["paired_fraud_customers"] = float(y.size), customers
        enough = (
            y.size >= params.min_labelled
            and y.sum() >= params.min_positives
            and customers >= params.min_fraud_customers
        )
        return (
            None
            if enough
            else (
                f"labels scored by both models: {y.size} ({int(y.sum())} fraud, {customers} "
                f"customers); need {need}"
            )
        )
    if _enough_labels(c.champion, params) and _enough_labels(c.challenger, params):
        return None
    return (
        f"labels: champion {int(nums['champion_labelled'])} "
        f"({int(nums['champion_positives'])} fraud, "
        f"{int(nums['champion_fraud_customers'])} customers), challenger "
        f"{int(nums['challenger_labelled'])} ({int(nums['challenger_positives'])} fraud, "
        f"{int(nums['challenger_fraud_customers'])} customers); need {need} each"
    )


def _point_estimates(c: _Comparison, thresholds: tuple[float, float]) -> None:
    """Each model's PR-AUC, precision and recall: on its own traffic, or (paired) on the
    requests both models scored, the ones the paired difference compares."""
    if _paired(c):
        y, s_champion, s_challenger, _ = paired_labelled(c.champion, c.challenger)
        judged = ((y, s_champion), (y, s_challenger))
    else:
        judged = (c.champion.labelled(), c.challenger.labelled())
    for variant, (y, scores), threshold in zip(
        (CHAMPION, CHALLENGER), judged, thresholds, strict=True
    ):
        # The vectorised PR-AUC (equal to scikit-learn's, tested): a round of a canary, or
        # thousands of simulated ones, must not pay sklearn's input validation each time.
        c.nums[f"{variant}_pr_auc"] = average_precision(y, scores)
        precision, recall = at_threshold(y, scores, threshold)
        c.nums[f"{variant}_precision"], c.nums[f"{variant}_recall"] = precision, recall
        c.nums[f"{variant}_threshold"] = threshold


def _intervals(
    c: _Comparison, thresholds: tuple[float, float]
) -> tuple[str, str, dict[str, Interval]]:
    """(test, what the bounds are, the bounds of challenger - champion) per quality_test."""
    params = c.params
    alpha, tau, groups = params.significance, params.sequential_tau, params.jackknife_groups
    if params.quality_test in ("sequential", "paired"):
        paired = _paired(c)
        bounds = sequential_differences(
            c.champion, c.challenger, thresholds, paired=paired, alpha=alpha, tau=tau,
            groups=groups, seed=params.seed,
        )  # fmt: skip
        if paired:
            return TEST_PAIRED, "always-valid paired", bounds
        return TEST_SEQUENTIAL, "always-valid", bounds
    bounds = bootstrap_differences(
        c.champion,
        c.challenger,
        thresholds,
        resamples=params.bootstrap_resamples,
        alpha=params.significance,
        seed=params.seed,
    )
    return TEST_QUALITY, f"{1 - params.significance:.0%}", bounds


def _quality(
    c: _Comparison, thresholds: tuple[float, float]
) -> dict[str, tuple[Check, Interval | None]]:
    """PR-AUC and recall checks, with their intervals (None when labels are too few)."""
    params, nums = c.params, c.nums
    too_few = _too_few_labels(c)
    if too_few is not None:
        return {
            name: (Check(name, "inconclusive", TEST_SAMPLES, too_few), None)
            for name in ("pr_auc", "recall")
        }
    _point_estimates(c, thresholds)
    test, bounds, intervals = _intervals(c, thresholds)
    out: dict[str, tuple[Check, Interval | None]] = {}
    for name, tolerance in (
        ("pr_auc", params.pr_auc_tolerance),
        ("recall", params.recall_tolerance),
    ):
        ci = intervals[name]
        nums[f"{name}_diff"], nums[f"{name}_diff_lower"] = ci.estimate, ci.lower
        nums[f"{name}_diff_upper"] = ci.upper
        outcome: Outcome = "inconclusive"
        if ci.lower > -tolerance:
            outcome = "pass"  # non-inferior: even the pessimistic bound is within tolerance
        elif ci.upper < 0:
            outcome = "fail"  # significantly worse than the champion
        detail = (
            f"{name} difference {ci.estimate:+.4f}, {bounds} bounds "
            f"[{ci.lower:+.4f}, {ci.upper:+.4f}], tolerance {tolerance:g}"
        )
        out[name] = (Check(name, outcome, test, detail), ci)
    return out


def _thresholds(threshold: float | Mapping[str, float]) -> tuple[float, float]:
    if isinstance(threshold, Mapping):
        return float(threshold[CHAMPION]), float(threshold[CHALLENGER])
    return float(threshold), float(threshold)


def analyse(
    rows: Iterable[RequestRecord | Mapping[str, Any]],
    params: RolloutParams,
    threshold: float | Mapping[str, float],
    *,
    mode: Mode = "canary",
    last_step: bool = True,
    report_precision: float = 0.9,
) -> Verdict:
    """The verdict on one step's requests (see the module docstring for the rules).

    `threshold` is the decision threshold (for example each model's decline threshold),
    one for both variants or ``{"champion": t0, "challenger": t1}``. `report_precision` is
    no longer used (the verdict reports PR-AUC, not recall at a precision); kept for callers.
    """
    del report_precision
    champion, challenger = split(rows)
    return analyse_samples(
        champion,
        challenger,
        params,
        threshold,
        mode=mode,
        last_step=last_step,
    )


def analyse_samples(
    champion: VariantSample,
    challenger: VariantSample,
    params: RolloutParams,
    threshold: float | Mapping[str, float],
    *,
    mode: Mode = "canary",
    last_step: bool = True,
) -> Verdict:
    """`analyse` on samples already split by variant (what a simulation generates)."""
    nums = _numbers(champion, challenger)
    comparison = _Comparison(champion, challenger, params, nums)
    checks: list[Check] = []

    guards = _guard_rails(comparison)
    if guards:
        return _verdict("rollback", guards[0], nums, guards)

    if min(champion.n, challenger.n) < params.min_samples:
        hold = Check(
            "samples",
            "inconclusive",
            TEST_SAMPLES,
            f"too few requests to judge: champion {champion.n}, challenger "
            f"{challenger.n}; need {params.min_samples} each",
        )
        return _verdict("hold", hold, nums, [hold])

    checks += _operations(comparison)
    quality = _quality(comparison, _thresholds(threshold))
    checks += [check for check, _ in quality.values()]
    failed = [c for c in checks if c.outcome == "fail"]
    if failed:
        return _verdict("rollback", failed[0], nums, checks)
    if mode == "ab":
        return _ab_decision(quality, comparison, checks)
    return _canary_decision(quality, mode, last_step, nums, checks)


def analyse_state(
    rows: Iterable[RequestRecord | Mapping[str, Any]],
    state: RolloutState,
    params: RolloutParams,
    threshold: float | Mapping[str, float],
    report_precision: float = 0.9,
) -> Verdict:
    """`analyse` with the mode and step taken from the rollout's state.

    A canary never hands all traffic to a challenger whose quality is not yet shown: the
    step before 100 % is judged like the last one, so the champion keeps the share of
    traffic (and of labels) that the comparison needs, and reaching 100 % is the promotion.
    """
    steps, index = state.steps, state.step_index
    decisive = state.last_step or steps[index + 1] >= 100
    return analyse(
        rows,
        params,
        threshold,
        mode=state.mode,
        last_step=decisive,
        report_precision=report_precision,
    )


def _canary_decision(
    quality: dict[str, tuple[Check, Interval | None]],
    mode: Mode,
    last_step: bool,
    nums: dict[str, float],
    checks: list[Check],
) -> Verdict:
    if mode == "canary" and not last_step:
        ops = "; ".join(c.detail for c in checks[:3])
        return Verdict(
            "advance",
            f"step passed: {ops}",
            f"{TEST_ERRORS}; {TEST_P99}; {TEST_PSI}",
            nums,
            tuple(checks),
        )
    pending = [c for c, _ in quality.values() if c.outcome != "pass"]
    if pending:
        return _verdict("hold", pending[0], nums, checks, prefix="quality not yet shown: ")
    details = "; ".join(c.detail for c, _ in quality.values())
    test = quality["pr_auc"][0].test
    return Verdict("promote", f"challenger non-inferior: {details}", test, nums, tuple(checks))


def _ab_decision(
    quality: dict[str, tuple[Check, Interval | None]], c: _Comparison, checks: list[Check]
) -> Verdict:
    params, nums = c.params, c.nums
    pr_check, pr_ci = quality["pr_auc"]
    recall_check, _ = quality["recall"]
    if pr_ci is not None and pr_ci.lower > 0 and recall_check.outcome == "pass":
        return Verdict(
            "promote",
            f"challenger significantly better: {pr_check.detail}; {recall_check.detail}",
            pr_check.test,
            nums,
            tuple(checks),
        )
    labelled = min(c.champion.labelled()[0].size, c.challenger.labelled()[0].size)
    if labelled >= params.ab_budget_labelled:
        return Verdict(
            "rollback",
            f"no clear win within the budget of "
            f"{params.ab_budget_labelled} labels per variant: {pr_check.detail}",
            pr_check.test,
            nums,
            tuple(checks),
        )
    return _verdict("hold", pr_check, nums, checks, prefix="no clear winner yet: ")


def _verdict(
    decision: Decision,
    deciding: Check,
    nums: dict[str, float],
    checks: list[Check],
    prefix: str = "",
) -> Verdict:
    return Verdict(decision, prefix + deciding.detail, deciding.test, nums, tuple(checks))
