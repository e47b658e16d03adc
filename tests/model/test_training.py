"""Training and the scorer on synthetic features where fraud is learnable.

Fraud shows up (each signal only sometimes) as distance from home, a new device, a burst of
transactions, risky merchant categories, night hours and larger amounts.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hearth.features.definitions import FEATURES
from hearth.model.experiment import TrainConfig
from hearth.model.feature_spec import FeatureSpec
from hearth.model.scorer import FraudScorer
from hearth.model.train import Splits, TrainResult, load_splits, train_model
from hearth.params import ThresholdParams
from tests.helpers import synthetic_features

FAST = TrainConfig(epochs=6, batch_size=256, learning_rate=0.003, patience=3, seed=3)


@pytest.fixture(scope="module")
def splits() -> Splits:
    return Splits(
        train=synthetic_features(12_000, 1),
        valid=synthetic_features(4_000, 2),
        test=synthetic_features(4_000, 3),
    )


@pytest.fixture(scope="module")
def trained(splits: Splits) -> TrainResult:
    return train_model(splits, FAST, ThresholdParams())


# -- training ---------------------------------------------------------------------------
def test_model_learns(trained: TrainResult, splits: Splits) -> None:
    fraud_rate = trained.test_metrics["fraud_rate"]
    assert trained.test_metrics["pr_auc"] > max(0.3, 10 * fraud_rate)
    assert trained.test_metrics["roc_auc"] > 0.85
    assert trained.device == "cpu"
    assert trained.thresholds.review <= trained.thresholds.decline
    assert trained.scorer.thresholds == trained.thresholds
    assert [h["epoch"] for h in trained.history] == list(range(1, len(trained.history) + 1))
    assert {"train_loss", "valid_pr_auc"} <= set(trained.history[0])


def test_best_epoch_weights_are_restored(trained: TrainResult) -> None:
    best = max(h["valid_pr_auc"] for h in trained.history)
    assert trained.history[trained.best_epoch - 1]["valid_pr_auc"] == best
    assert trained.valid_metrics["pr_auc"] == pytest.approx(best, abs=1e-9)


def test_shuffled_labels_make_a_much_worse_model(trained: TrainResult, splits: Splits) -> None:
    broken = train_model(
        splits, FAST.model_copy(update={"shuffle_labels": True}), ThresholdParams()
    )
    assert broken.test_metrics["pr_auc"] < trained.test_metrics["pr_auc"] / 3


def test_same_seed_same_model(splits: Splits) -> None:
    small = Splits(splits.train.head(3000), splits.valid.head(1000), splits.test.head(1000))
    config = FAST.model_copy(update={"epochs": 2})
    first = train_model(small, config, ThresholdParams())
    second = train_model(small, config, ThresholdParams())
    np.testing.assert_array_equal(
        first.scorer.predict_proba(small.test), second.scorer.predict_proba(small.test)
    )
    assert first.history[-1]["train_loss"] == second.history[-1]["train_loss"]
    other = train_model(small, config.model_copy(update={"seed": 4}), ThresholdParams())
    assert not np.array_equal(
        first.scorer.predict_proba(small.test), other.scorer.predict_proba(small.test)
    )


def test_early_stopping_stops(splits: Splits) -> None:
    small = Splits(splits.train.head(2000), splits.valid.head(1000), splits.test.head(500))
    # A learning rate this small leaves the weights (and so valid PR-AUC) unchanged.
    config = FAST.model_copy(update={"epochs": 50, "patience": 2, "learning_rate": 1e-12})
    seen: list[dict[str, float]] = []
    result = train_model(small, config, ThresholdParams(), on_epoch=seen.append)
    assert len(result.history) == 3
    assert result.best_epoch == 1
    assert seen == result.history


def test_training_leaves_global_torch_state_alone(splits: Splits) -> None:
    small = Splits(splits.train.head(2000), splits.valid.head(1000), splits.test.head(500))
    before = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    train_model(small, FAST.model_copy(update={"epochs": 1}), ThresholdParams())
    assert (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()) == before


def test_trainings_at_once_in_threads_equal_trainings_alone(splits: Splits) -> None:
    """A sweep's variants share a Dask worker's process: none may draw from the others'
    random streams (weights, dropout masks, batch order), nor from torch's global RNG."""
    small = Splits(splits.train.head(3000), splits.valid.head(1000), splits.test.head(1000))
    configs = [
        FAST.model_copy(update={"epochs": 2, "dropout": 0.3}),
        FAST.model_copy(update={"epochs": 2, "dropout": 0.3, "seed": 4}),
    ]
    alone = [train_model(small, c, ThresholdParams()) for c in configs]
    torch.manual_seed(1234)  # the global RNG's state must not matter
    with ThreadPoolExecutor(max_workers=2) as pool:
        together = list(pool.map(lambda c: train_model(small, c, ThresholdParams()), configs))
    for lone, mixed in zip(alone, together, strict=True):
        np.testing.assert_array_equal(
            lone.scorer.predict_proba(small.test), mixed.scorer.predict_proba(small.test)
        )
        assert [h["train_loss"] for h in lone.history] == [h["train_loss"] for h in mixed.history]
        assert lone.test_metrics == mixed.test_metrics


def test_load_splits(tmp_path: Path, splits: Splits) -> None:
    with pytest.raises(FileNotFoundError, match=r"train\.parquet.*hearth etl"):
        load_splits(tmp_path)
    for name in ("train", "valid", "test"):
        getattr(splits, name).head(50).to_parquet(tmp_path / f"{name}.parquet")
    loaded = load_splits(tmp_path)
    assert len(loaded.train) == 50
    pd.testing.assert_frame_equal(loaded.valid, splits.valid.head(50))


# -- behaviour ---------------------------------------------------------------------------
def test_far_from_home_on_a_new_device_raises_the_score(
    trained: TrainResult, splits: Splits
) -> None:
    legit = splits.test[splits.test["is_fraud"] == 0].head(500)
    risky = legit.assign(distance_from_home_km=4000.0, is_new_device=1.0)
    scorer = trained.scorer
    assert scorer.predict_proba(risky).mean() > 3 * scorer.predict_proba(legit).mean()


def test_key_columns_do_not_matter(trained: TrainResult, splits: Splits) -> None:
    df = splits.test.head(200)
    other = df.assign(transaction_id="x", customer_id="y", timestamp=pd.Timestamp("2030-01-01"))
    np.testing.assert_array_equal(
        trained.scorer.predict_proba(df), trained.scorer.predict_proba(other)
    )


# -- scorer ------------------------------------------------------------------------------
def test_scorer_round_trip(tmp_path: Path, trained: TrainResult, splits: Splits) -> None:
    df = splits.test.head(300)
    path = trained.scorer.save(tmp_path / "scorer")
    loaded = FraudScorer.from_dir(path)
    np.testing.assert_array_equal(loaded.predict_proba(df), trained.scorer.predict_proba(df))
    assert loaded.spec == trained.scorer.spec
    assert loaded.config == trained.scorer.config
    assert loaded.thresholds == trained.thresholds


def test_predict_records_matches_predict_proba(trained: TrainResult, splits: Splits) -> None:
    df = splits.test.head(64)
    records = df.to_dict(orient="records")
    expected = trained.scorer.predict_proba(df)
    np.testing.assert_allclose(trained.scorer.predict_records(records), expected, rtol=1e-6)
    single = trained.scorer.predict_records(records[:1])
    assert single.shape == (1,)
    assert single[0] == pytest.approx(expected[0], rel=1e-6)
    assert trained.scorer.predict_records([]).shape == (0,)


def test_categories_unknown_and_integer_hours(trained: TrainResult, splits: Splits) -> None:
    scorer = trained.scorer
    df = splits.test.head(20)
    as_int = df.assign(hour=df["hour"].astype(int))
    np.testing.assert_array_equal(scorer.predict_proba(as_int), scorer.predict_proba(df))
    record = {**df.iloc[0].to_dict(), "hour": 7.0, "channel": "teleport"}
    expected = scorer.predict_proba(pd.DataFrame([{**record, "hour": "7"}]))
    assert scorer.predict_records([record])[0] == pytest.approx(expected[0], rel=1e-6)
    _, codes = scorer.spec.encode(pd.DataFrame([record]))
    assert codes[0, list(scorer.spec.categorical).index("channel")] == 0  # unknown


def test_bad_input_names_the_feature(trained: TrainResult, splits: Splits) -> None:
    df = splits.test.head(5)
    with pytest.raises(ValueError, match="n_tx_1h"):
        trained.scorer.predict_proba(df.drop(columns="n_tx_1h"))
    with pytest.raises(ValueError, match="distance_from_home_km"):
        trained.scorer.predict_proba(df.assign(distance_from_home_km=np.nan))
    record = df.iloc[0].to_dict()
    del record["hour"]
    with pytest.raises(ValueError, match="hour"):
        trained.scorer.predict_records([record])


def test_feature_spec_json_round_trip(splits: Splits) -> None:
    spec = FeatureSpec.fit(splits.train)
    assert FeatureSpec.from_json(spec.to_json()) == spec
    assert set(spec.columns) == set(FEATURES)
    assert "distance_from_home_km" in spec.log1p and "is_new_device" not in spec.log1p
    # Statistics come from train only, after log1p.
    i = spec.numeric.index("n_tx_7d")
    assert spec.means[i] == pytest.approx(np.log1p(splits.train["n_tx_7d"]).mean(), rel=1e-5)


@pytest.mark.gpu
def test_trains_and_scores_on_cuda(splits: Splits) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    small = Splits(splits.train.head(3000), splits.valid.head(1000), splits.test.head(1000))
    config = FAST.model_copy(update={"epochs": 2, "device": "cuda"})
    first = train_model(small, config, ThresholdParams())
    second = train_model(small, config, ThresholdParams())
    assert first.device.startswith("cuda")
    np.testing.assert_array_equal(
        first.scorer.predict_proba(small.test), second.scorer.predict_proba(small.test)
    )
    on_cpu = first.scorer.to("cpu").predict_proba(small.test)
    np.testing.assert_allclose(on_cpu, second.scorer.predict_proba(small.test), atol=1e-5)
