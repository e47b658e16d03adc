"""The main job, closed: after the first champion, a drifted period, a challenger, a canary
on live traffic, then a broken challenger's drill rollback.

`hearth run` calls `run_closed_loop` after the pipeline flow. In order:

1. **Drift.** A later period with the ``fraud-pattern`` drift (a fraud wave of fast
   takeovers and card testing on the victims' own devices): its first `TRAIN_DAYS` land in
   ``data/raw`` like any daily drop, the `LIVE_DAYS` after them are kept aside under
   ``HEARTH_HOME/live/`` — they have not "happened" yet when the challenger is trained, and
   are replayed later as live traffic. Same customers, later dates: a rerun regenerates
   byte-identical files.
2. **Challenger.** The pipeline flow again, on all the data (raw gate, ETL, feature gate,
   training, registration gate). If the gate does not make the new version the challenger,
   the summary says why and the job goes on with the drill.
3. **Canary.** `hearth serve --topology monolith` as a child process on a free loopback
   port; the live period is replayed through it (delayed labels via /feedback) while the
   rollout flow runs its canary steps and lets the analysis promote — or not.
4. **Drill.** A model trained on shuffled labels (experiments/broken-shuffled.yaml) is
   registered — the gate rejects it as challenger — and then put into a rollout *on purpose*
   with its explicit version (`control.start` bypasses the registration gate; that is the
   point of a drill), to show the automatic rollback.

The server is stopped at the end and on any failure. Everything here is framework-free
except that it runs the project's Prefect flows, imported where they are used.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from hearth.config import HearthContext, Settings
from hearth.rollout.replay import (
    LabelledTransaction,
    ReplayConfig,
    ReplayReport,
    load_transactions,
    replay,
)

log = logging.getLogger(__name__)

DRIFT = "fraud-pattern"
TRAIN_DAYS = 14  # drifted days added to data/raw: what the challenger learns from
LIVE_DAYS = 16  # drifted days after those: replayed as live traffic, never trained on
# The drift comes as a fraud wave: 3x the usual fraud rate. Besides being the story, it
# gives the canary ~3x the labelled frauds per request, so the quality comparison can be
# decided on a few thousand requests instead of tens of thousands.
FRAUD_WAVE = 3.0
BROKEN_EXPERIMENT = Path("experiments/broken-shuffled.yaml")

# The main job's rollout clock; its analysis is params.yaml's rollout.profiles.demo (the
# tolerances a few minutes of replayed traffic on a 2-core box can be judged with). Sample
# minimums and significance stay those of params.yaml: promotion is the analysis's call.
ANALYSIS_PROFILE = "demo"
STEP_WAIT_S = 12.0
# The customer-cluster bootstrap is honest about bursty fraud, so its intervals are wide:
# at 50 % a better model needed ~100 s of traffic (~9k labelled requests a variant) before
# its PR-AUC lower bound cleared the non-inferiority tolerance; 90 s timed out once.
MAX_WAIT_S = 170.0  # ~30k requests at 180 req/s; the drill needs the rest
# 10 % first (at ~150 req/s, 5 % of a 12 s step is under the 200-request minimum), then
# straight to the decisive 50 %, where both variants gather labels.
CANARY_STEPS = [10.0, 50.0, 100.0]
REPLAY_RATE_PER_S = 200.0
REPLAY_CONCURRENCY = 8
FEEDBACK_DELAY_S = 3.0
# The drill starts at 50 %, so that its first analysis already has enough labels to judge
# quality as well as the score distribution.
DRILL_STEPS = [50.0, 100.0]
# ~30-60 labelled frauds per variant at 50 % and ~130 req/s: enough customers with a fraud
# (min_fraud_customers) for the verdict to show quality, not only PSI.
DRILL_STEP_WAIT_S = 40.0

Say = Callable[[str], None]


# -- the drifted period ---------------------------------------------------------------------
@dataclass(frozen=True)
class DriftPeriod:
    """The drifted days: the training part in data/raw, the live part kept aside."""

    start: date
    train_days: int
    live_days: int
    live_dir: Path

    @property
    def live_start(self) -> date:
        return self.start + timedelta(days=self.train_days)

    @property
    def live_files(self) -> list[Path]:
        return sorted((self.live_dir / "transactions").glob("*.csv"))


def drift_period(ctx: HearthContext) -> DriftPeriod:
    """The days right after the default period (params.data): fixed, so reruns repeat it."""
    d = ctx.params.data
    start = d.start_date + timedelta(days=d.days)
    live_dir = ctx.settings.home_abs / "live" / f"{DRIFT}-{start + timedelta(days=TRAIN_DAYS)}"
    return DriftPeriod(start, TRAIN_DAYS, LIVE_DAYS, live_dir)


def generate_drift(ctx: HearthContext, period: DriftPeriod) -> dict[str, Any]:
    """Write the training days into data/raw and the live days aside; counts of both."""
    from hearth.data.generate import generate

    d = ctx.params.data
    wave = {"fraud_rate": min(d.fraud_rate * FRAUD_WAVE, 0.2)}
    # A day depends only on (seed, day, drift): two calls give the same days as one would.
    train = generate(
        ctx.settings.raw_dir,
        d.model_copy(update={**wave, "days": period.train_days}),
        drift=DRIFT,
        start_date=period.start,
    )
    live = generate(
        period.live_dir,
        d.model_copy(update={**wave, "days": period.live_days}),
        drift=DRIFT,
        start_date=period.live_start,
    )
    return {
        "drift": DRIFT,
        "fraud_rate": wave["fraud_rate"],
        "train": {"from": str(period.start), "days": train.days, "rows": train.transactions,
                  "fraud": train.fraud},
        "live": {"from": str(period.live_start), "days": live.days, "rows": live.transactions,
                 "fraud": live.fraud, "dir": str(period.live_dir)},
    }  # fmt: skip


# -- serving --------------------------------------------------------------------------------
def refresh_online_store(settings: Settings) -> int:
    """Rebuild the online store from data/processed: every customer's state as of the end
    of the training data (a rerun would otherwise start from the last replay's states)."""
    from hearth.features.store import materialize, open_store

    store = open_store(settings)
    try:
        store.clear()
        return materialize(store, settings.processed_dir).customers
    finally:
        store.close()


def project_root() -> Path:
    """The directory holding bentos/: the working directory, else the source checkout."""
    here = Path.cwd()
    if (here / "bentos").is_dir():
        return here
    return Path(__file__).resolve().parents[2]


@contextmanager
def serving(settings: Settings, say: Say) -> Iterator[Any]:
    """`hearth serve --topology monolith` on a free loopback port, ready; stopped on exit."""
    import os

    from hearth.serving.launch import ServerProcess

    logs = settings.home_abs / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **settings.environment()}
    server = ServerProcess.start("monolith", env, project_root(), logs / "serve-main-job.log")
    say(f"serving monolith on {server.url} (log {server.log_path}); waiting for /readyz")
    try:
        began = time.monotonic()
        server.wait_ready()
        say(f"server ready in {time.monotonic() - began:.1f}s")
        yield server
    finally:
        server.stop()
        say("server stopped")


# -- a rollout with traffic -----------------------------------------------------------------
class LiveTraffic:
    """The live period's transactions, handed out in order across rollouts."""

    def __init__(self, txns: Sequence[LabelledTransaction]) -> None:
        self.txns = txns
        self.offset = 0

    def rest(self) -> Sequence[LabelledTransaction]:
        return self.txns[self.offset :]

    def consume(self, n: int) -> None:
        self.offset = min(len(self.txns), self.offset + n)


def _progress_printer(say: Say, every_s: float = 5.0) -> Callable[[ReplayReport], None]:
    last = [0.0]

    def show(r: ReplayReport) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            variants = ", ".join(f"{k} {v}" for k, v in sorted(r.variants.items()))
            failed = sum(r.failed.values())
            say(
                f"  replay: {r.sent} sent, {r.answered} answered ({variants}), {failed} failed, "
                f"{r.labels_posted} labels, {r.requests_per_s:.0f} req/s"
            )

    return show


def rollout_with_traffic(
    server: Any,
    settings: Settings,
    traffic: LiveTraffic,
    flow_kwargs: dict[str, Any],
    say: Say,
) -> tuple[dict[str, Any], ReplayReport]:
    """Run the rollout flow while the live period is replayed; (flow summary, replay)."""
    from flows.rollout import rollout_flow

    config = ReplayConfig(
        url=server.url,
        api_key=settings.api_key.get_secret_value(),
        concurrency=REPLAY_CONCURRENCY,
        rate_per_s=REPLAY_RATE_PER_S,
        feedback_delay_s=FEEDBACK_DELAY_S,
    )
    stop = threading.Event()
    result: dict[str, ReplayReport] = {}
    txns = traffic.rest()

    def send() -> None:
        result["replay"] = replay(txns, config, stop, _progress_printer(say))

    sender = threading.Thread(target=send, name="replay", daemon=True)
    sender.start()
    try:
        summary = rollout_flow(**flow_kwargs)
    finally:
        stop.set()  # the rollout has ended (or failed): no more traffic for it
        sender.join(timeout=FEEDBACK_DELAY_S + 30)
    report = result.get("replay", ReplayReport(stopped_by="replay thread did not finish"))
    traffic.consume(report.sent)
    return summary, report


# -- the whole closed loop ------------------------------------------------------------------
@dataclass
class ClosedLoopSummary:
    """What the closed part of the main job did, for the printed summary."""

    drift: dict[str, Any] = field(default_factory=dict)
    retrain: dict[str, Any] = field(default_factory=dict)
    canary: dict[str, Any] | None = None
    canary_replay: dict[str, Any] | None = None
    canary_skipped: str | None = None
    drill_training: dict[str, Any] = field(default_factory=dict)
    drill: dict[str, Any] | None = None
    drill_replay: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    server_log: str | None = None
    profile: dict[str, Any] = field(default_factory=dict)  # what the analysis profile changes


@contextmanager
def _timed(summary: ClosedLoopSummary, name: str) -> Iterator[None]:
    began = time.monotonic()
    try:
        yield
    finally:
        summary.timings[name] = round(time.monotonic() - began, 1)


def _flow_kwargs(
    challenger_version: str | None,
    steps: list[float],
    step_wait_s: float = STEP_WAIT_S,
) -> dict[str, Any]:
    return {
        "challenger_version": challenger_version,
        "mode": "canary",
        "steps": steps,
        "step_wait_s": step_wait_s,
        "max_wait_s": MAX_WAIT_S,
        "analysis_profile": ANALYSIS_PROFILE,
    }


def _profile_changes(ctx: HearthContext) -> dict[str, Any]:
    """The rollout values params.yaml's analysis profile changes, with their new values."""
    base, chosen = ctx.params.rollout.profile(None), ctx.params.rollout.profile(ANALYSIS_PROFILE)
    return {k: v for k, v in chosen.model_dump().items() if v != getattr(base, k)}


def retrain_on_drift(ctx: HearthContext, summary: ClosedLoopSummary, say: Say) -> str | None:
    """Generate the drifted period, rerun the pipeline; the new challenger's version or None."""
    from flows.pipeline import pipeline_flow

    period = drift_period(ctx)
    with _timed(summary, "generate drifted period"):
        summary.drift = generate_drift(ctx, period)
    say(
        f"drifted period ({DRIFT}): {summary.drift['train']['rows']:,} rows for training from "
        f"{period.start}, {summary.drift['live']['rows']:,} live rows from {period.live_start}"
    )
    with _timed(summary, "pipeline on all data"):
        summary.retrain = pipeline_flow(generate_if_missing=False)
    registration = summary.retrain["train"].get("registration", {})
    if registration.get("alias") == "challenger":
        return str(registration["version"])
    summary.canary_skipped = (
        f"v{registration.get('version')} was not made challenger by the registration gate: "
        f"{registration.get('reason', 'no reason recorded')}; no canary this time"
    )
    say(summary.canary_skipped)
    return None


def train_broken(ctx: HearthContext, summary: ClosedLoopSummary) -> str:
    """Train and register the shuffled-labels model; its version (the gate rejects it)."""
    from flows.train import train_flow

    with _timed(summary, "train broken model"):
        trained = train_flow(experiment=str(BROKEN_EXPERIMENT), register_model=True)
    summary.drill_training = trained
    return str(trained["registration"]["version"])


def run_closed_loop(ctx: HearthContext, say: Say | None = None) -> ClosedLoopSummary:
    """Drift → retrain → canary with live traffic → drill rollback (see the module doc)."""
    say = say or (lambda line: print(line, file=sys.stderr))
    summary = ClosedLoopSummary(profile=_profile_changes(ctx))
    challenger = retrain_on_drift(ctx, summary, say)
    with _timed(summary, "refresh online store"):
        customers = refresh_online_store(ctx.settings)
    say(f"online store rebuilt from data/processed: {customers:,} customers")
    traffic = LiveTraffic(load_transactions(drift_period(ctx).live_files).transactions)
    began = time.monotonic()
    with serving(ctx.settings, say) as server:
        summary.timings["start server"] = round(time.monotonic() - began, 1)
        summary.server_log = str(server.log_path)
        if challenger is not None:
            say(f"canary: v{challenger} against the champion, with live traffic")
            with _timed(summary, "canary rollout"):
                summary.canary, replayed = rollout_with_traffic(
                    server, ctx.settings, traffic, _flow_kwargs(challenger, CANARY_STEPS), say
                )
            summary.canary_replay = replayed.to_dict()
        broken = train_broken(ctx, summary)
        say(
            f"drill: broken v{broken} ({summary.drill_training['registration']['reason']}); "
            "rolled out anyway, by explicit version: a drill bypasses the registration gate"
        )
        with _timed(summary, "drill rollout"):
            summary.drill, replayed = rollout_with_traffic(
                server,
                ctx.settings,
                traffic,
                _flow_kwargs(broken, DRILL_STEPS, DRILL_STEP_WAIT_S),
                say,
            )
        summary.drill_replay = replayed.to_dict()
    return summary


# -- the printed summary --------------------------------------------------------------------
def _num(numbers: dict[str, Any], key: str, pattern: str = "{:.3f}") -> str:
    value = numbers.get(key)
    return "–" if value is None else pattern.format(value)


def _rollout_lines(
    title: str, outcome: dict[str, Any], replayed: dict[str, Any] | None
) -> list[str]:
    n = outcome.get("numbers", {})
    lines = [
        f"{title}: v{outcome['challenger_version']} vs champion v{outcome['champion_version']} "
        f"→ [bold]{outcome['status']}[/] after {len(outcome['rounds'])} analysis rounds "
        f"({outcome['seconds']:.0f}s)",
        f"  verdict  {outcome['decision']} — {outcome['reason']}",
        f"  test     {outcome['test']}",
        f"  PR-AUC   champion {_num(n, 'champion_pr_auc')} vs challenger "
        f"{_num(n, 'challenger_pr_auc')} (diff {_num(n, 'pr_auc_diff', '{:+.3f}')}, bounds "
        f"[{_num(n, 'pr_auc_diff_lower', '{:+.3f}')}, {_num(n, 'pr_auc_diff_upper', '{:+.3f}')}])",
        f"  recall   champion {_num(n, 'champion_recall')} vs challenger "
        f"{_num(n, 'challenger_recall')} at each model's review threshold",
        f"  ops      errors {_num(n, 'champion_error_rate', '{:.2%}')} vs "
        f"{_num(n, 'challenger_error_rate', '{:.2%}')}, p99 {_num(n, 'champion_p99_ms', '{:.0f}')}"
        f" vs {_num(n, 'challenger_p99_ms', '{:.0f}')} ms, PSI {_num(n, 'psi')}",
        f"  samples  champion {_num(n, 'champion_n', '{:.0f}')} requests "
        f"({_num(n, 'champion_labelled', '{:.0f}')} labelled, "
        f"{_num(n, 'champion_positives', '{:.0f}')} fraud), challenger "
        f"{_num(n, 'challenger_n', '{:.0f}')} ({_num(n, 'challenger_labelled', '{:.0f}')}, "
        f"{_num(n, 'challenger_positives', '{:.0f}')})",
    ]
    rounds = outcome["rounds"]
    failed = [name for name, result in (rounds[-1]["checks"] if rounds else {}).items()
              if result == "fail"]  # fmt: skip
    if failed:
        lines.append(f"  failed   {', '.join(failed)}")
    steps = " → ".join(f"{r['challenger_percent']:g}% {r['decision']}" for r in rounds)
    lines.append(f"  rounds   {steps}")
    if replayed:
        lines.append(
            f"  traffic  {replayed['sent']} requests at {replayed['requests_per_s']} req/s, "
            f"{sum(replayed['failed'].values())} failed, {replayed['labels_posted']} labels"
        )
    lines.append(f"  report   {outcome['report_md']}")
    return lines


def summary_lines(summary: ClosedLoopSummary) -> list[str]:
    """The closed loop's summary as printable lines (rich markup)."""
    lines = []
    if summary.drift:
        live = summary.drift["live"]
        lines.append(
            f"drift    {DRIFT} (fraud rate {summary.drift['fraud_rate']:.1%}): "
            f"{summary.drift['train']['rows']:,} rows trained on, {live['rows']:,} live rows "
            f"from {live['from']}"
        )
    reg = summary.retrain.get("train", {}).get("registration", {})
    best = summary.retrain.get("train", {}).get("best", {}).get("test_metrics", {})
    if reg:
        lines.append(
            f"retrain  v{reg.get('version')} → {reg.get('alias') or 'no alias'} "
            f"({reg.get('reason')}); test PR-AUC {best.get('pr_auc', float('nan')):.3f}"
        )
    if summary.canary is not None:
        lines += _rollout_lines("canary", summary.canary, summary.canary_replay)
    elif summary.canary_skipped:
        lines.append(f"canary   skipped: {summary.canary_skipped}")
    if summary.drill is not None:
        lines += _rollout_lines("drill", summary.drill, summary.drill_replay)
    profile = ", ".join(f"{k}={v:g}" for k, v in summary.profile.items())
    lines.append(
        f"profile  params.yaml rollout.profiles.{ANALYSIS_PROFILE}: {profile}; step wait "
        f"{STEP_WAIT_S:g}s (drill: wait {DRILL_STEP_WAIT_S:g}s)"
    )
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in summary.timings.items())
    lines.append(f"timings  {timings}")
    if summary.server_log:
        lines.append(f"server   log {summary.server_log}")
    return lines
