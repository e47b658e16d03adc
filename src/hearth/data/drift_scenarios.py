"""What each ``--drift`` variant of the generator changes: one row of knobs per drift.

A drifted period has the same customers, merchants and devices as the base period; only the
knobs below move. Everything else about a day (habits, fraud patterns, dirt) reads them from
the day's `Drift`, so this table is the whole difference between the variants.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# Share of fraud *transactions* per pattern (names of `hearth.data.fraud_patterns.PATTERNS`).
_BASE_FRAUD_MIX: Mapping[str, float] = {
    "account_takeover": 0.3, "card_testing": 0.22, "risky_night": 0.22,
    "amount_outlier": 0.14, "lookalike": 0.12,
}  # fmt: skip
# Fast takeovers on the victim's own device, and more card testing.
_PATTERN_DRIFT_FRAUD_MIX: Mapping[str, float] = {
    "known_device_takeover": 0.36, "card_testing": 0.42, "risky_night": 0.05,
    "amount_outlier": 0.05, "lookalike": 0.12,
}  # fmt: skip


@dataclass(frozen=True)
class Drift:
    """The knobs one drift sets; the defaults are the base period's."""

    name: str
    fraud_mix: Mapping[str, float]
    # Spending drift: everybody spends about 60 % more (a multiplier on the typical amount)...
    spend_factor: float = 1.0
    # ...and moves online: this share of their offline habit goes.
    online_shift: float = 0.0
    # Card testing usually comes from a fraudster's device; after the fraud-pattern drift,
    # mostly from the victim's own, compromised one.
    card_testing_fraud_device: float = 0.8


_VARIANTS: dict[str, Drift] = {
    "none": Drift("none", _BASE_FRAUD_MIX),
    "spending": Drift("spending", _BASE_FRAUD_MIX, spend_factor=1.6, online_shift=0.4),
    "fraud-pattern": Drift(
        "fraud-pattern", _PATTERN_DRIFT_FRAUD_MIX, card_testing_fraud_device=0.3
    ),
}
# A drift's position is part of every day's seed: add new drifts at the end, never reorder.
DRIFTS: tuple[str, ...] = tuple(_VARIANTS)


def drift_named(name: str) -> Drift:
    """The drift called `name`; ValueError naming the valid ones for anything else."""
    if name not in _VARIANTS:
        raise ValueError(f"unknown drift {name!r}; valid drifts: {', '.join(DRIFTS)}")
    return _VARIANTS[name]
