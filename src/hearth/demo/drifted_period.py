"""The drifted period: the days after the default data, part trained on, part kept live."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from hearth.config import HearthContext, Settings
from hearth.data.generate import GenerateReport, generate
from hearth.features.store import materialize, open_store

DRIFT = "fraud-pattern"
TRAIN_DAYS = 14  # drifted days added to data/raw: what the challenger learns from
LIVE_DAYS = 16  # drifted days after those: replayed as live traffic, never trained on
# The drift comes as a fraud wave: 3x the usual fraud rate. Besides being the story, it
# gives the canary ~3x the labelled frauds per request, so the quality comparison can be
# decided on a few thousand requests instead of tens of thousands.
FRAUD_WAVE = 3.0
MAX_FRAUD_RATE = 0.2  # params.data's own bound


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


@dataclass(frozen=True)
class DriftedData:
    """What `generate_drift` wrote: the training days and the live days, with their counts."""

    period: DriftPeriod
    drift: str
    fraud_rate: float
    train: GenerateReport
    live: GenerateReport


def drift_period(ctx: HearthContext) -> DriftPeriod:
    """The days right after the default period (params.data): fixed, so reruns repeat it."""
    d = ctx.params.data
    start = d.start_date + timedelta(days=d.days)
    live_dir = ctx.settings.home_abs / "live" / f"{DRIFT}-{start + timedelta(days=TRAIN_DAYS)}"
    return DriftPeriod(start, TRAIN_DAYS, LIVE_DAYS, live_dir)


def generate_drift(ctx: HearthContext, period: DriftPeriod) -> DriftedData:
    """Write the training days into data/raw and the live days aside."""
    d = ctx.params.data
    fraud_rate = min(d.fraud_rate * FRAUD_WAVE, MAX_FRAUD_RATE)
    # A day depends only on (seed, day, drift): two calls give the same days as one would.
    train = generate(
        ctx.settings.raw_dir,
        d.model_copy(update={"fraud_rate": fraud_rate, "days": period.train_days}),
        drift=DRIFT,
        start_date=period.start,
    )
    live = generate(
        period.live_dir,
        d.model_copy(update={"fraud_rate": fraud_rate, "days": period.live_days}),
        drift=DRIFT,
        start_date=period.live_start,
    )
    return DriftedData(period, DRIFT, fraud_rate, train, live)


def refresh_online_store(settings: Settings) -> int:
    """Rebuild the online store from data/processed: every customer's state as of the end
    of the training data (a rerun would otherwise start from the last replay's states)."""
    store = open_store(settings)
    try:
        store.clear()
        return materialize(store, settings.processed_dir).customers
    finally:
        store.close()
