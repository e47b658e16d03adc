"""MLflow tracking and the registration gate, against a real (tmp_path sqlite) MLflow.

The acceptance test trains three real models of known quality (weak, good, broken) and
walks them through the gate: first → champion, better → challenger, worse → rejected with
its reason, every alias untouched.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from hearth import registry
from hearth.config import Settings
from hearth.features.definitions import FEATURES
from hearth.lineage import Lineage
from hearth.model.experiment import TrainConfig
from hearth.model.train import Splits, TrainResult, train_model
from hearth.params import RegistryParams, ThresholdParams
from tests.helpers import synthetic_features

LINEAGE = Lineage("0123abcd.dir", "deadbeef", "passed: raw 3/3, processed 3/3", "exp.yaml")
PARAMS = RegistryParams()  # pr_auc, margin 0.005


@pytest.fixture(scope="module")
def splits() -> Splits:
    return Splits(
        synthetic_features(6000, 1), synthetic_features(2000, 2), synthetic_features(3000, 3)
    )


@pytest.fixture(scope="module")
def models(splits: Splits) -> dict[str, TrainResult]:
    """Three real models whose test PR-AUC is ordered broken < weak < good."""
    base = TrainConfig(epochs=4, batch_size=256, learning_rate=0.003, seed=1)
    small = Splits(splits.train.head(1500), splits.valid, splits.test)
    weak = base.model_copy(update={"epochs": 1, "learning_rate": 1e-3, "hidden_sizes": (4,)})
    broken = base.model_copy(update={"epochs": 2, "shuffle_labels": True})
    return {
        "weak": train_model(small, weak, ThresholdParams()),
        "good": train_model(splits, base, ThresholdParams()),
        "broken": train_model(splits, broken, ThresholdParams()),
    }


def _log(result: TrainResult, splits: Splits, out: Path, **kwargs: str) -> str:
    return registry.log_training_run(
        result, LINEAGE, "fraud", out.name, splits.test, ThresholdParams(), out, **kwargs
    )


def test_gate_champion_challenger_and_rejection(
    settings: Settings, splits: Splits, models: dict[str, TrainResult], tmp_path: Path
) -> None:
    registry.configure(settings)
    client = MlflowClient()
    name = PARAMS.model_name

    first = registry.register_and_gate(
        _log(models["weak"], splits, tmp_path / "weak"), splits.test, PARAMS
    )
    assert (first.version, first.alias) == (1, "champion")
    assert client.get_registered_model(name).aliases == {"champion": 1}

    better = registry.register_and_gate(
        _log(models["good"], splits, tmp_path / "good"), splits.test, PARAMS
    )
    assert (better.version, better.alias, better.champion_version) == (2, "challenger", 1)
    assert better.candidate_metric >= better.champion_metric + PARAMS.promotion_margin
    assert better.champion_metric == pytest.approx(first.candidate_metric)
    aliases = client.get_registered_model(name).aliases
    assert aliases == {"champion": 1, "challenger": 2}

    worse = registry.register_and_gate(
        _log(models["broken"], splits, tmp_path / "broken"), splits.test, PARAMS
    )
    assert (worse.version, worse.alias, worse.decision) == (3, None, "rejected")
    assert client.get_registered_model(name).aliases == aliases  # nothing moved
    version = client.get_model_version(name, "3")
    reason = (
        f"pr_auc {worse.candidate_metric:.4f} < champion v1 {worse.champion_metric:.4f}"
        f" + margin {PARAMS.promotion_margin:g}"
    )
    assert version.tags["hearth.rejected_reason"] == reason == worse.reason
    assert version.description == reason
    assert version.tags["hearth.decision"] == "rejected"
    assert float(version.tags["hearth.candidate_pr_auc"]) == pytest.approx(
        worse.candidate_metric, abs=1e-6
    )
    assert float(version.tags["hearth.champion_pr_auc"]) == pytest.approx(
        worse.champion_metric, abs=1e-6
    )
    assert version.tags["hearth.data_version"] == LINEAGE.data_version
    assert "hearth.rejected_reason" not in client.get_model_version(name, "2").tags
    assert client.get_model_version(name, "2").tags["hearth.decision"] == "challenger"
    assert worse.to_dict()["decision"] == "rejected"

    # The registered pyfunc is the scorer: same numbers on the feature frame.
    loaded = mlflow.pyfunc.load_model(
        f"models:/{name}@challenger", model_config={"inference_device": "cpu"}
    )
    assert loaded.unwrap_python_model().scorer.thresholds == models["good"].thresholds
    np.testing.assert_allclose(
        loaded.predict(splits.test.loc[:, list(FEATURES)]),
        models["good"].scorer.predict_proba(splits.test),
        rtol=1e-9,
    )


def test_logged_run_contents_and_nesting(
    settings: Settings, splits: Splits, models: dict[str, TrainResult], tmp_path: Path
) -> None:
    registry.configure(settings)
    parent = registry.start_parent_run("fraud", "sweep")
    result = models["good"]
    run_id = _log(result, splits, tmp_path / "child", parent_run_id=parent)
    registry.end_run(parent)
    client = MlflowClient()
    run = client.get_run(run_id)

    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["hearth.git_commit"] == "deadbeef"
    assert run.data.tags["hearth.device"] == "cpu"
    assert run.data.params["hidden_sizes"] == "[64, 32]"
    assert run.data.params["n_train"] == str(len(splits.train))
    metrics = run.data.metrics
    assert metrics["test_pr_auc"] == pytest.approx(result.test_metrics["pr_auc"])
    assert {"test_roc_auc", "test_recall_at_p90", "test_log_loss", "test_fraud_rate"} <= set(
        metrics
    )
    history = client.get_metric_history(run_id, "valid_pr_auc")
    assert [m.step for m in history] == [h["epoch"] for h in result.history]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"pr_curve_test.png", "thresholds.json", "history.json"} <= artifacts

    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location.startswith(settings.mlflow_artifact_root.as_uri())
    assert client.get_run(parent).info.status == "FINISHED"


def test_failed_gate_leaves_the_registry_untouched(
    settings: Settings, splits: Splits, models: dict[str, TrainResult], tmp_path: Path
) -> None:
    registry.configure(settings)
    run_id = _log(models["weak"], splits, tmp_path / "weak")
    no_fraud = splits.test[splits.test["is_fraud"] == 0]
    with pytest.raises(ValueError, match="undefined"):
        registry.register_and_gate(run_id, no_fraud, PARAMS)
    with pytest.raises(ValueError, match="distance_from_home_km"):
        registry.register_and_gate(
            run_id, splits.test.drop(columns="distance_from_home_km"), PARAMS
        )
    assert MlflowClient().search_registered_models() == []


def test_decide_margin_is_inclusive() -> None:
    params = RegistryParams(promotion_margin=0.01)
    assert registry._decide(0.51, 1, 0.5, params)[0] == "challenger"
    alias, reason = registry._decide(0.5099, 1, 0.5, params)
    assert alias is None
    assert reason == "pr_auc 0.5099 < champion v1 0.5000 + margin 0.01"
    assert registry._decide(0.1, None, None, params)[0] == "champion"


def test_recall_metric_name() -> None:
    assert registry.recall_metric_name(0.9) == "recall_at_p90"
    assert registry.recall_metric_name(0.95) == "recall_at_p95"
