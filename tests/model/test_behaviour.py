"""Behavioural tests (Made-With-ML style): does the model react to what should matter?

A small model is trained on synthetic features where fraud shows as distance from home, a
new device, bursts, risky categories, night hours and large amounts. It is then probed the
way serving uses it: online features of a transaction against a customer's stored state.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from hearth.features.online import CustomerState, Transaction, online_features, update_state
from hearth.model.experiment import TrainConfig
from hearth.model.scorer import FraudScorer
from hearth.model.train import Splits, train_model
from hearth.params import ThresholdParams
from tests.helpers import synthetic_features

FAST = TrainConfig(epochs=6, batch_size=256, learning_rate=0.003, patience=3, seed=3)
HOME = (48.137, 11.575)
NOW = datetime(2026, 3, 2, 14, 0, 0)


@pytest.fixture(scope="module")
def scorer() -> FraudScorer:
    splits = Splits(
        train=synthetic_features(12_000, 1),
        valid=synthetic_features(4_000, 2),
        test=synthetic_features(4_000, 3),
    )
    return train_model(splits, FAST, ThresholdParams()).scorer


def txn(tid: str, at: datetime, **change: object) -> Transaction:
    fields: dict[str, object] = {
        "transaction_id": tid,
        "timestamp": at,
        "customer_id": "c-regular",
        "merchant_id": "m-bakery",
        "merchant_category": "grocery",
        "amount": 30.0,
        "currency": "EUR",
        "channel": "pos",
        "device_id": "d-phone",
        "latitude": HOME[0] + 0.01,
        "longitude": HOME[1] + 0.01,
    }
    return Transaction(**{**fields, **change})  # type: ignore[arg-type]


@pytest.fixture
def regular() -> CustomerState:
    """Three weeks of daily ~30 EUR purchases near home on one phone."""
    state = CustomerState(home=HOME)
    for day in range(21, 0, -1):
        amount = 25.0 + (day % 5) * 3
        update_state(state, txn(f"h{day}", NOW - timedelta(days=day, hours=2), amount=amount))
    return state


def score(scorer: FraudScorer, state: CustomerState, t: Transaction) -> float:
    return float(scorer.predict_records([online_features(t, state)])[0])


def test_large_far_new_device_scores_higher_than_the_usual(
    scorer: FraudScorer, regular: CustomerState
) -> None:
    usual = score(scorer, regular, txn("usual", NOW))
    odd = txn("odd", NOW, amount=900.0, device_id="d-unknown", latitude=40.71, longitude=-74.0)
    assert score(scorer, regular, odd) > usual


@pytest.mark.parametrize(
    "change",
    [
        {"amount": 900.0},
        {"device_id": "d-unknown"},
        {"latitude": 40.71, "longitude": -74.0},
    ],
    ids=["amount", "device", "distance"],
)
def test_each_risk_signal_alone_does_not_lower_the_score(
    scorer: FraudScorer, regular: CustomerState, change: dict
) -> None:
    usual = score(scorer, regular, txn("usual", NOW))
    assert score(scorer, regular, txn("one-signal", NOW, **change)) >= usual - 1e-6


def test_irrelevant_fields_do_not_change_the_score(
    scorer: FraudScorer, regular: CustomerState
) -> None:
    base = score(scorer, regular, txn("id-1", NOW))
    # The transaction id and the customer id are keys, not features.
    assert score(scorer, regular, txn("another-id", NOW, customer_id="c-renamed")) == base
