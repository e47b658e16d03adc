"""The transactions every contender scores, in the form each one takes.

Real transactions from ``data/processed``: the raw fields (what Hearth's gateway and the
echo take) and, for the same transactions, the feature rows the offline ETL computed (what
the bare model servers take: they receive features, not transactions, so they do less).
Replayed transactions get fresh ids and timestamps after the data's end, at the data's own
pace per customer (`DataPace.step_s`), so the online store sees a plausible stream: each
customer's history keeps about the size the data gives it, the 30-day horizon pruning about
as much as the replay adds. (At one second apart, as before, the 400-1 000 customers a run
reaches each transacted every few minutes: their histories doubled within a 12 s cell and
every cell cost more per request than the one before it, the faster contenders most.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from hearth.schema import TIMESTAMP_FORMAT, TRANSACTION_FIELDS

# Columns of the processed feature tables that are keys or the label, not model inputs.
_NOT_FEATURES = {"transaction_id", "timestamp", "customer_id", "is_fraud"}


@dataclass(frozen=True)
class Workload:
    """`transactions[i]` and `features[i]` describe the same transaction; `pace` is the
    data's, which replays of these transactions keep (`step_for`)."""

    transactions: list[dict[str, Any]]
    features: list[dict[str, float | str]]
    pace: DataPace

    def step_for(self, picked: Iterable[int]) -> float:
        """Seconds between transactions replayed from `picked` (indices into
        `transactions`): the data's pace for the customers they reach."""
        return self.pace.step_s(len({self.transactions[i]["customer_id"] for i in picked}))

    def __len__(self) -> int:
        return len(self.transactions)

    def bodies(self, kind: str) -> list[bytes]:
        """Request bodies of one kind (see `BODY_KINDS`), one per transaction."""
        encode = BODY_KINDS[kind]
        return [
            encode(t, f).encode() for t, f in zip(self.transactions, self.features, strict=True)
        ]


def _transaction(txn: dict[str, Any], _: dict[str, Any]) -> str:
    return json.dumps(txn)


def _dataframe_split(_: dict[str, Any], features: dict[str, Any]) -> str:
    columns = list(features)
    return json.dumps({"dataframe_split": {"columns": columns, "data": [list(features.values())]}})


def _features(_: dict[str, Any], features: dict[str, Any]) -> str:
    return json.dumps({"features": features})


def _score_items(_: dict[str, Any], features: dict[str, Any]) -> str:
    return json.dumps([{"variant": "champion", "features": features}])


BODY_KINDS = {
    "transaction": _transaction,  # Hearth's POST /predict, the echo
    "dataframe_split": _dataframe_split,  # mlflow models serve /invocations
    "features": _features,  # the plain BentoML service
    "score_items": _score_items,  # Hearth's model service, /internal/predict
}


@dataclass(frozen=True)
class DataPace:
    """How the generated population transacts: its last transaction and the mean gap between
    two of its transactions (the data's span over its count), in epoch seconds; how many
    transactions and customers it has."""

    end_s: float
    gap_s: float
    transactions: int
    customers: int

    def step_s(self, customers: int) -> float:
        """Seconds between replayed transactions that reach only `customers` of the
        population, so that each of them transacts at the data's pace (not faster)."""
        return self.gap_s * self.customers / max(1, customers)


def data_pace(processed: Path) -> DataPace:
    """The pace of ``transactions.parquet``: where replayed traffic continues, and how fast."""
    columns = ["timestamp", "customer_id"]
    return _pace(pd.read_parquet(processed / "transactions.parquet", columns=columns))


def _pace(raw: pd.DataFrame) -> DataPace:
    start, end = raw["timestamp"].min().timestamp(), raw["timestamp"].max().timestamp()
    return DataPace(
        end_s=end,
        gap_s=(end - start) / max(1, len(raw) - 1),
        transactions=len(raw),
        customers=raw["customer_id"].nunique(),
    )


def load_workload(processed: Path, n: int, seed: int = 0) -> Workload:
    """`n` transactions (with replacement when the data has fewer) and their features."""
    raw = pd.read_parquet(processed / "transactions.parquet")
    feats = pd.read_parquet(processed / "test.parquet")
    feature_cols = [c for c in feats.columns if c not in _NOT_FEATURES]
    joined = feats.merge(raw[list(TRANSACTION_FIELDS)], on="transaction_id", suffixes=("_f", ""))
    sample = joined.sample(n=n, replace=n > len(joined), random_state=seed)
    pace = _pace(raw)
    step = pace.step_s(sample["customer_id"].nunique())
    start = raw["timestamp"].max().to_pydatetime() + timedelta(days=1)
    transactions, features = [], []
    for i, row in enumerate(sample.to_dict("records")):
        txn = {k: _plain(row[k]) for k in TRANSACTION_FIELDS}
        txn["transaction_id"] = f"bench-{i}"
        txn["timestamp"] = (start + timedelta(seconds=round(i * step))).strftime(TIMESTAMP_FORMAT)
        transactions.append(txn)
        features.append({c: _plain(row[c]) for c in feature_cols})
    return Workload(transactions, features, pace)


def _plain(value: Any) -> Any:
    """numpy scalars as the JSON-able Python values they hold."""
    return value.item() if hasattr(value, "item") else value
