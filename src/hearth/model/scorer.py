"""A trained model ready to score: the network, its feature spec, its config and thresholds.

`FraudScorer` is what every consumer uses (evaluation, the registry, serving). On disk it is
a directory: ``model.pt`` (state_dict), ``spec.json``, ``config.json`` and, when known,
``thresholds.json``. `FraudPyfunc` wraps that directory as an MLflow pyfunc model whose
input is the feature DataFrame and whose output is the fraud probability.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc.model import PythonModel
from pandas.api.types import is_numeric_dtype

from hearth.features.definitions import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from hearth.model.evaluate import Thresholds
from hearth.model.experiment import TrainConfig
from hearth.model.net import FraudNet

# Counts, sums, durations, distances and ratios span orders of magnitude and have long right
# tails; log1p makes them roughly symmetric before standardisation. log_amount is already a
# log and the 0/1 flags need nothing.
LOG1P_FEATURES: tuple[str, ...] = tuple(
    name
    for name in NUMERIC_FEATURES
    if name.startswith(("n_tx_", "amount_sum_", "n_merchants_"))
    or name in {"amount_ratio", "avg_amount_30d", "seconds_since_last", "distance_from_home_km"}
)
SPEC_FILE, CONFIG_FILE, WEIGHTS_FILE, THRESHOLDS_FILE = (
    "spec.json",
    "config.json",
    "model.pt",
    "thresholds.json",
)
# Large frames are scored in chunks so that memory stays flat whatever their size.
_CHUNK = 65_536
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


class FraudScorer:
    """A trained `FraudNet` with the spec, config and thresholds it belongs with."""

    def __init__(
        self,
        net: FraudNet,
        spec: FeatureSpec,
        config: TrainConfig,
        thresholds: Thresholds | None = None,
    ) -> None:
        self.net = net.eval()
        self.spec = spec
        self.config = config
        self.thresholds = thresholds

    @classmethod
    def build(cls, spec: FeatureSpec, config: TrainConfig) -> FraudScorer:
        """An untrained scorer with the architecture `config` describes."""
        net = FraudNet(spec, config.hidden_sizes, config.dropout, config.embedding_dim)
        return cls(net, spec, config)

    @property
    def device(self) -> torch.device:
        return self.net.mean.device

    def to(self, device: str | torch.device) -> Self:
        self.net.to(device)
        return self

    # -- persistence --------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        """Write the scorer directory (created if needed) and return it."""
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        torch.save(state, path / WEIGHTS_FILE)
        (path / SPEC_FILE).write_text(self.spec.to_json())
        (path / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2))
        if self.thresholds is not None:
            (path / THRESHOLDS_FILE).write_text(json.dumps(self.thresholds.to_dict(), indent=2))
        return path

    @classmethod
    def from_dir(cls, path: Path | str, device: str | torch.device = "cpu") -> FraudScorer:
        """Load a directory written by `save`."""
        path = Path(path)
        if not (path / WEIGHTS_FILE).exists():
            raise FileNotFoundError(f"{path / WEIGHTS_FILE} not found: not a scorer directory")
        spec = FeatureSpec.from_json((path / SPEC_FILE).read_text())
        config = TrainConfig.model_validate_json((path / CONFIG_FILE).read_text())
        scorer = cls.build(spec, config)
        state = torch.load(path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        scorer.net.load_state_dict(state)
        thresholds_file = path / THRESHOLDS_FILE
        if thresholds_file.exists():
            scorer.thresholds = Thresholds.from_dict(json.loads(thresholds_file.read_text()))
        return scorer.to(device)

    # -- scoring ------------------------------------------------------------------------
    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Fraud probability (float64) of every row of a feature DataFrame."""
        numeric, categorical = self.spec.encode(df)
        return self.score_arrays(numeric, categorical)

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """`predict_proba` for a few feature dicts: no pandas, for single-request latency."""
        if not records:
            return np.empty(0, dtype=np.float64)
        numeric, categorical = self.spec.encode_records(records)
        return self.score_arrays(numeric, categorical)

    def logits(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """Raw logits of encoded inputs, in chunks, in eval mode."""
        self.net.eval()
        out = np.empty(len(numeric), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(numeric), _CHUNK):
                stop = start + _CHUNK
                num = torch.from_numpy(numeric[start:stop]).to(self.device)
                cat = torch.from_numpy(categorical[start:stop]).to(self.device)
                out[start:stop] = self.net(num, cat).cpu().numpy()
        return out

    def score_arrays(self, numeric: np.ndarray, categorical: np.ndarray) -> np.ndarray:
        """Probabilities of encoded inputs; the sigmoid runs in float64 so that confident
        scores stay distinguishable from each other and from exactly 1."""
        logits = self.logits(numeric, categorical).astype(np.float64)
        return np.asarray(1.0 / (1.0 + np.exp(-logits)))


class FraudPyfunc(PythonModel):
    """MLflow pyfunc around a scorer directory (artifact ``scorer``).

    Input: a DataFrame with the feature columns (extra columns are ignored). Output: a
    float64 array of fraud probabilities. Load with
    ``mlflow.pyfunc.load_model(uri, model_config={"inference_device": "cuda"})`` to score on a GPU.
    """

    ARTIFACT = "scorer"

    def __init__(self) -> None:
        self.scorer: FraudScorer | None = None

    def load_context(self, context: Any) -> None:
        device = (context.model_config or {}).get("inference_device", "cpu")
        self.scorer = FraudScorer.from_dir(context.artifacts[self.ARTIFACT], device=device)

    # pd.DataFrame is the one hint MLflow accepts without deriving a schema from it: the
    # logged signature stays the schema.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        if self.scorer is None:  # load_context always runs first under mlflow
            raise RuntimeError("FraudPyfunc used before load_context")
        return self.scorer.predict_proba(pd.DataFrame(model_input))
