"""The transactions every contender scores, in the form each one takes.

Real transactions from ``data/processed``: the raw fields (what Hearth's gateway and the
echo take) and, for the same transactions, the feature rows the offline ETL computed (what
the bare model servers take: they receive features, not transactions, so they do less).
Replayed transactions get fresh ids and timestamps after the data's end, one second
apart, so the online store sees a plausible stream.
"""

from __future__ import annotations

import json
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
    """`transactions[i]` and `features[i]` describe the same transaction."""

    transactions: list[dict[str, Any]]
    features: list[dict[str, float | str]]

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
    two of its transactions (the data's span over its count), in epoch seconds."""

    end_s: float
    gap_s: float
    transactions: int


def data_pace(processed: Path) -> DataPace:
    """The pace of ``transactions.parquet``: where replayed traffic continues, and how fast."""
    times = pd.read_parquet(processed / "transactions.parquet", columns=["timestamp"])["timestamp"]
    start, end = times.min().timestamp(), times.max().timestamp()
    return DataPace(
        end_s=end, gap_s=(end - start) / max(1, len(times) - 1), transactions=len(times)
    )


def load_workload(processed: Path, n: int, seed: int = 0) -> Workload:
    """`n` transactions (with replacement when the data has fewer) and their features."""
    raw = pd.read_parquet(processed / "transactions.parquet")
    feats = pd.read_parquet(processed / "test.parquet")
    feature_cols = [c for c in feats.columns if c not in _NOT_FEATURES]
    joined = feats.merge(raw[list(TRANSACTION_FIELDS)], on="transaction_id", suffixes=("_f", ""))
    sample = joined.sample(n=n, replace=n > len(joined), random_state=seed)
    start = raw["timestamp"].max().to_pydatetime() + timedelta(days=1)
    transactions, features = [], []
    for i, row in enumerate(sample.to_dict("records")):
        txn = {k: _plain(row[k]) for k in TRANSACTION_FIELDS}
        txn["transaction_id"] = f"bench-{i}"
        txn["timestamp"] = (start + timedelta(seconds=i)).strftime(TIMESTAMP_FORMAT)
        transactions.append(txn)
        features.append({c: _plain(row[c]) for c in feature_cols})
    return Workload(transactions, features)


def _plain(value: Any) -> Any:
    """numpy scalars as the JSON-able Python values they hold."""
    return value.item() if hasattr(value, "item") else value
