"""A plain BentoML service around the registered model: what a BentoML user writes first.

The benchmark's "BentoML with its defaults" contender: one service, default workers and
traffic settings, the MLflow pyfunc loaded from the registry (MLFLOW_TRACKING_URI, alias
champion), one feature row in, one probability out. No auth, store, routing or lineage.
"""

from __future__ import annotations

import os
from typing import Any

import bentoml
import pandas as pd

MODEL_URI = "models:/fraud-detector@champion"


@bentoml.service
class Plain:
    def __init__(self) -> None:
        import mlflow.pyfunc

        self.model = mlflow.pyfunc.load_model(os.environ.get("HEARTH_BENCH_MODEL_URI", MODEL_URI))

    @bentoml.api
    def predict(self, features: dict[str, Any]) -> dict[str, float]:
        probability = self.model.predict(pd.DataFrame([features]))
        return {"fraud_probability": float(probability[0])}
