"""Offline features: DuckDB SQL over all clean transactions, generated from `definitions`.

Every window length, cap and constant comes from `hearth.features.definitions`, so changing a
definition changes this SQL and the online code together; `tests/unit/test_features_parity.py`
proves the two agree. The SQL reads two tables:

- transactions: the clean typed transactions (``transaction_id, timestamp, customer_id,
  merchant_id, merchant_category, channel, device_id, latitude, longitude, amount_eur,
  is_fraud``), as written by the ETL;
- customers: ``customer_id, home_latitude, home_longitude`` with NULL coordinates where the
  home is unknown (one row per customer).

The ETL computes the same history table with `hearth.features.history` (sorted arrays,
several times cheaper than these framed windows) and `feature_sql` on it; the SQL here stays
the reference that `tests/unit/test_features_history.py` holds it to.
"""

from __future__ import annotations

from datetime import timedelta

import duckdb

from hearth.features.definitions import (
    AVG_WINDOW,
    CATEGORICAL_FEATURES,
    EARTH_RADIUS_KM,
    FEATURES,
    KEY_COLUMNS,
    MERCHANT_WINDOW,
    NUMERIC_FEATURES,
    SECONDS_SINCE_LAST_CAP,
    WINDOWS,
)
from hearth.features.online import window_seconds

LABEL_COLUMN = "is_fraud"
# Columns of the relation that `build_feature_sql` returns, in order.
OUTPUT_COLUMNS: tuple[str, ...] = (*KEY_COLUMNS, *FEATURES, LABEL_COLUMN)


def _frame(window: timedelta | None) -> str:
    """The customer's transactions strictly before this one's second, within `window`.

    Timestamps have whole-second resolution (the raw contract), so a RANGE frame ending one
    second before the current row holds exactly the strictly earlier transactions: ties
    never see each other, as the definitions require. The lower bound is inclusive
    (``timestamp - w <= t_prior``). ``... AND CURRENT ROW EXCLUDE GROUP`` says the same,
    but DuckDB evaluates frames with an exclusion several times slower (its windowed
    DISTINCT count most of all).
    """
    start = "UNBOUNDED" if window is None else f"INTERVAL {window_seconds(window)} SECOND"
    return (
        'PARTITION BY customer_id ORDER BY "timestamp" '
        f"RANGE BETWEEN {start} PRECEDING AND INTERVAL 1 SECOND PRECEDING"
    )


def _haversine_sql(lat: str, lon: str, home_lat: str, home_lon: str) -> str:
    """Great-circle distance in km; the same expression, term by term, as the online code."""
    a = (
        f"pow(sin(radians({lat} - {home_lat}) / 2), 2) + "
        f"cos(radians({home_lat})) * cos(radians({lat})) * "
        f"pow(sin(radians({lon} - {home_lon}) / 2), 2)"
    )
    # Rounding can push `a` a hair above 1 for antipodes; asin would return NaN.
    return f"2 * {EARTH_RADIUS_KM!r} * asin(sqrt(least(1.0, {a})))"


def build_history_sql(transactions: str, customers: str) -> str:
    """SQL for each transaction's history, narrow and in `transactions`' order.

    One row per row of the table `transactions`: ``pos`` (its rowid), the window aggregates
    and the customer's home, ordered by ``pos``. Only these few columns go through the
    window's sort by (customer, timestamp) and the sort back, not the whole transaction;
    `feature_sql` puts them beside the transaction again.
    """
    windows = {f"w_{name}": length for name, length in WINDOWS.items()}
    window_defs = [f"{alias} AS ({_frame(length)})" for alias, length in windows.items()]
    window_defs += [
        f"w_avg AS ({_frame(AVG_WINDOW)})",
        f"w_merchants AS ({_frame(MERCHANT_WINDOW)})",
        f"w_all AS ({_frame(None)})",
    ]
    per_window = []
    for name in WINDOWS:
        per_window.append(f"count(*) OVER w_{name} AS n_tx_{name}")
        per_window.append(f"coalesce(sum(amount_eur) OVER w_{name}, 0) AS amount_sum_{name}")
    history = ",\n        ".join(
        [
            *per_window,
            "count(*) OVER w_avg AS n_avg",
            "coalesce(sum(amount_eur) OVER w_avg, 0) AS sum_avg",
            "count(DISTINCT merchant_id) OVER w_merchants AS n_merchants_7d",
            'max("timestamp") OVER w_all AS last_ts',
            # The first use of a device by this customer; "new" when it is not strictly earlier.
            'min("timestamp") OVER (PARTITION BY customer_id, device_id) AS device_first_seen',
        ]
    )
    return f"""
WITH h AS (
    SELECT rowid AS pos, customer_id,
        {history}
    FROM {transactions}
    WINDOW {", ".join(window_defs)}
)
SELECT h.* EXCLUDE (customer_id), c.home_latitude, c.home_longitude
FROM h LEFT JOIN {customers} AS c USING (customer_id)
ORDER BY pos
"""


def feature_sql(transactions: str, history: str) -> str:
    """SQL computing KEY_COLUMNS + FEATURES + is_fraud for every row of `transactions`, in
    its order, from `history` (`build_history_sql` of it, or a table holding that).

    `transactions` is a table name in the connection that will run the SQL, `history` a
    table name or a parenthesised subquery. Numeric features are DOUBLE, categorical ones
    VARCHAR.
    """
    cap = repr(float(SECONDS_SINCE_LAST_CAP))
    # avg and ratio are written as sum / n and amount / avg, the same operations as online.
    computed = {
        "log_amount": "ln(1 + t.amount_eur)",
        "amount_ratio": "CASE WHEN h.n_avg = 0 THEN 1.0 "
        "ELSE t.amount_eur / (h.sum_avg / h.n_avg) END",
        **{f"n_tx_{w}": f"h.n_tx_{w}" for w in WINDOWS},
        **{f"amount_sum_{w}": f"h.amount_sum_{w}" for w in WINDOWS},
        "avg_amount_30d": "CASE WHEN h.n_avg = 0 THEN 0.0 ELSE h.sum_avg / h.n_avg END",
        "n_merchants_7d": "h.n_merchants_7d",
        "seconds_since_last": f"CASE WHEN h.last_ts IS NULL THEN {cap} "
        f"ELSE least({cap}, date_diff('second', h.last_ts, t.\"timestamp\")) END",
        "is_new_device": 'CASE WHEN h.device_first_seen < t."timestamp" THEN 0 ELSE 1 END',
        "distance_from_home_km": "CASE WHEN h.home_latitude IS NULL OR h.home_longitude IS NULL "
        "THEN 0.0 ELSE "
        + _haversine_sql("t.latitude", "t.longitude", "h.home_latitude", "h.home_longitude")
        + " END",
        # The positional join below pairs rows by order; a misaligned history stops the run.
        "is_cold_start": "CASE WHEN h.pos IS DISTINCT FROM t.rowid "
        "THEN error('offline features: history out of step with the transactions') "
        "WHEN h.n_avg = 0 THEN 1 ELSE 0 END",
    }
    categorical = {
        "channel": "t.channel",
        "merchant_category": "t.merchant_category",
        "hour": 'CAST(hour(t."timestamp") AS VARCHAR)',
    }
    # Fail loudly if definitions.py gains a feature that this SQL does not compute.
    if set(computed) != set(NUMERIC_FEATURES) or set(categorical) != set(CATEGORICAL_FEATURES):
        raise RuntimeError("offline SQL is out of sync with hearth.features.definitions")
    select = [f't."{key}"' for key in KEY_COLUMNS]
    select += [f"CAST({computed[name]} AS DOUBLE) AS {name}" for name in NUMERIC_FEATURES]
    select += [f"CAST({categorical[name]} AS VARCHAR) AS {name}" for name in CATEGORICAL_FEATURES]
    select.append(f"CAST(t.{LABEL_COLUMN} AS BIGINT) AS {LABEL_COLUMN}")
    select_sql = ",\n    ".join(select)
    return f"""
SELECT
    {select_sql}
FROM {transactions} AS t POSITIONAL JOIN {history} AS h
"""


def build_feature_sql(transactions: str, customers: str) -> str:
    """SQL computing KEY_COLUMNS + FEATURES + is_fraud for every row of the table
    `transactions`, in its order (see `feature_sql`)."""
    return feature_sql(transactions, f"({build_history_sql(transactions, customers)})")


def compute_offline_features(
    con: duckdb.DuckDBPyConnection,
    transactions: str = "clean_transactions",
    customers: str = "customers",
) -> duckdb.DuckDBPyRelation:
    """The feature relation for every clean transaction (lazy; materialise it yourself)."""
    return con.sql(build_feature_sql(transactions, customers))
