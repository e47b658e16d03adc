"""The closed loop's plan (which rollouts, on which clock) and its typed results."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hearth.config import CHALLENGER
from hearth.demo.drifted_period import DriftedData
from hearth.registry import RegistrationDecision
from hearth.rollout.flow_steps import RolloutOutcome
from hearth.rollout.replay import ReplayReport
from hearth.steps import PipelineSummary, TrainSummary
from hearth.validation import ValidationFailed

BROKEN_EXPERIMENT = Path("experiments/broken-shuffled.yaml")
# params.yaml rollout.profiles: the analysis both rollouts use (see its comments there).
ANALYSIS_PROFILE = "demo"


@dataclass(frozen=True)
class DemoRollout:
    """One rollout of the demo: whom, in which steps, on which clock."""

    challenger_version: str
    steps: tuple[float, ...]
    step_wait_s: float
    max_wait_s: float
    analysis_profile: str = ANALYSIS_PROFILE


# The customer-cluster bootstrap is honest about bursty fraud, so its intervals are wide:
# at 50 % a better model needed ~100 s of traffic (~9k labelled requests a variant) before
# its PR-AUC lower bound cleared the non-inferiority tolerance; 90 s timed out once.
MAX_WAIT_S = 170.0  # ~30k requests at 180 req/s; the drill needs the rest


def canary(challenger_version: str) -> DemoRollout:
    """The challenger's canary: 10 % first (at ~150 req/s, 5 % is under the 200-request
    minimum for long), then straight to the decisive 50 %. Rounds every 4 s: the demo
    profile's paired sequential test holds at every look, so looking often costs no error,
    and the canary ends within a round of the evidence being there."""
    return DemoRollout(challenger_version, (10.0, 50.0, 100.0), 4.0, MAX_WAIT_S)


def drill(broken_version: str) -> DemoRollout:
    """The broken model's drill: from 50 % at once, so that its first analysis already has
    enough labels to judge quality as well as the score distribution; 40 s steps give
    ~30-60 labelled frauds per variant at ~130 req/s (enough customers with a fraud, params'
    min_fraud_customers, for the verdict to show quality, not only PSI)."""
    return DemoRollout(broken_version, (50.0, 100.0), 40.0, MAX_WAIT_S)


class DriftedPeriodRejected(ValidationFailed):
    """The drifted period failed a data gate: nothing was retrained, the champion serves."""


@dataclass(frozen=True)
class TrafficRollout:
    """A rollout as planned, how it ended, and the live traffic replayed while it ran."""

    plan: DemoRollout
    outcome: RolloutOutcome
    replay: ReplayReport


@dataclass(frozen=True)
class ClosedLoopSummary:
    """What the closed part of the main job did, for the printed summary."""

    drift: DriftedData
    retrain: PipelineSummary
    canary: TrafficRollout | None  # None when the retrained model did not become challenger
    canary_skipped: str | None  # why there was no canary
    drill_training: TrainSummary
    drill: TrafficRollout
    timings: dict[str, float]
    server_log: Path


@dataclass(frozen=True)
class MainJobSummary:
    """`hearth run`: the pipeline's first champion, then the closed loop (unless skipped)."""

    pipeline: PipelineSummary
    closed_loop: ClosedLoopSummary | None = None


def registration(trained: TrainSummary) -> RegistrationDecision:
    """The registration gate's decision on a training pass that was told to register."""
    if trained.registration is None:
        raise ValueError(f"{trained.best.run_name} was trained but not registered")
    return trained.registration


def challenger_of(retrained: PipelineSummary) -> tuple[str | None, str | None]:
    """(the new version if the gate made it the challenger, else why there is no canary)."""
    decision = registration(retrained.train)
    if decision.alias == CHALLENGER:
        return str(decision.version), None
    return None, (
        f"v{decision.version} was not made challenger by the registration gate: "
        f"{decision.reason or 'no reason recorded'}; no canary this time"
    )


class Stopwatch:
    """Seconds per named part, in the order the parts ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - began, 1)
