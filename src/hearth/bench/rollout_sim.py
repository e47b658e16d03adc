"""The canary on generated traffic: how often it promotes, rolls back, and how fast.

No server, no database: each simulated rollout generates a stream of transactions at the
main job's rate (frauds in bursts per customer, labels arriving a few seconds later, sticky
customer assignment to the challenger's share), scores them with two generated models at a
chosen PR-AUC apart, and drives the real verdict code (`hearth.rollout.verdict`) round by
round on the rollout flow's clock: wait, analyse everything so far, act (advance, hold,
promote, roll back; roll back a hold once the time budget is spent, as the flow does).

Each model is binormal: a legitimate transaction's latent score is N(0, 1), a fraud's is
N(mu, 1), half of whose variance is shared by the customer's burst (a burst scores alike,
which is what makes the customer, not the row, the unit of evidence); `mu` is found for a
target PR-AUC at the fraud share. Scores are the latent through one logistic, the same for
both models, so an equal challenger has the champion's score distribution.

`hearth.bench.rollout_sim.main` (`make bench-rollout`) runs the full comparison; the suite
runs `simulate` with a few rollouts.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hearth.params import RolloutParams, load_params
from hearth.rollout.statistics import VariantSample
from hearth.rollout.verdict import Verdict, analyse_samples

_CUSTOMER_SHARE = 0.5  # of a fraud's latent variance, shared by its customer's burst
# How alike the two models score one transaction (correlation of their latent scores), as
# measured on a main job's canary: 0.77 on legitimate transactions, 0.89 on frauds.
_MODELS_ALIKE = {0: 0.77, 1: 0.89}
_LOGIT_SCALE, _LOGIT_SHIFT = 1.2, -4.0  # latent → score in (0, 1): mostly small, like fraud
_REVIEW_RECALL = 0.9  # each model's threshold: the score that flags 90 % of fraud


@dataclass(frozen=True)
class Traffic:
    """The generated traffic: the main job's replay, as measured in its rollout reports
    (~155 requests/s, ~3 % fraud, ~3 frauds per customer with a fraud, labels 3 s later)."""

    rate_per_s: float = 155.0
    fraud_share: float = 0.029
    burst_mean: float = 3.0  # frauds per customer with a fraud
    burst_span_s: float = 20.0  # a burst's frauds come within this many seconds
    legit_customers: int = 20_000
    feedback_delay_s: float = 3.0
    labelled_share: float = 0.98  # the replay posts nearly every label back
    latency_ms: float = 15.0


@dataclass(frozen=True)
class Design:
    """How a rollout is run and judged: the rollout params, steps and the flow's clock."""

    name: str
    params: RolloutParams
    steps: tuple[float, ...] = (10.0, 50.0, 100.0)
    step_wait_s: float = 12.0
    max_wait_s: float = 170.0
    round_overhead_s: float = 0.8  # a round's own time (read, analyse, write) in the main job


@dataclass(frozen=True)
class Outcome:
    """How one simulated rollout ended."""

    decision: str  # promoted | rolled_back
    by: str  # the check that decided (pr_auc, recall, psi, ...) or "budget"
    rounds: int
    seconds: float

    @property
    def kind(self) -> str:
        if self.decision == "promoted":
            return "promoted"
        return "budget" if self.by == "budget" else "rolled back"


@functools.cache
def separation_for(pr_auc: float, fraud_share: float) -> float:
    """The binormal model's fraud mean `mu` whose PR-AUC is `pr_auc` (bisection on the
    population PR-AUC: the mean over frauds of the precision at their score,
    pi (1 - F1(s)) / (pi (1 - F1(s)) + (1 - pi) (1 - F0(s))), F0 = N(0, 1), F1 = N(mu, 1))."""
    from scipy.stats import norm

    grid = np.linspace(-10, 20, 6001)
    low, high = 0.0, 10.0
    for _ in range(40):
        mu = (low + high) / 2
        caught, false = norm.sf(grid - mu), norm.sf(grid)
        precision = fraud_share * caught / (fraud_share * caught + (1 - fraud_share) * false)
        density = norm.pdf(grid - mu)
        value = float(np.sum(precision * density) * (grid[1] - grid[0]))
        if value < pr_auc:
            low = mu
        else:
            high = mu
    return (low + high) / 2


def _score(latent: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(_LOGIT_SCALE * latent + _LOGIT_SHIFT)))


def review_threshold(mu: float) -> float:
    """The score that flags `_REVIEW_RECALL` of a model's frauds (fraud latent ~ N(mu, 1))."""
    from scipy.stats import norm

    return float(_score(np.array([mu + norm.ppf(1 - _REVIEW_RECALL)]))[0])


@dataclass
class _Stream:
    """One rollout's transactions, in time order, with both models' scores."""

    t: np.ndarray
    customer: np.ndarray
    y: np.ndarray
    scores: dict[str, np.ndarray]
    bucket: np.ndarray  # per customer: the challenger takes it once its share exceeds this
    has_label: np.ndarray
    latency_ms: np.ndarray


def _stream(
    traffic: Traffic, duration_s: float, mus: dict[str, float], rng: np.random.Generator
) -> _Stream:
    fraud_rows_per_s = traffic.rate_per_s * traffic.fraud_share
    bursts = rng.poisson(
        fraud_rows_per_s / traffic.burst_mean * (duration_s + traffic.burst_span_s)
    )
    sizes = rng.geometric(1 / traffic.burst_mean, bursts)  # >= 1, mean burst_mean
    starts = rng.uniform(-traffic.burst_span_s, duration_s, bursts)
    burst_of = np.repeat(np.arange(bursts), sizes)
    fraud_t = starts[burst_of] + rng.uniform(0, traffic.burst_span_s, burst_of.size)
    keep = (fraud_t >= 0) & (fraud_t < duration_s)
    burst_of, fraud_t = burst_of[keep], fraud_t[keep]
    legit = rng.poisson(traffic.rate_per_s * (1 - traffic.fraud_share) * duration_s)
    legit_t = rng.uniform(0, duration_s, legit)
    t = np.concatenate([legit_t, fraud_t])
    customer = np.concatenate(
        [rng.integers(0, traffic.legit_customers, legit), traffic.legit_customers + burst_of]
    )
    y = np.r_[np.zeros(legit, np.int64), np.ones(fraud_t.size, np.int64)]
    order = np.argsort(t, kind="stable")
    t, customer, y = t[order], customer[order], y[order]
    customers = traffic.legit_customers + bursts
    # Common parts (both models) and each model's own, mixed to the measured correlation.
    common_customer, common_row = rng.normal(0, 1, customers), rng.normal(0, 1, t.size)
    alike = np.where(y == 1, _MODELS_ALIKE[1], _MODELS_ALIKE[0])
    scores = {}
    for variant, mu in mus.items():
        shared = _mix(common_customer[customer], rng.normal(0, 1, customers)[customer], alike)
        own = _mix(common_row, rng.normal(0, 1, t.size), alike)
        fraud_latent = (
            mu + math.sqrt(_CUSTOMER_SHARE) * shared + math.sqrt(1 - _CUSTOMER_SHARE) * own
        )
        scores[variant] = _score(np.where(y == 1, fraud_latent, own))
    return _Stream(
        t=t,
        customer=customer,
        y=y,
        scores=scores,
        bucket=rng.uniform(0, 100, traffic.legit_customers + bursts),
        has_label=rng.random(t.size) < traffic.labelled_share,
        latency_ms=rng.lognormal(math.log(traffic.latency_ms), 0.3, t.size),
    )


def _mix(common: np.ndarray, own: np.ndarray, alike: np.ndarray) -> np.ndarray:
    """Unit-variance normals that correlate `alike` with any other mix of `common`."""
    return np.sqrt(alike) * common + np.sqrt(1 - alike) * own


def _sample(
    stream: _Stream, rows: np.ndarray, variant: str, now: float, delay: float
) -> VariantSample:
    labelled = stream.has_label[rows] & (stream.t[rows] + delay <= now)
    other = "challenger" if variant == "champion" else "champion"
    return VariantSample(
        n=int(rows.size),
        errors=0,
        latency_ms=stream.latency_ms[rows],
        scores=stream.scores[variant][rows],
        labels=np.where(labelled, stream.y[rows], np.nan),
        clusters=stream.customer[rows],
        # The other model's score of the same requests, once labelled (the flow scores the
        # labelled requests' logged features); used by the paired test only.
        counterfactual=np.where(labelled, stream.scores[other][rows], np.nan),
    )


def run_rollout(
    design: Design,
    traffic: Traffic,
    champion_pr_auc: float,
    challenger_pr_auc: float,
    seed: int,
) -> Outcome:
    """One canary on generated traffic, judged round by round as the rollout flow does."""
    rng = np.random.default_rng(seed)
    mus = {
        "champion": separation_for(champion_pr_auc, traffic.fraud_share),
        "challenger": separation_for(challenger_pr_auc, traffic.fraud_share),
    }
    thresholds = {v: review_threshold(mu) for v, mu in mus.items()}
    horizon = design.max_wait_s + 2 * (design.step_wait_s + design.round_overhead_s)
    stream = _stream(traffic, horizon, mus, rng)
    to_challenger = np.zeros(stream.t.size, dtype=bool)
    step, now, seen, rounds = 0, 0.0, 0, 0
    while True:
        now += design.step_wait_s
        out_of_time = now >= design.max_wait_s
        upto = int(np.searchsorted(stream.t, now, "right"))
        percent = design.steps[step]
        to_challenger[seen:upto] = stream.bucket[stream.customer[seen:upto]] < percent
        seen = upto
        rounds += 1
        everything = np.arange(upto)
        champion = _sample(
            stream, everything[~to_challenger[:upto]], "champion", now, traffic.feedback_delay_s
        )
        challenger = _sample(
            stream, everything[to_challenger[:upto]], "challenger", now, traffic.feedback_delay_s
        )
        last = step == len(design.steps) - 1
        decisive = last or design.steps[step + 1] >= 100
        verdict = analyse_samples(
            champion, challenger, design.params, thresholds, mode="canary", last_step=decisive
        )
        now += design.round_overhead_s
        if verdict.decision == "hold" and out_of_time:
            return Outcome("rolled_back", "budget", rounds, now)
        if verdict.decision == "advance" and not last:
            step += 1
        elif verdict.decision in ("promote", "rollback"):
            ended = "promoted" if verdict.decision == "promote" else "rolled_back"
            return Outcome(ended, _deciding_check(verdict), rounds, now)


def _deciding_check(verdict: Verdict) -> str:
    failed = [c.name for c in verdict.checks if c.outcome == "fail"]
    return failed[0] if failed else "quality"


@dataclass(frozen=True)
class Arm:
    """A challenger this many PR-AUC points from the champion, and what it should come to."""

    name: str
    gap: float


# The main job's retrained challenger is ~0.085 better than its champion, measured paired
# (both models scoring the same logged requests) on two main-job canaries.
ARMS = (
    Arm("worse by 0.05", -0.05),
    Arm("equal", 0.0),
    Arm("better by 0.04", 0.04),
    Arm("main job's, +0.08", 0.08),
)
CHAMPION_PR_AUC = 0.78  # the main job's champion on the drifted period (its rollout reports)


@dataclass
class ArmResult:
    arm: Arm
    design: str
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, kind: str) -> int:
        return sum(o.kind == kind for o in self.outcomes)

    def rate(self, kind: str) -> tuple[float, float, float]:
        """(rate, lower, upper) of an outcome kind, with its 95 % Wilson interval."""
        return wilson(self.count(kind), len(self.outcomes))

    def times(self, kind: str | None = None) -> np.ndarray:
        return np.array([o.seconds for o in self.outcomes if kind in (None, o.kind)])

    def summary(self) -> dict[str, Any]:
        seconds = self.times()
        rounds = np.array([o.rounds for o in self.outcomes])
        return {
            "arm": self.arm.name,
            "gap": self.arm.gap,
            "design": self.design,
            "rollouts": len(self.outcomes),
            **{
                kind.replace(" ", "_"): dict(
                    zip(("rate", "lower", "upper"), self.rate(kind), strict=True)
                )
                for kind in ("promoted", "rolled back", "budget")
            },
            "seconds": _quantiles(seconds),
            "rounds": _quantiles(rounds),
            "deciding": {
                by: sum(o.by == by for o in self.outcomes)
                for by in sorted({o.by for o in self.outcomes})
            },
        }


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    q = np.percentile(values, [0, 10, 50, 90, 100])
    return dict(
        zip(("min", "p10", "p50", "p90", "max"), (round(float(v), 1) for v in q), strict=True)
    )


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float, float]:
    """The share and its Wilson score interval (95 % by default)."""
    if n == 0:
        return math.nan, math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def simulate(
    design: Design,
    rollouts: int,
    *,
    arms: Sequence[Arm] = ARMS,
    traffic: Traffic = Traffic(),
    champion_pr_auc: float = CHAMPION_PR_AUC,
    seed: int = 0,
    workers: int = 1,
) -> list[ArmResult]:
    """`rollouts` simulated canaries per arm; rollout i of every arm uses seed `seed` + i
    (the same traffic, only the challenger differs). `workers` > 1 runs them in processes."""
    jobs = [
        (design, traffic, champion_pr_auc, champion_pr_auc + arm.gap, seed + i)
        for arm in arms
        for i in range(rollouts)
    ]
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            outcomes = list(pool.map(_run_job, jobs, chunksize=max(1, len(jobs) // (8 * workers))))
    else:
        outcomes = [_run_job(job) for job in jobs]
    return [
        ArmResult(arm, design.name, outcomes[k * rollouts : (k + 1) * rollouts])
        for k, arm in enumerate(arms)
    ]


def _run_job(job: tuple[Design, Traffic, float, float, int]) -> Outcome:
    return run_rollout(*job)


# -- the bench: before / after, report and plot ---------------------------------------------
def designs(params_path: Path = Path("params.yaml"), step_wait_s: float = 4.0) -> dict[str, Design]:
    """The main job's canary as it was (`before`: bootstrap interval every 12 s), with the
    unpaired sequential test (`sequential`), and as it is (`paired`: the sequential test on
    both models' scores of the same requests), both looking every `step_wait_s`."""
    demo = load_params(params_path).rollout.profile("demo")
    return {
        "before": Design(
            "before: bootstrap CI, 12 s rounds", replace_params(demo, quality_test="bootstrap")
        ),
        "sequential": Design(
            f"sequential, unpaired, {step_wait_s:g} s rounds",
            replace_params(demo, quality_test="sequential"),
            step_wait_s=step_wait_s,
        ),
        "paired": Design(
            f"after: sequential paired, {step_wait_s:g} s rounds",
            replace_params(demo, quality_test="paired"),
            step_wait_s=step_wait_s,
        ),
    }


def replace_params(params: RolloutParams, **changes: Any) -> RolloutParams:
    return params.model_copy(update=changes)


def _markdown(results: list[ArmResult], traffic: Traffic, elapsed: float) -> str:
    lines = [
        "# The canary on generated traffic",
        "",
        f"Traffic like the main job's replay: {traffic.rate_per_s:g} requests/s, "
        f"{traffic.fraud_share:.1%} fraud in bursts of ~{traffic.burst_mean:g} per customer, "
        f"labels {traffic.feedback_delay_s:g} s later; champion PR-AUC {CHAMPION_PR_AUC}; "
        "steps 10 %, 50 %, 100 %; budget 170 s (a rollout still holding then is rolled back "
        f"by the budget rule). {elapsed:.0f} s to simulate.",
        "",
        "| design | challenger | rollouts | promoted [95 % CI] | rolled back on evidence "
        "[95 % CI] | ended by the budget [95 % CI] | seconds p10 / p50 / p90 / max | "
        "rounds p50 / max |",
        "|---|---|---:|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary()

        def cell(kind: str, s: dict[str, Any] = s) -> str:
            v = s[kind]
            return f"{v['rate']:.1%} [{v['lower']:.1%}, {v['upper']:.1%}]"

        sec, rnd = s["seconds"], s["rounds"]
        lines.append(
            f"| {r.design} | {r.arm.name} | {s['rollouts']} | {cell('promoted')} | "
            f"{cell('rolled_back')} | {cell('budget')} | {sec['p10']} / {sec['p50']} / "
            f"{sec['p90']} / {sec['max']} | {rnd['p50']} / {rnd['max']} |"
        )
    return "\n".join(lines) + "\n"


def _plot(results: list[ArmResult], path: Path) -> None:
    from hearth.observability.figures import png_figure  # lazy: matplotlib, for the plot only

    designs_seen = list(dict.fromkeys(r.design for r in results))
    colours = {"promoted": "tab:green", "rolled back": "tab:red", "budget": "tab:grey"}
    with png_figure(
        path,
        nrows=len(designs_seen),
        ncols=max(sum(r.design == d for r in results) for d in designs_seen),
        figsize=(12, 3.2 * len(designs_seen)),
        squeeze=False,
    ) as (_, axes):
        for row, design in enumerate(designs_seen):
            for col, r in enumerate(x for x in results if x.design == design):
                ax = axes[row][col]
                bins = np.arange(0, 200, 6)
                stacked = [r.times(kind) for kind in colours]
                ax.hist(
                    stacked,
                    bins=bins,
                    stacked=True,
                    color=list(colours.values()),
                    label=list(colours),
                )
                ax.axvline(60, color="k", ls=":", lw=1)
                ax.set_title(f"{design}\nchallenger {r.arm.name}", fontsize=9)
                ax.set_xlabel("seconds to the decision")
                if col == 0:
                    ax.set_ylabel("rollouts")
                    ax.legend(fontsize=7)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=200, help="per arm, paired test")
    parser.add_argument("--compare", type=int, default=40, help="per arm, before & unpaired")
    parser.add_argument("--step-wait", type=float, default=4.0, help="sequential rounds, s")
    parser.add_argument("--workers", type=int, default=2, help="processes")
    parser.add_argument("--out", type=Path, default=Path("reports"))
    args = parser.parse_args(argv)
    plans = designs(step_wait_s=args.step_wait)
    traffic = Traffic()
    began = time.monotonic()
    results = []
    for key, n in (
        ("before", args.compare),
        ("sequential", args.compare),
        ("paired", args.rollouts),
    ):
        if n > 0:
            results += simulate(plans[key], n, traffic=traffic, workers=args.workers)
            print(f"{plans[key].name}: {n} rollouts per arm ({time.monotonic() - began:.0f} s)")
    elapsed = time.monotonic() - began
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = _markdown(results, traffic, elapsed)
    (args.out / "bench_rollout.md").write_text(
        markdown + "\n![decision times](bench_rollout.png)\n"
    )
    (args.out / "bench_rollout.json").write_text(
        json.dumps({"traffic": asdict(traffic), "arms": [r.summary() for r in results]}, indent=2)
    )
    _plot(results, args.out / "bench_rollout.png")
    print(markdown)
    print(f"written: {args.out / 'bench_rollout.md'}, .json, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
