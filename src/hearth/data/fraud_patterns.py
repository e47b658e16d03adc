"""The generator's fraud: each pattern as bursts of transactions, mixed to a target rate.

Fraud comes in four patterns (account takeover, card testing, risky merchants at night,
amounts far above the customer's norm), some of them subtle, plus a share that looks entirely
ordinary; the fraud-pattern drift adds a fifth (fast takeovers on the victim's own device).
Which patterns a day has, and in what shares, is the day's `Drift.fraud_mix`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hearth.data.population import (
    CH,
    RATES,
    SECONDS_PER_DAY,
    Day,
    FloatArray,
    IntArray,
    Rows,
    daytime,
    far,
    habitual,
    near,
    online_or_pos,
    pick,
    random_merchant,
    to_currency,
)
from hearth.schema import RISKY_CATEGORIES


@dataclass(frozen=True)
class _Burst:
    """Events of one fraud pattern, expanded to one entry per transaction."""

    event: IntArray  # event index of each transaction
    position: IntArray  # 0-based position within its event
    sizes: IntArray  # transactions per event
    victim: IntArray  # customer of each event

    @property
    def n(self) -> int:
        return int(self.event.size)

    @property
    def cust(self) -> IntArray:
        return self.victim[self.event]

    @property
    def last(self) -> IntArray:
        return self.position == self.sizes[self.event] - 1


def _burst(rng: np.random.Generator, sizes: IntArray, customers: int) -> _Burst:
    event = np.repeat(np.arange(sizes.size), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    position = np.arange(event.size) - starts[event]
    return _Burst(event, position, sizes, rng.integers(0, customers, sizes.size))


def _burst_times(rng: np.random.Generator, b: _Burst, start: IntArray, gap: FloatArray) -> IntArray:
    """Event start plus the running sum of the gaps within each event (first gap is 0)."""
    gap = np.where(b.position == 0, 0.0, gap)
    total = np.cumsum(gap)
    first = total[b.position == 0]
    return start[b.event] + (total - first[b.event]).astype(np.int64)


def _assemble(day: Day, b: _Burst, ts: IntArray, cat: IntArray, amount_eur: FloatArray,
                channel: IntArray, device: IntArray, lat: FloatArray, lon: FloatArray,
                ccy: IntArray | None = None) -> Rows:  # fmt: skip
    """Assemble fraud rows; the amount is converted to the card's currency unless given."""
    rng = day.rng
    ccy = day.customers.currency[b.cust] if ccy is None else ccy
    return Rows(
        ts=np.clip(ts, day.start, day.start + SECONDS_PER_DAY - 1),
        cust=b.cust,
        merchant=random_merchant(rng, cat),
        cat=cat,
        amount=to_currency(amount_eur, ccy),
        ccy=ccy,
        channel=channel,
        device=device,
        lat=lat,
        lon=lon,
        fraud=np.ones(b.n, dtype=np.int8),
    )


def _account_takeover(day: Day, n_events: int) -> Rows:
    """3–6 big purchases within ~30 min, on a fraudster's device, hundreds of km from home."""
    rng, cs = day.rng, day.customers
    b = _burst(rng, rng.integers(3, 7, n_events), cs.count)
    ts = _burst_times(rng, b, day.start + rng.integers(0, SECONDS_PER_DAY, n_events),
                      rng.uniform(20, 360, b.n))  # fmt: skip
    far_lat, far_lon = far(rng, cs.home_lat[b.victim], cs.home_lon[b.victim], 300, 2500)
    # Some fraudsters hide behind a proxy near the victim's home.
    local = rng.random(n_events) < 0.2
    base_lat = np.where(local, cs.home_lat[b.victim], far_lat)[b.event]
    base_lon = np.where(local, cs.home_lon[b.victim], far_lon)[b.event]
    lat, lon = near(rng, base_lat, base_lon, 10.0)
    channel = online_or_pos(rng, b.n, 0.85)
    cat = pick(rng, ("electronics", "retail", "travel", "crypto", "entertainment"), b.n)
    amount = day.spend[b.cust] * rng.lognormal(np.log(6.0), 0.5, b.n)
    device = day.devices.fraud(rng, n_events)[b.event]
    return _assemble(day, b, ts, cat, amount, channel, device, lat, lon)


def _known_device_takeover(day: Day, n_events: int) -> Rows:
    """The drifted takeover: the victim's own device, near home, daytime, risky and fast.

    Old models lean on new devices, distance and night hours; this pattern has none of them,
    only velocity and risky categories.
    """
    rng, cs = day.rng, day.customers
    b = _burst(rng, rng.integers(4, 9, n_events), cs.count)
    ts = _burst_times(rng, b, daytime(rng, day.start, n_events), rng.uniform(15, 180, b.n))
    lat, lon = near(rng, cs.home_lat[b.cust], cs.home_lon[b.cust], 6.0)
    channel = online_or_pos(rng, b.n, 0.7)
    cat = pick(rng, RISKY_CATEGORIES, b.n)
    amount = day.spend[b.cust] * rng.lognormal(np.log(2.5), 0.5, b.n)
    device = day.devices.primary(b.cust)
    return _assemble(day, b, ts, cat, amount, channel, device, lat, lon)


def _card_testing(day: Day, n_events: int) -> Rows:
    """2–5 tiny online payments a minute apart, then one large one."""
    rng, cs = day.rng, day.customers
    b = _burst(rng, rng.integers(3, 7, n_events), cs.count)
    last = b.last
    gap = np.where(last, rng.uniform(60, 900, b.n), rng.uniform(5, 90, b.n))
    ts = _burst_times(rng, b, day.start + rng.integers(0, SECONDS_PER_DAY, n_events), gap)
    # From a fraudster's device, or from the victim's own, compromised one (see Drift).
    stolen = rng.random(n_events) < day.drift.card_testing_fraud_device
    device = np.where(
        stolen[b.event],
        day.devices.fraud(rng, n_events)[b.event],
        day.devices.primary(b.cust),
    )
    far_lat, far_lon = far(rng, cs.home_lat[b.victim], cs.home_lon[b.victim], 200, 2000)
    lat, lon = near(rng, far_lat[b.event], far_lon[b.event], 25.0)
    home_lat, home_lon = near(rng, cs.home_lat[b.cust], cs.home_lon[b.cust], 25.0)
    lat, lon = np.where(stolen[b.event], lat, home_lat), np.where(stolen[b.event], lon, home_lon)
    small = pick(rng, ("entertainment", "retail", "transport"), b.n)
    large = pick(rng, ("electronics", "travel", "crypto"), b.n)
    cat = np.where(last, large, small)
    ccy = cs.currency[b.cust]
    # Tiny test amounts are in the card's currency, not converted from EUR.
    tiny_eur = rng.uniform(0.5, 3.0, b.n) * RATES[ccy]
    amount = np.where(last, day.spend[b.cust] * rng.lognormal(np.log(8.0), 0.4, b.n), tiny_eur)
    channel = np.full(b.n, CH["online"])
    return _assemble(day, b, ts, cat, amount, channel, device, lat, lon, ccy)


def _risky_night(day: Day, n_events: int) -> Rows:
    """1–2 larger purchases at gambling, crypto or electronics merchants between 00 and 05h."""
    rng, cs = day.rng, day.customers
    b = _burst(rng, rng.integers(1, 3, n_events), cs.count)
    ts = _burst_times(rng, b, day.start + rng.integers(0, 6 * 3600 - 900, n_events),
                      rng.uniform(60, 600, b.n))  # fmt: skip
    # Half of them come from the victim's own device near home: hard to spot.
    own = rng.random(n_events) < 0.5
    far_lat, far_lon = far(rng, cs.home_lat[b.victim], cs.home_lon[b.victim], 100, 1500)
    base_lat = np.where(own, cs.home_lat[b.victim], far_lat)[b.event]
    base_lon = np.where(own, cs.home_lon[b.victim], far_lon)[b.event]
    lat, lon = near(rng, base_lat, base_lon, 6.0)
    device = np.where(
        own[b.event],
        day.devices.primary(b.cust),
        day.devices.fraud(rng, n_events)[b.event],
    )
    channel = online_or_pos(rng, b.n, 0.6)
    cat = pick(rng, RISKY_CATEGORIES, b.n)
    amount = day.spend[b.cust] * rng.lognormal(np.log(4.0), 0.6, b.n)
    return _assemble(day, b, ts, cat, amount, channel, device, lat, lon)


def _amount_outlier(day: Day, n_events: int) -> Rows:
    """One purchase 5–20× the customer's norm, otherwise ordinary: own device, home, daytime."""
    rng, cs = day.rng, day.customers
    b = _burst(rng, np.ones(n_events, dtype=np.int64), cs.count)
    ts = daytime(rng, day.start, b.n)
    lat, lon = near(rng, cs.home_lat[b.cust], cs.home_lon[b.cust], 6.0)
    channel = online_or_pos(rng, b.n, 0.5)
    cat = pick(rng, ("retail", "electronics", "travel", "health", "restaurant"), b.n)
    amount = day.spend[b.cust] * rng.uniform(5.0, 20.0, b.n)
    device = day.devices.primary(b.cust)
    return _assemble(day, b, ts, cat, amount, channel, device, lat, lon)


def _lookalike(day: Day, n_events: int) -> Rows:
    """Fraud that looks like the customer's own spending (a stolen card used "normally").

    No feature can catch these; they keep the problem from being trivially separable.
    """
    victims = day.rng.integers(0, day.customers.count, n_events)
    return habitual(day, victims, fraud=1)


# pattern -> (generator, mean transactions per event)
PATTERNS: dict[str, tuple[Callable[[Day, int], Rows], float]] = {
    "account_takeover": (_account_takeover, 4.5),
    "known_device_takeover": (_known_device_takeover, 6.0),
    "card_testing": (_card_testing, 4.5),
    "risky_night": (_risky_night, 1.5),
    "amount_outlier": (_amount_outlier, 1.0),
    "lookalike": (_lookalike, 1.0),
}


def fraud_rows(day: Day, normal_count: int, fraud_rate: float) -> list[Rows]:
    """Fraud events of every pattern, sized so fraud is `fraud_rate` of all transactions."""
    expected = fraud_rate / (1.0 - fraud_rate) * normal_count
    parts = []
    for pattern, share in day.drift.fraud_mix.items():
        make, mean_size = PATTERNS[pattern]
        n_events = int(day.rng.poisson(expected * share / mean_size))
        if n_events:
            parts.append(make(day, n_events))
    return parts
