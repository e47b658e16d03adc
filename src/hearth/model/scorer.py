"""A trained model ready to score: the network, its feature spec, its config and thresholds.

`FraudScorer` is what every consumer uses (evaluation, the registry, serving). On disk it is
a directory: ``model.pt`` (state_dict), ``spec.json``, ``config.json`` and, when known,
``thresholds.json``. `FraudPyfunc` wraps that directory as an MLflow pyfunc model whose
input is the feature DataFrame and whose output is the fraud probability.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
import torch
from mlflow.pyfunc.model import PythonModel

from hearth.model.evaluate import Thresholds
from hearth.model.experiment import TrainConfig
from hearth.model.feature_spec import FeatureSpec
from hearth.model.net import FraudNet

SPEC_FILE, CONFIG_FILE, WEIGHTS_FILE, THRESHOLDS_FILE = (
    "spec.json",
    "config.json",
    "model.pt",
    "thresholds.json",
)
# Large frames are scored in chunks so that memory stays flat whatever their size.
_CHUNK = 65_536


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
    def build(
        cls, spec: FeatureSpec, config: TrainConfig, generator: torch.Generator | None = None
    ) -> FraudScorer:
        """An untrained scorer with the architecture `config` describes.

        With `generator`, its initial weights draw from that alone, not torch's global RNG.
        """
        net = FraudNet(
            spec, config.hidden_sizes, config.dropout, config.embedding_dim, generator=generator
        )
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
