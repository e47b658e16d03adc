"""Canary analysis: compare the challenger with the champion on live evidence, decide.

Inputs are plain per-request records (`RequestRecord`, or mappings with the same keys):
which variant answered, whether it failed, how long it took, the score, and the fraud label
once `/feedback` has delivered it. Nothing here reads a database or a clock, so a verdict is
a pure function of its inputs and `RolloutParams`, and can be replayed.

The order of the checks is the order of urgency:

1. **Guard rails** act on any sample size and roll back at once: non-finite scores, an
   error-rate spike, requests beyond the hard latency limit (p99 over it).
2. **Minimum samples** per variant before any other verdict: below them, *hold*.
3. **Operations**: error rate (two-proportion z-test with a margin), p99 latency (ratio to
   the champion's), score distribution (PSI against the champion's quantile bins). A failure
   rolls back.
4. **Quality**, once enough labels, frauds and customers with a fraud arrived for both
   variants: PR-AUC and recall at the decision threshold, compared by a bootstrap of their
   differences that resamples *customers* (all of a customer's requests together),
   stratified by whether the customer had a fraud. Frauds come in bursts per customer
   (card testing, takeovers) and the variants serve disjoint customers, so rows are not
   independent draws: a row bootstrap would treat one burst of 8 as 8 pieces of evidence
   and give intervals far too narrow. Significantly worse → roll back; non-inferior within
   the tolerance → pass; otherwise inconclusive.

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
from scipy.stats import norm

from hearth.config import RolloutParams
from hearth.model.evaluate import evaluate
from hearth.traffic.assignment import CHALLENGER, CHAMPION
from hearth.traffic.rollout_state import Mode, RolloutState, Scalar

Decision = Literal["advance", "promote", "hold", "rollback"]
Outcome = Literal["pass", "fail", "inconclusive"]

# Probabilities of empty PSI bins are floored here: one empty bin must not make PSI infinite.
_PSI_FLOOR = 1e-4
_BOOTSTRAP_CELLS = 2_000_000  # resamples x rows per bootstrap chunk: ~16 MB per matrix
_SLOW_SHARE = 0.01  # more than 1 % of requests over the limit means the p99 is over it

TEST_NONFINITE = "guard: non-finite or out-of-range scores"
TEST_ERROR_SPIKE = "guard: error-rate spike"
TEST_LATENCY_LIMIT = "guard: p99 latency over the hard limit"
TEST_SAMPLES = "minimum sample sizes"
TEST_ERRORS = "two-proportion z-test, one-sided, with margin"
TEST_P99 = "p99 latency ratio (point estimate)"
TEST_PSI = "population stability index over champion-quantile bins"
TEST_QUALITY = "stratified customer-cluster bootstrap CI of challenger - champion (one-sided)"


@dataclass(frozen=True)
class RequestRecord:
    """One answered (or failed) request, as logged by the gateway and joined with labels."""

    variant: str
    ok: bool
    latency_ms: float
    score: float | None = None
    label: int | None = None  # None until /feedback delivers it
    customer_id: str | None = None  # None: unknown, the request counts as its own customer
    transaction_id: str | None = None  # None: unknown, never taken for a retry


def cluster_codes(customer_ids: Iterable[str | None]) -> np.ndarray:
    """Integer codes of the customers (0, 1, ...); each None gets a code of its own."""
    codes: dict[str, int] = {}
    out: list[int] = []
    anonymous = 0
    for customer in customer_ids:
        if customer is None:
            # Negative codes cannot collide with the customers' 0, 1, ...
            anonymous -= 1
            out.append(anonymous)
        else:
            out.append(codes.setdefault(customer, len(codes)))
    return np.array(out, dtype=np.int64)


@dataclass(frozen=True)
class VariantSample:
    """One variant's requests, as columns. `scores`/`labels` hold the answered requests only;
    `labels` is NaN where no label arrived yet. `clusters` codes the customer of each
    answered request (`cluster_codes`); None: every request is a customer of its own."""

    n: int
    errors: int
    latency_ms: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    clusters: np.ndarray | None = None

    @classmethod
    def from_records(cls, records: Iterable[RequestRecord]) -> VariantSample:
        rows = list(records)
        answered = _last_answer_per_transaction([r for r in rows if r.ok])
        return cls(
            n=len(rows),
            errors=sum(not r.ok for r in rows),
            latency_ms=np.array([r.latency_ms for r in rows], dtype=np.float64),
            scores=np.array([np.nan if r.score is None else r.score for r in answered], float),
            labels=np.array([np.nan if r.label is None else r.label for r in answered], float),
            clusters=cluster_codes(r.customer_id for r in answered),
        )

    @property
    def error_rate(self) -> float:
        return self.errors / self.n if self.n else math.nan

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.latency_ms, 99)) if self.n else math.nan

    @property
    def bad_scores(self) -> int:
        """Answered requests whose score is missing, non-finite or outside [0, 1]."""
        s = self.scores
        return int(np.count_nonzero(~(np.isfinite(s) & (s >= 0) & (s <= 1))))

    def _labelled_mask(self) -> np.ndarray:
        return ~np.isnan(self.labels) & np.isfinite(self.scores)

    def labelled(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels as 0/1 ints, scores) of the answered requests that have a label."""
        keep = self._labelled_mask()
        return self.labels[keep].astype(np.int64), self.scores[keep]

    def labelled_clusters(self) -> np.ndarray:
        """Customer codes of the rows `labelled()` returns, in the same order."""
        keep = self._labelled_mask()
        if self.clusters is None:
            return np.arange(int(keep.sum()), dtype=np.int64)
        return self.clusters[keep]

    def fraud_customers(self) -> int:
        """Distinct customers with a labelled fraud: the independent evidence on recall."""
        y, _ = self.labelled()
        return int(np.unique(self.labelled_clusters()[y == 1]).size)


def _last_answer_per_transaction(answered: list[RequestRecord]) -> list[RequestRecord]:
    """One answer per transaction: a client that retried (after a 503, a timeout) was
    answered twice, and scores and labels must count the transaction once, as the online
    store does. The attempts themselves still count for errors and latency."""
    last = {r.transaction_id: i for i, r in enumerate(answered) if r.transaction_id is not None}
    return [
        r for i, r in enumerate(answered) if r.transaction_id is None or last[r.transaction_id] == i
    ]


def _as_record(row: RequestRecord | Mapping[str, Any]) -> RequestRecord:
    if isinstance(row, RequestRecord):
        return row
    label = row.get("label", row.get("is_fraud"))
    return RequestRecord(
        variant=str(row["variant"]),
        ok=bool(row.get("ok", True)),
        latency_ms=float(row["latency_ms"]),
        score=None if row.get("score") is None else float(row["score"]),
        label=None if label is None else int(label),
        customer_id=None if row.get("customer_id") is None else str(row["customer_id"]),
        transaction_id=None if row.get("transaction_id") is None else str(row["transaction_id"]),
    )


def split(rows: Iterable[RequestRecord | Mapping[str, Any]]) -> tuple[VariantSample, VariantSample]:
    """(champion, challenger) samples of the records; other variants are ignored."""
    records = [_as_record(r) for r in rows]
    return (
        VariantSample.from_records(r for r in records if r.variant == CHAMPION),
        VariantSample.from_records(r for r in records if r.variant == CHALLENGER),
    )


# -- statistics ------------------------------------------------------------------------------
def error_rate_p_value(errors_a: int, n_a: int, errors_b: int, n_b: int, margin: float) -> float:
    """One-sided p-value of H0: rate_b - rate_a <= margin against H1: it is larger.

    Unpooled two-proportion z-test (a pooled variance assumes equal rates, which a margin
    contradicts). With no variance at all, the p-value is 0 or 1 by the observed difference.
    """
    pa, pb = errors_a / n_a, errors_b / n_b
    excess = pb - pa - margin
    se = math.sqrt(pa * (1 - pa) / n_a + pb * (1 - pb) / n_b)
    if se == 0:
        return 0.0 if excess > 0 else 1.0
    return float(norm.sf(excess / se))


def psi(reference: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of `actual` against `reference`'s quantile bins.

    Bin edges are `reference` quantiles, so each bin holds ~1/bins of the reference; ties in
    the reference merge bins rather than making empty ones. 0.1 is a small, 0.25 a large
    shift by the usual rule of thumb.
    """
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1))[1:-1])
    expected = np.bincount(np.searchsorted(edges, reference, "right"), minlength=edges.size + 1)
    observed = np.bincount(np.searchsorted(edges, actual, "right"), minlength=edges.size + 1)
    e = np.maximum(expected / expected.sum(), _PSI_FLOOR)
    a = np.maximum(observed / observed.sum(), _PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def at_threshold(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float]:
    """(precision, recall) of the rule ``score >= threshold``; NaN where undefined."""
    flagged = s >= threshold
    tp = int(np.count_nonzero(flagged & (y == 1)))
    precision = tp / int(flagged.sum()) if flagged.any() else math.nan
    positives = int(y.sum())
    return precision, (tp / positives if positives else math.nan)


class _Ranked:
    """One variant's labelled scores sorted once, so that bootstrap resamples need no sort.

    A resample is a vector of multiplicities (how often each row was drawn); with the rows
    sorted by score, PR-AUC and recall of every resample are cumulative sums, computed for
    many resamples at once. Tied scores form one group, i.e. one threshold, as in sklearn.
    `clusters` (customer codes, one per row; None: a row is its own customer) are what a
    resample draws: a customer drawn k times counts all of its rows k times.
    """

    def __init__(
        self, y: np.ndarray, s: np.ndarray, threshold: float, clusters: np.ndarray | None = None
    ) -> None:
        order = np.argsort(-s, kind="mergesort")
        self.y = y[order].astype(np.float64)
        self.s = s[order]
        self.group_ends = np.r_[np.flatnonzero(np.diff(self.s)), self.s.size - 1]
        self.flagged = self.s >= threshold
        raw = np.arange(self.y.size) if clusters is None else np.asarray(clusters)[order]
        # row → cluster 0..k-1, and each cluster's stratum: did the customer have a fraud?
        _, self.cluster_of_row = np.unique(raw, return_inverse=True)
        k = int(self.cluster_of_row.max()) + 1 if self.y.size else 0
        frauds = np.bincount(self.cluster_of_row, weights=self.y, minlength=k)
        self.fraud_clusters = np.flatnonzero(frauds > 0)
        self.clean_clusters = np.flatnonzero(frauds == 0)
        self.clusters = k

    def stats(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(PR-AUC, recall at the threshold) per row of `weights` (resamples × rows)."""
        tps = np.cumsum(weights * self.y, axis=1)[:, self.group_ends]
        seen = np.cumsum(weights, axis=1)[:, self.group_ends]
        positives = tps[:, -1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(seen > 0, tps / seen, 0.0)
            recall = tps / positives
            steps = np.diff(np.concatenate([np.zeros_like(positives), recall], axis=1), axis=1)
            ap = np.sum(steps * precision, axis=1)
            hits = (weights * self.y)[:, self.flagged].sum(axis=1)
            return ap, hits / positives[:, 0]

    def resample(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """`count` stratified cluster-bootstrap resamples as row multiplicities (count × rows).

        Customers are drawn with replacement, those with a fraud and those without
        separately: with ~1 % fraud an unstratified draw would give resamples without any
        fraud, whose PR-AUC is undefined. A row's multiplicity is its customer's.
        """
        per_cluster = np.zeros((count, self.clusters))
        for members in (self.fraud_clusters, self.clean_clusters):
            if members.size:
                # Draw cluster numbers, then count them per resample (bincount over offsets).
                draws = rng.integers(0, members.size, size=(count, members.size))
                draws += np.arange(count)[:, None] * members.size
                counts = np.bincount(draws.ravel(), minlength=count * members.size)
                per_cluster[:, members] = counts.reshape(count, members.size)
        return per_cluster[:, self.cluster_of_row]


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision (PR-AUC) exactly as scikit-learn computes it (ties grouped).

    The bootstrap's vectorised form of it; `hearth.model.evaluate` stays the reference for
    point estimates, and a test checks that both agree.
    """
    if not np.any(y == 1):
        return math.nan
    ranked = _Ranked(np.asarray(y), np.asarray(s, dtype=np.float64), math.inf)
    return float(ranked.stats(np.ones((1, ranked.y.size)))[0][0])


@dataclass(frozen=True)
class _Interval:
    estimate: float
    lower: float
    upper: float


def _bootstrap(
    champion: VariantSample,
    challenger: VariantSample,
    thresholds: tuple[float, float],
    params: RolloutParams,
) -> dict[str, _Interval]:
    """One-sided (alpha) bounds of challenger - champion for PR-AUC and recall@threshold.

    Each variant is resampled by customer on its own: the variants serve disjoint
    customers, so their resamples are independent.
    """
    rng = np.random.default_rng(params.seed)
    ranked = tuple(
        _Ranked(*sample.labelled(), threshold, sample.labelled_clusters())
        for sample, threshold in zip((champion, challenger), thresholds, strict=True)
    )
    everything = [r.stats(np.ones((1, r.y.size))) for r in ranked]  # the observed data
    point = [float(everything[1][i][0] - everything[0][i][0]) for i in (0, 1)]
    # Chunks of resamples bound the memory: resamples × rows floats per matrix.
    chunk = max(1, _BOOTSTRAP_CELLS // max(r.y.size for r in ranked))
    diffs: list[np.ndarray] = []
    for done in range(0, params.bootstrap_resamples, chunk):
        count = min(chunk, params.bootstrap_resamples - done)
        champion_stats, challenger_stats = (r.stats(r.resample(rng, count)) for r in ranked)
        diffs.append(np.subtract(challenger_stats, champion_stats).T)
    stacked = np.concatenate(diffs)
    lower = np.quantile(stacked, params.significance, axis=0)
    upper = np.quantile(stacked, 1 - params.significance, axis=0)
    return {
        name: _Interval(float(point[i]), float(lower[i]), float(upper[i]))
        for i, name in enumerate(("pr_auc", "recall"))
    }


# -- checks and verdicts ---------------------------------------------------------------------
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


def _guard_rails(
    champion: VariantSample,
    challenger: VariantSample,
    params: RolloutParams,
    nums: dict[str, float],
) -> list[Check]:
    """Failed guard rails (each is enough to roll back at once, whatever the sample size)."""
    failed: list[Check] = []
    bad = challenger.bad_scores
    nums["challenger_bad_scores"] = float(bad)
    if bad:
        failed.append(
            Check(
                "scores",
                "fail",
                TEST_NONFINITE,
                f"{bad} challenger scores are NaN, infinite or outside [0, 1]",
            )
        )
    rate, base = challenger.error_rate, champion.error_rate if champion.n else 0.0
    if (
        challenger.errors >= params.guard_min_events
        and rate >= params.guard_error_rate
        and rate > base + params.max_error_rate_increase
    ):
        failed.append(
            Check(
                "error_spike",
                "fail",
                TEST_ERROR_SPIKE,
                f"challenger failed {challenger.errors}"
                f" of {challenger.n} requests ({rate:.1%}; champion {base:.1%}, spike limit "
                f"{params.guard_error_rate:.0%})",
            )
        )
    slow = int(np.count_nonzero(challenger.latency_ms > params.max_p99_latency_ms))
    nums["challenger_over_limit"] = float(slow)
    if slow >= params.guard_min_events and slow > _SLOW_SHARE * challenger.n:
        failed.append(
            Check(
                "latency_limit",
                "fail",
                TEST_LATENCY_LIMIT,
                f"{slow} of {challenger.n} "
                f"challenger requests took over {params.max_p99_latency_ms:g} ms (p99 "
                f"{challenger.p99_ms:.0f} ms)",
            )
        )
    return failed


def _operations(
    champion: VariantSample,
    challenger: VariantSample,
    params: RolloutParams,
    nums: dict[str, float],
) -> list[Check]:
    margin = params.max_error_rate_increase
    p = error_rate_p_value(champion.errors, champion.n, challenger.errors, challenger.n, margin)
    nums["error_rate_p_value"] = p
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
    nums["p99_ratio"] = challenger.p99_ms / champion.p99_ms if champion.p99_ms > 0 else math.nan
    checks.append(
        Check(
            "p99_latency",
            "fail" if challenger.p99_ms > limit else "pass",
            TEST_P99,
            f"p99 {challenger.p99_ms:.1f} ms vs {champion.p99_ms:.1f} ms (allowed {limit:.1f} ms)",
        )
    )
    checks.append(_psi_check(champion, challenger, params, nums))
    return checks


def _psi_check(
    champion: VariantSample,
    challenger: VariantSample,
    params: RolloutParams,
    nums: dict[str, float],
) -> Check:
    reference = champion.scores[np.isfinite(champion.scores)]
    actual = challenger.scores[np.isfinite(challenger.scores)]
    if reference.size == 0 or actual.size == 0:
        nums["psi"] = math.nan
        return Check("psi", "inconclusive", TEST_PSI, "no answered requests to compare scores")
    value = psi(reference, actual, params.psi_bins)
    nums["psi"] = value
    outcome: Outcome = "fail" if value > params.max_psi else "pass"
    detail = f"PSI {value:.3f} over {params.psi_bins} bins (max {params.max_psi:g})"
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


def _quality(
    champion: VariantSample,
    challenger: VariantSample,
    thresholds: tuple[float, float],
    params: RolloutParams,
    report_precision: float,
    nums: dict[str, float],
) -> dict[str, tuple[Check, _Interval | None]]:
    """PR-AUC and recall checks, with their intervals (None when labels are too few)."""
    if not (_enough_labels(champion, params) and _enough_labels(challenger, params)):
        detail = (
            f"labels: champion {int(nums['champion_labelled'])} "
            f"({int(nums['champion_positives'])} fraud, "
            f"{int(nums['champion_fraud_customers'])} customers), challenger "
            f"{int(nums['challenger_labelled'])} ({int(nums['challenger_positives'])} fraud, "
            f"{int(nums['challenger_fraud_customers'])} customers); need "
            f"{params.min_labelled} ({params.min_positives} fraud from "
            f"{params.min_fraud_customers} customers) each"
        )
        return {
            name: (Check(name, "inconclusive", TEST_SAMPLES, detail), None)
            for name in ("pr_auc", "recall")
        }
    for variant, s, threshold in (
        (CHAMPION, champion, thresholds[0]),
        (CHALLENGER, challenger, thresholds[1]),
    ):
        y, scores = s.labelled()
        nums[f"{variant}_pr_auc"] = evaluate(y, scores, report_precision)["pr_auc"]
        precision, recall = at_threshold(y, scores, threshold)
        nums[f"{variant}_precision"], nums[f"{variant}_recall"] = precision, recall
        nums[f"{variant}_threshold"] = threshold
    intervals = _bootstrap(champion, challenger, thresholds, params)
    out: dict[str, tuple[Check, _Interval | None]] = {}
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
            f"{name} difference {ci.estimate:+.4f}, {1 - params.significance:.0%} bounds "
            f"[{ci.lower:+.4f}, {ci.upper:+.4f}], tolerance {tolerance:g}"
        )
        out[name] = (Check(name, outcome, TEST_QUALITY, detail), ci)
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
    one for both variants or ``{"champion": t0, "challenger": t1}``.
    """
    champion, challenger = split(rows)
    return analyse_samples(
        champion,
        challenger,
        params,
        threshold,
        mode=mode,
        last_step=last_step,
        report_precision=report_precision,
    )


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


def analyse_samples(
    champion: VariantSample,
    challenger: VariantSample,
    params: RolloutParams,
    threshold: float | Mapping[str, float],
    *,
    mode: Mode = "canary",
    last_step: bool = True,
    report_precision: float = 0.9,
) -> Verdict:
    """`analyse` on samples already split by variant (columns, for large logs)."""
    nums = _numbers(champion, challenger)
    checks: list[Check] = []

    guards = _guard_rails(champion, challenger, params, nums)
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

    checks += _operations(champion, challenger, params, nums)
    quality = _quality(champion, challenger, _thresholds(threshold), params, report_precision, nums)
    checks += [check for check, _ in quality.values()]
    failed = [c for c in checks if c.outcome == "fail"]
    if failed:
        return _verdict("rollback", failed[0], nums, checks)
    if mode == "ab":
        return _ab_decision(quality, challenger, champion, params, nums, checks)
    return _canary_decision(quality, mode, last_step, nums, checks)


def _canary_decision(
    quality: dict[str, tuple[Check, _Interval | None]],
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
    return Verdict(
        "promote", f"challenger non-inferior: {details}", TEST_QUALITY, nums, tuple(checks)
    )


def _ab_decision(
    quality: dict[str, tuple[Check, _Interval | None]],
    challenger: VariantSample,
    champion: VariantSample,
    params: RolloutParams,
    nums: dict[str, float],
    checks: list[Check],
) -> Verdict:
    pr_check, pr_ci = quality["pr_auc"]
    recall_check, _ = quality["recall"]
    if pr_ci is not None and pr_ci.lower > 0 and recall_check.outcome == "pass":
        return Verdict(
            "promote",
            f"challenger significantly better: {pr_check.detail}; {recall_check.detail}",
            TEST_QUALITY,
            nums,
            tuple(checks),
        )
    labelled = min(champion.labelled()[0].size, challenger.labelled()[0].size)
    if labelled >= params.ab_budget_labelled:
        return Verdict(
            "rollback",
            f"no clear win within the budget of "
            f"{params.ab_budget_labelled} labels per variant: {pr_check.detail}",
            TEST_QUALITY,
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
