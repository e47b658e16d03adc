"""Canary statistics: the evidence of a rollout as columns, and the numbers computed from it.

Inputs are plain per-request records (`RequestRecord`, or mappings with the same keys):
which variant answered, whether it failed, how long it took, the score, and the fraud label
once `/feedback` has delivered it. `split` turns them into one `VariantSample` per variant.
The tests here return numbers, never a decision (that is `hearth.rollout.verdict`): an
unpooled two-proportion z-test for error rates, PSI for score distributions, precision and
recall at a threshold, PR-AUC, and the bootstrap of the challenger - champion differences.

The bootstrap resamples *customers* (all of a customer's requests together), stratified by
whether the customer had a fraud. Frauds come in bursts per customer (card testing,
takeovers) and the variants serve disjoint customers, so rows are not independent draws: a
row bootstrap would treat one burst of 8 as 8 pieces of evidence and give intervals far too
narrow. Nothing here reads a database or a clock: every number is a pure function of its
inputs (and the bootstrap's seed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.stats import norm

from hearth.config import CHALLENGER, CHAMPION

# Probabilities of empty PSI bins are floored here: one empty bin must not make PSI infinite.
_PSI_FLOOR = 1e-4
_BOOTSTRAP_CELLS = 2_000_000  # resamples x rows per bootstrap chunk: ~16 MB per matrix


class RequestRecord(NamedTuple):
    """One answered (or failed) request, as logged by the gateway and joined with labels.

    A named tuple, not a dataclass: an analysis builds one per logged request (tens of
    thousands a round), and a tuple is a third cheaper to build than a frozen dataclass."""

    variant: str
    ok: bool
    latency_ms: float
    score: float | None = None
    label: int | None = None  # None until /feedback delivers it
    customer_id: str | None = None  # None: unknown, the request counts as its own customer
    transaction_id: str | None = None  # None: unknown, never taken for a retry
    # The *other* variant's score of the same transaction (scored afterwards from the logged
    # features), for the paired quality test; None where it was not scored.
    counterfactual: float | None = None


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
    answered request (`cluster_codes`); None: every request is a customer of its own.
    `counterfactual` holds the other variant's score of each answered request (NaN where
    not scored); None: none was."""

    n: int
    errors: int
    latency_ms: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    clusters: np.ndarray | None = None
    counterfactual: np.ndarray | None = None

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
            counterfactual=np.array(
                [np.nan if r.counterfactual is None else r.counterfactual for r in answered],
                float,
            ),
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
        counterfactual=(
            None if row.get("counterfactual") is None else float(row["counterfactual"])
        ),
    )


def split(rows: Iterable[RequestRecord | Mapping[str, Any]]) -> tuple[VariantSample, VariantSample]:
    """(champion, challenger) samples of the records; other variants are ignored."""
    records = [_as_record(r) for r in rows]
    return (
        VariantSample.from_records(r for r in records if r.variant == CHAMPION),
        VariantSample.from_records(r for r in records if r.variant == CHALLENGER),
    )


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
        self.order = order
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
class Interval:
    """A point estimate with its one-sided bounds (each at the bootstrap's alpha)."""

    estimate: float
    lower: float
    upper: float


def bootstrap_differences(
    champion: VariantSample,
    challenger: VariantSample,
    thresholds: tuple[float, float],
    *,
    resamples: int,
    alpha: float,
    seed: int,
) -> dict[str, Interval]:
    """One-sided (`alpha`) bounds of challenger - champion for PR-AUC and recall@threshold.

    `thresholds` are (champion's, challenger's). Each variant is resampled by customer on
    its own: the variants serve disjoint customers, so their resamples are independent.
    """
    rng = np.random.default_rng(seed)
    ranked = tuple(
        _Ranked(*sample.labelled(), threshold, sample.labelled_clusters())
        for sample, threshold in zip((champion, challenger), thresholds, strict=True)
    )
    everything = [r.stats(np.ones((1, r.y.size))) for r in ranked]  # the observed data
    point = [float(everything[1][i][0] - everything[0][i][0]) for i in (0, 1)]
    # Chunks of resamples bound the memory: resamples × rows floats per matrix.
    chunk = max(1, _BOOTSTRAP_CELLS // max(r.y.size for r in ranked))
    diffs: list[np.ndarray] = []
    for done in range(0, resamples, chunk):
        count = min(chunk, resamples - done)
        champion_stats, challenger_stats = (r.stats(r.resample(rng, count)) for r in ranked)
        diffs.append(np.subtract(challenger_stats, champion_stats).T)
    stacked = np.concatenate(diffs)
    lower = np.quantile(stacked, alpha, axis=0)
    upper = np.quantile(stacked, 1 - alpha, axis=0)
    return {
        name: Interval(float(point[i]), float(lower[i]), float(upper[i]))
        for i, name in enumerate(("pr_auc", "recall"))
    }


# -- the sequential test ----------------------------------------------------------------------
# A canary looks at its evidence every round, and every look at a fixed-sample interval is
# another chance to be wrong: twelve looks at a 5 % interval wrongly promote or roll back far
# more often than 5 %. The sequential test bounds the differences with a confidence
# *sequence*: intervals that hold at every look at once, with probability 1 - alpha, however
# many rounds the rollout runs and whenever it stops.


def mixture_radius(se: float, alpha: float, tau: float) -> float:
    """Half-width of the normal-mixture confidence sequence at standard error `se`.

    For an estimate D of a difference theta with D ~ N(theta, se^2) whose evidence grows like
    a Gaussian random walk, the likelihood ratio of "theta ~ N(theta0, tau^2)" against
    "theta = theta0" is a nonnegative martingale under theta0, so by Ville's inequality it
    ever exceeds 1/alpha with probability at most alpha (Robbins' mixture; the mSPRT of
    Johari et al., "Always valid inference", 2017; asymptotically valid with an estimated
    se, Waudby-Smith et al., 2021). The theta0 it never rejects form the interval D +- this
    radius: sqrt(V (V + tau^2) / tau^2 * (2 ln(1/alpha) + ln((V + tau^2) / V))), V = se^2.
    Two-sided at `alpha`, so each one-sided bound errs with probability at most `alpha`.
    The radius is ~3 se where se ~ tau / 3, wider elsewhere: tau is the scale of the
    differences the test is tuned to decide on.
    """
    if not math.isfinite(se):
        return math.inf
    v = se * se
    if v == 0:
        return 0.0
    t2 = tau * tau
    return math.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + math.log((v + t2) / v)))


def _bounds(estimate: float, se: float, alpha: float, tau: float) -> Interval:
    """The sequential test's bounds of one quality difference. The lower bound (promotion
    needs it above -tolerance for *both* metrics) is at `alpha`; the upper bound (either
    metric below 0 rolls back) at `alpha` / 2, so that the two metrics together wrongly
    roll back an equal challenger with probability at most `alpha`."""
    return Interval(
        estimate,
        estimate - mixture_radius(se, alpha, tau),
        estimate + mixture_radius(se, alpha / 2, tau),
    )


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error."""

    estimate: float
    se: float


def _jackknife_groups(
    strata: Iterable[np.ndarray], clusters: int, groups: int, rng: np.random.Generator
) -> np.ndarray:
    """Each of `clusters` customers' group for a delete-a-group jackknife: the customers of
    each stratum (with a fraud, without) dealt into `groups` groups in a random order, as the
    bootstrap stratifies."""
    group_of_cluster = np.zeros(clusters, dtype=np.int64)
    for members in strata:
        group_of_cluster[rng.permutation(members)] = np.arange(members.size) % groups
    return group_of_cluster


def _leave_one_out(group_of_row: np.ndarray, groups: int) -> np.ndarray:
    """The jackknife's replicate weights (groups × rows): replicate g leaves group g out."""
    return (group_of_row[None, :] != np.arange(groups)[:, None]).astype(np.float64)


def _jackknife_se(replicates: np.ndarray, groups: int) -> float:
    """The standard error from a delete-a-group jackknife's replicates (nan unless all are
    finite)."""
    if not np.isfinite(replicates).all():
        return math.nan
    spread = float(np.sum((replicates - replicates.mean()) ** 2))
    return math.sqrt((groups - 1) / groups * spread)


def _jackknife(ranked: _Ranked, groups: int, rng: np.random.Generator) -> list[Estimate]:
    """(PR-AUC, recall) of one variant with their delete-a-group jackknife standard errors.

    Customers are dealt into `groups` groups (`_jackknife_groups`) and each replicate leaves
    one group out: the variance counts customers, not rows, for the reason the bootstrap
    does. `groups` replicates cost what `groups` bootstrap resamples do, a twentieth of the
    bootstrap's.
    """
    strata = (ranked.fraud_clusters, ranked.clean_clusters)
    group_of_cluster = _jackknife_groups(strata, ranked.clusters, groups, rng)
    weights = _leave_one_out(group_of_cluster[ranked.cluster_of_row], groups)
    full = ranked.stats(np.ones((1, ranked.y.size)))
    replicates = ranked.stats(weights)
    return [
        Estimate(float(whole[0]), _jackknife_se(parts, groups))
        for whole, parts in zip(full, replicates, strict=True)
    ]


def sequential_differences(
    champion: VariantSample,
    challenger: VariantSample,
    thresholds: tuple[float, float],
    *,
    paired: bool,
    alpha: float,
    tau: float,
    groups: int,
    seed: int,
) -> dict[str, Interval]:
    """Always-valid bounds of challenger - champion for PR-AUC and recall@threshold.

    Unpaired, each variant is judged on the requests it answered, with its own customer-
    cluster jackknife (`_jackknife`); the variants serve disjoint customers, so the variances
    add. `paired`: both models are judged on the same requests (`_paired_estimates`). The
    bounds are the normal mixture's confidence sequence (`mixture_radius`): each one-sided
    bound holds at every round at once with probability at least 1 - `alpha`.
    """
    rng = np.random.default_rng(seed)
    if paired:
        differences = _paired_estimates(champion, challenger, thresholds, groups, rng)
    else:
        base, new = (
            _jackknife(_Ranked(*s.labelled(), threshold, s.labelled_clusters()), groups, rng)
            for s, threshold in zip((champion, challenger), thresholds, strict=True)
        )
        differences = [
            Estimate(n.estimate - b.estimate, math.hypot(b.se, n.se))
            for b, n in zip(base, new, strict=True)
        ]
    return {
        name: _bounds(d.estimate, d.se, alpha, tau)
        for name, d in zip(("pr_auc", "recall"), differences, strict=True)
    }


def _paired_rows(
    champion: VariantSample, challenger: VariantSample
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, champion's scores, challenger's scores, customer codes) of every labelled
    request of both variants that both models scored: each request's own answer and the
    other model's counterfactual score of it."""
    columns: list[list[np.ndarray]] = [[], [], [], []]
    for i, sample in enumerate((champion, challenger)):
        size = sample.scores.size
        other = (
            sample.counterfactual if sample.counterfactual is not None else np.full(size, np.nan)
        )
        clusters = sample.clusters if sample.clusters is not None else np.arange(size)
        keep = ~np.isnan(sample.labels) & np.isfinite(sample.scores) & np.isfinite(other)
        own, cf = sample.scores[keep], other[keep]
        # 2c and 2c + 1 never collide: the two variants' customer codes stay apart.
        for column, values in zip(
            columns,
            (
                sample.labels[keep].astype(np.int64),
                own if i == 0 else cf,
                cf if i == 0 else own,
                2 * np.asarray(clusters)[keep] + i,
            ),
            strict=True,
        ):
            column.append(values)
    y, champion_scores, challenger_scores, codes = (np.concatenate(c) for c in columns)
    return y, champion_scores, challenger_scores, codes


def paired_labelled(
    champion: VariantSample, challenger: VariantSample
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(labels, champion's scores, challenger's scores, customers with a fraud) of the
    labelled requests both models scored: the paired test's evidence."""
    y, s_champion, s_challenger, codes = _paired_rows(champion, challenger)
    return y, s_champion, s_challenger, int(np.unique(codes[y == 1]).size)


def has_counterfactual(sample: VariantSample) -> bool:
    """Whether any of the sample's requests was scored by the other model too."""
    return sample.counterfactual is not None and bool(np.isfinite(sample.counterfactual).any())


def _paired_estimates(
    champion: VariantSample,
    challenger: VariantSample,
    thresholds: tuple[float, float],
    groups: int,
    rng: np.random.Generator,
) -> list[Estimate]:
    """Challenger - champion of (PR-AUC, recall), both models judged on the same requests.

    Every labelled request of both variants carries both models' scores (its answer and
    the other model's counterfactual score of its logged features), so the difference is
    measured on one sample: what makes a customer's frauds hard to catch is largely the
    same for both models and cancels out of the difference, where two disjoint samples add
    it twice. The standard error is the customer-cluster jackknife of the difference itself
    (one grouping of customers for both models).
    """
    y, s_champion, s_challenger, codes = _paired_rows(champion, challenger)
    uniq, cluster = np.unique(codes, return_inverse=True)
    frauds = np.bincount(cluster, weights=y, minlength=uniq.size)
    strata = (np.flatnonzero(frauds > 0), np.flatnonzero(frauds == 0))
    group_of_row = _jackknife_groups(strata, uniq.size, groups, rng)[cluster]
    full, parts = [], []
    for scores, threshold in zip((s_champion, s_challenger), thresholds, strict=True):
        ranked = _Ranked(y, scores, threshold, cluster)
        full.append(ranked.stats(np.ones((1, y.size))))
        parts.append(ranked.stats(_leave_one_out(group_of_row[ranked.order], groups)))
    return [  # per metric: champion's and challenger's full-sample values, then replicates
        Estimate(float(new[0] - base[0]), _jackknife_se(new_parts - base_parts, groups))
        for base, new, base_parts, new_parts in zip(*full, *parts, strict=True)
    ]
