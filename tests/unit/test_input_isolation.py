"""Property: no request the gateway accepts can change another customer's features.

Hypothesis sends /predict and /predict_batch bodies mixing valid transactions with hostile
values (look-alike and blank ids, non-finite and huge amounts, far timestamps) to a real
gateway over the real SQLite online store. After every request, the stored state of each
customer either is unchanged or belongs to a customer named by a transaction of that
request, which was answered 200; a refused request writes nothing; and nothing stored is
non-finite or out of the input domain.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hearth.features.online import InputDomain
from hearth.features.store import SQLiteStore, decode_state
from hearth.serving.dependencies import LocalFeatures
from hearth.serving.gateway import Gateway
from hearth.serving.http import HttpPolicy, create_app
from hearth.traffic.prediction_log import PredictionLog
from tests.unit.test_serving_http import KEY, TXN, FakeModel, _loaded

CUSTOMERS = ["c1", "c2", "c3"]
LOOKALIKES = [
    "c1 ", " c1", "C1", "c1\x00", "c1\n", "c1*", "hearth:cust:c1", "c1/../c2", "", "   ",
    "c" * 129, "c1\u200b", "ｃ1",
]  # fmt: skip
TIMESTAMPS = [
    "2026-02-01T12:00:00", "2026-02-02T08:30:00", "9999-12-31T23:59:59", "0001-01-01T00:00:00",
    "2026-02-30T00:00:00", "2026-02-01 12:00:00", "",
]  # fmt: skip
DOMAIN = InputDomain()
ANSWERED: dict[int, int] = {}  # status → count, over the examples (checked below)


def hostile() -> st.SearchStrategy[dict[str, Any]]:
    amount = st.one_of(
        st.floats(min_value=0.01, max_value=5000),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from([1e308, 1e9, 1e9 + 1, 0.0, -1.0, 1e-300]),
        st.integers(),
    )
    return st.fixed_dictionaries(
        {
            "transaction_id": st.text(alphabet="abt-1 ", min_size=0, max_size=6),
            "customer_id": st.sampled_from(CUSTOMERS + LOOKALIKES),
            "amount": amount,
            "timestamp": st.sampled_from(TIMESTAMPS),
            "device_id": st.sampled_from(["d1", "d2", " ", "d\x00"]),
        }
    ).map(lambda change: {**TXN, **change})


def valid() -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "transaction_id": st.text(alphabet="abt-1", min_size=1, max_size=6).filter(
                lambda t: t[0] != "-"
            ),
            "customer_id": st.sampled_from(CUSTOMERS),
            "amount": st.floats(min_value=0.01, max_value=1e9),
            "timestamp": st.sampled_from(TIMESTAMPS[:2]),
            "device_id": st.sampled_from(["d1", "d2"]),
        }
    ).map(lambda change: {**TXN, **change})


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Path]]:
    root = tmp_path_factory.mktemp("isolation")
    store = SQLiteStore(root / "online.sqlite")
    log = PredictionLog(root / "serving.sqlite")
    gw = Gateway(LocalFeatures(_loaded(store)), FakeModel(), _loaded(log))
    client = TestClient(create_app(lambda: gw, lambda: HttpPolicy(KEY, 65_536)))
    client.headers["X-API-Key"] = KEY
    for i, cid in enumerate(CUSTOMERS):  # three customers with a history
        r = client.post("/predict", json={**TXN, "transaction_id": f"seed{i}", "customer_id": cid})
        assert r.status_code == 200
    yield client, root / "online.sqlite"
    store.close()


def _states(path: Path) -> dict[str, bytes | str]:
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT customer_id, state FROM customer_state").fetchall())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.one_of(valid(), hostile()), min_size=1, max_size=3), single=st.booleans())
def test_no_accepted_request_changes_another_customers_state(
    gateway: tuple[TestClient, Path], batch: list[dict[str, Any]], single: bool
) -> None:
    client, path = gateway
    before = _states(path)
    if single:
        batch = batch[:1]
        r = client.post("/predict", content=json.dumps(batch[0]))
    else:
        r = client.post("/predict_batch", content=json.dumps({"transactions": batch}))
    assert r.status_code < 500, r.text
    ANSWERED[r.status_code] = ANSWERED.get(r.status_code, 0) + 1
    after = _states(path)
    changed = {cid for cid in after if before.get(cid) != after[cid]}
    if r.status_code != 200:
        assert changed == set(), (r.status_code, r.text)
    named = {t["customer_id"] for t in batch}
    assert changed <= named, (changed, named)
    assert set(after) - set(before) <= named  # no new customer but the ones named
    for cid in changed:
        state = decode_state(after[cid], cid)
        assert DOMAIN.state_problems(state) == [], (cid, after[cid])


def test_the_property_saw_accepted_and_refused_requests() -> None:
    """Runs after the property (file order): it must not pass by refusing everything."""
    if not ANSWERED:
        pytest.skip("the property test did not run in this session")
    assert ANSWERED.get(200, 0) >= 10 and ANSWERED.get(422, 0) >= 10, ANSWERED
