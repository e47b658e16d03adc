"""The bench's workload: real transactions replayed at the data's own pace per customer.

At one second apart (as the bench sent them before) the few hundred customers a run
reaches each transacted every few minutes; their histories doubled within a cell and every
cell cost more per request than the one before, the faster contenders most.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pandas as pd
import pytest

from hearth.bench.workload import load_workload
from hearth.schema import TRANSACTION_FIELDS, parse_timestamp


def _processed(folder: Path, customers: int, per_customer: int) -> None:
    """A processed folder of `customers` x `per_customer` transactions, one a minute."""
    n = customers * per_customer
    raw = pd.DataFrame(
        {
            "transaction_id": [f"t{i}" for i in range(n)],
            "timestamp": pd.date_range("2026-01-01", periods=n, freq="60s"),
            "customer_id": [f"c{i % customers}" for i in range(n)],
            "merchant_id": "m1",
            "merchant_category": "grocery",
            "amount": 12.5,
            "currency": "EUR",
            "channel": "pos",
            "device_id": "d1",
            "latitude": 48.1,
            "longitude": 11.6,
            "is_fraud": 0,
        }
    )
    assert set(TRANSACTION_FIELDS) <= set(raw.columns)
    raw.to_parquet(folder / "transactions.parquet")
    features = raw[["transaction_id", "timestamp", "customer_id", "is_fraud"]].assign(amount_z=0.5)
    features.to_parquet(folder / "test.parquet")


@pytest.mark.parametrize("customers", [1, 4])
def test_replayed_transactions_keep_each_customers_pace(tmp_path: Path, customers: int) -> None:
    _processed(tmp_path, customers=4, per_customer=25)  # 100 transactions, 60 s apart
    workload = load_workload(tmp_path, 40, seed=3)
    reached = {t["customer_id"] for t in workload.transactions}
    assert len(reached) == 4 and workload.pace.customers == 4
    times = [parse_timestamp(t["timestamp"]) for t in workload.transactions]
    # Every customer is reached: the data's own gap (99 gaps over 99 minutes) apart.
    gaps = {round((b - a).total_seconds()) for a, b in itertools.pairwise(times)}
    assert gaps == {60}
    assert times[0] == pd.Timestamp("2026-01-01") + pd.Timedelta(minutes=99, days=1)
    assert workload.features[0] == {"amount_z": 0.5}
    # Replayed to fewer customers (wrk's templates), each keeps its pace: the stream slows.
    one = [i for i, t in enumerate(workload.transactions) if t["customer_id"] == "c0"]
    picked = one if customers == 1 else range(len(workload))
    assert workload.step_for(picked) == pytest.approx(60.0 * 4 / customers)
