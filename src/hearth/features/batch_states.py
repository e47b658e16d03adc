"""Customer states from batch data: the clean transactions replayed into the online store.

`hearth.features.store.materialize` loads these into a store; serving then updates them one
transaction at a time with `hearth.features.online` (the same `apply_entry`, so a state built
here equals one built by observing the same transactions, ids included).
"""

from __future__ import annotations

import pandas as pd

from hearth.features.online import CustomerState, apply_entry, home_location
from hearth.schema import EUR_RATES


def build_states(
    transactions_df: pd.DataFrame, customers_df: pd.DataFrame
) -> dict[str, CustomerState]:
    """Replay clean transactions (as in transactions.parquet) into one state per customer.

    `customers_df` has customer_id, home_latitude, home_longitude (customers.parquet or the
    raw customers.csv: invalid homes become None). Every customer in either frame gets a
    state, keeping transaction ids so that serving recognises a retry of a transaction the
    batch data already holds. Transactions are applied in timestamp order.
    """
    states: dict[str, CustomerState] = {}
    for cid, lat, lon in zip(
        customers_df["customer_id"].astype(str),
        customers_df["home_latitude"],
        customers_df["home_longitude"],
        strict=True,
    ):
        states.setdefault(cid, CustomerState(home=home_location(lat, lon)))
    if transactions_df.empty:
        return states
    df = transactions_df.sort_values("timestamp", kind="stable")
    amount_eur = df["amount"].to_numpy(float) * df["currency"].map(EUR_RATES).to_numpy(float)
    seconds = _epoch_seconds_series(df["timestamp"])
    for cid, ts, amount, merchant, device, tid in zip(
        df["customer_id"].astype(str).tolist(),
        seconds.tolist(),
        amount_eur.tolist(),
        df["merchant_id"].astype(str).tolist(),
        df["device_id"].astype(str).tolist(),
        df["transaction_id"].astype(str).tolist(),
        strict=True,
    ):
        state = states.get(cid)
        if state is None:
            state = states[cid] = CustomerState()
        apply_entry(state, ts, amount, merchant, device, tid)
    return states


def _epoch_seconds_series(timestamps: pd.Series) -> pd.Series:
    """Whole epoch seconds of a datetime column (naive = UTC), whatever its resolution."""
    ts = pd.to_datetime(timestamps)
    if ts.dt.tz is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return (ts - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
