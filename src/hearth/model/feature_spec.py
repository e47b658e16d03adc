"""How raw feature columns become network inputs: `FeatureSpec`, fitted on the train split."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_numeric_dtype

from hearth.features.definitions import CATEGORICAL_FEATURES, NUMERIC_FEATURES

# Counts, sums, durations, distances and ratios span orders of magnitude and have long right
# tails; log1p makes them roughly symmetric before standardisation. log_amount is already a
# log and the 0/1 flags need nothing.
LOG1P_FEATURES: tuple[str, ...] = tuple(
    name
    for name in NUMERIC_FEATURES
    if name.startswith(("n_tx_", "amount_sum_", "n_merchants_"))
    or name in {"amount_ratio", "avg_amount_30d", "seconds_since_last", "distance_from_home_km"}
)
# A feature that is constant in training would divide by zero.
_MIN_STD = 1e-6


@dataclass(frozen=True)
class FeatureSpec:
    """How raw feature columns become network inputs; fitted on the training split only."""

    numeric: tuple[str, ...]
    log1p: tuple[str, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    categorical: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        train: pd.DataFrame,
        numeric: Sequence[str] = NUMERIC_FEATURES,
        categorical: Mapping[str, Sequence[str]] = CATEGORICAL_FEATURES,
        log1p: Sequence[str] = LOG1P_FEATURES,
    ) -> FeatureSpec:
        """Means and stds of the (log1p-transformed) numerics of `train`."""
        values = _numeric_matrix(train, tuple(numeric)).astype(np.float64)
        mask = np.array([name in log1p for name in numeric])
        values[:, mask] = np.log1p(np.clip(values[:, mask], 0.0, None))
        stds = values.std(axis=0)
        return cls(
            numeric=tuple(numeric),
            log1p=tuple(name for name in numeric if name in log1p),
            means=tuple(float(m) for m in values.mean(axis=0)),
            stds=tuple(float(s) if s > _MIN_STD else 1.0 for s in stds),
            categorical={name: tuple(vocab) for name, vocab in categorical.items()},
        )

    @property
    def columns(self) -> tuple[str, ...]:
        """Every input column, numerics first."""
        return (*self.numeric, *self.categorical)

    def encode(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(numeric float32 in raw units, categorical int64 codes; 0 = unknown) of `df`."""
        missing = [c for c in self.columns if c not in df.columns]
        if missing:
            raise ValueError(f"missing feature columns: {', '.join(missing)}")
        codes = np.empty((len(df), len(self.categorical)), dtype=np.int64)
        for i, (name, vocab) in enumerate(self.categorical.items()):
            codes[:, i] = pd.Categorical(_as_strings(df[name]), categories=vocab).codes + 1
        return _numeric_matrix(df, self.numeric), codes

    def encode_records(self, records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """`encode` for a few dicts, without building a DataFrame (the serving path)."""
        index = self._index
        try:
            num = [[float(r[c]) for c in self.numeric] for r in records]
            cat = [[index[c].get(_as_string(r[c]), 0) for c in self.categorical] for r in records]
        except KeyError as exc:
            raise ValueError(f"missing feature: {exc.args[0]}") from exc
        except (TypeError, ValueError) as exc:
            raise ValueError(f"a numeric feature is not a number: {exc}") from exc
        numeric = np.asarray(num, dtype=np.float32).reshape(len(records), len(self.numeric))
        _check_finite(numeric, self.numeric)
        return numeric, np.asarray(cat, dtype=np.int64).reshape(len(records), -1)

    @property
    def _index(self) -> dict[str, dict[str, int]]:
        # Cached on the instance by hand: the dataclass is frozen.
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {
                name: {value: i + 1 for i, value in enumerate(vocab)}
                for name, vocab in self.categorical.items()
            }
            object.__setattr__(self, "_index_cache", cached)
        return cached

    def to_dict(self) -> dict[str, Any]:
        return {
            "numeric": list(self.numeric),
            "log1p": list(self.log1p),
            "means": list(self.means),
            "stds": list(self.stds),
            "categorical": {name: list(vocab) for name, vocab in self.categorical.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            numeric=tuple(data["numeric"]),
            log1p=tuple(data["log1p"]),
            means=tuple(float(v) for v in data["means"]),
            stds=tuple(float(v) for v in data["stds"]),
            categorical={k: tuple(v) for k, v in data["categorical"].items()},
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> FeatureSpec:
        return cls.from_dict(json.loads(text))


def _numeric_matrix(df: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    try:
        # A writable copy: pandas' copy-on-write may hand out read-only views, which
        # torch.from_numpy warns about.
        matrix = np.array(df.loc[:, list(columns)].to_numpy(dtype=np.float32), copy=True)
    except KeyError as exc:
        raise ValueError(f"missing feature columns: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ValueError(f"numeric feature columns must hold numbers: {exc}") from exc
    _check_finite(matrix, columns)
    return matrix


def _check_finite(matrix: np.ndarray, columns: Sequence[str]) -> None:
    bad = ~np.isfinite(matrix).all(axis=0)
    if bad.any():
        names = ", ".join(c for c, b in zip(columns, bad, strict=True) if b)
        raise ValueError(f"NaN or infinite values in numeric features: {names}")


def _as_strings(series: pd.Series) -> pd.Series:
    # hour may arrive as integers (3) or integral floats (3.0); the vocabulary says "3".
    if is_numeric_dtype(series) and series.notna().all():
        return series.astype(np.int64).astype(str)
    return series.astype(str)


def _as_string(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)
