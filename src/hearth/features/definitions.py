"""The one definition of every model feature.

Offline (`hearth.features.offline`, DuckDB SQL over all clean transactions) and online
(`hearth.features.online`, one incoming transaction against a customer's stored state)
both compute exactly these, from these constants; a test proves they agree.

Semantics, shared by both paths:
- History features describe the customer's transactions *strictly before* this one's
  timestamp. Transactions of the same customer in the same second do not see each other, so
  the result does not depend on the order in which ties are processed.
- Amounts are compared in EUR: ``amount_eur = amount * EUR_RATES[currency]``.
- ``log_amount = ln(1 + amount_eur)``.
- ``n_tx_<w>`` / ``amount_sum_<w>``: count and EUR sum of prior transactions with
  ``timestamp - w <= t_prior < timestamp`` for each window w in ``WINDOWS``.
- ``avg_amount_30d``: mean EUR amount of prior transactions in ``AVG_WINDOW``; 0 if none.
- ``is_cold_start``: 1 when there is no prior transaction in ``AVG_WINDOW`` (new or
  unknown customer, or one silent for a month), else 0.
- ``amount_ratio = amount_eur / avg_amount_30d``; 1 on a cold start.
- ``n_merchants_7d``: distinct merchant ids among prior transactions in ``MERCHANT_WINDOW``.
- ``seconds_since_last``: seconds since the latest prior transaction, capped at
  ``SECONDS_SINCE_LAST_CAP`` (also the value when there is none).
- ``is_new_device``: 1 when the customer never used this device_id before, else 0.
- ``distance_from_home_km``: haversine distance from the customer's home (customer master
  data) to the transaction's coordinates; 0 when the home is unknown.
- ``hour``: hour of day (UTC) of the timestamp; categorical.
"""

from __future__ import annotations

from datetime import timedelta

from hearth.schema import CHANNELS, MERCHANT_CATEGORIES

WINDOWS: dict[str, timedelta] = {
    "1h": timedelta(hours=1),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
AVG_WINDOW = timedelta(days=30)
MERCHANT_WINDOW = timedelta(days=7)
SECONDS_SINCE_LAST_CAP = AVG_WINDOW.total_seconds()
# The online store never needs history older than the longest window.
HISTORY_HORIZON = max([*WINDOWS.values(), AVG_WINDOW, MERCHANT_WINDOW])
EARTH_RADIUS_KM = 6371.0088

NUMERIC_FEATURES: tuple[str, ...] = (
    "log_amount",
    "amount_ratio",
    *(f"n_tx_{w}" for w in WINDOWS),
    *(f"amount_sum_{w}" for w in WINDOWS),
    "avg_amount_30d",
    "n_merchants_7d",
    "seconds_since_last",
    "is_new_device",
    "distance_from_home_km",
    "is_cold_start",
)
CATEGORICAL_FEATURES: dict[str, tuple[str, ...]] = {
    "channel": CHANNELS,
    "merchant_category": MERCHANT_CATEGORIES,
    "hour": tuple(str(h) for h in range(24)),
}
FEATURES: tuple[str, ...] = (*NUMERIC_FEATURES, *CATEGORICAL_FEATURES)

# Columns of every processed Parquet file besides the features.
KEY_COLUMNS: tuple[str, ...] = ("transaction_id", "timestamp", "customer_id")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
