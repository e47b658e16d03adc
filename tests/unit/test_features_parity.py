"""One definition: the online features reproduce the offline Parquet, and both follow the spec.

The parity tests run the real ETL on raw drops, then replay the clean transactions in time
order through `online_features` / `update_state` (with the state going through JSON at every
step, as the store persists it) and compare every feature of every row.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from hearth.data.etl import run_etl
from hearth.features.batch_states import build_states
from hearth.features.definitions import (
    EARTH_RADIUS_KM,
    FEATURES,
    HISTORY_HORIZON,
    NUMERIC_FEATURES,
    SECONDS_SINCE_LAST_CAP,
    SPLITS,
)
from hearth.features.online import (
    CustomerState,
    Transaction,
    epoch_seconds,
    online_features,
    update_state,
)
from hearth.params import Params
from hearth.schema import (
    CHANNELS,
    CURRENCIES,
    CUSTOMER_COLUMNS,
    MERCHANT_CATEGORIES,
    RAW_COLUMNS,
    TRANSACTION_FIELDS,
)

T0 = datetime(2026, 1, 1)
FMT = "%Y-%m-%dT%H:%M:%S"
CAP = float(SECONDS_SINCE_LAST_CAP)
PARAMS = Params.model_validate({"split": {"valid_days": 1, "test_days": 1}})


# -- raw data builders ---------------------------------------------------------------------
def tx(
    tid: str,
    at: datetime,
    customer: str = "C1",
    amount: float = 10.0,
    currency: str = "EUR",
    merchant: str = "M1",
    device: str = "D1",
    lat: float = 0.0,
    lon: float = 0.0,
    category: str = "grocery",
    channel: str = "pos",
) -> dict[str, str]:
    return {
        "transaction_id": tid,
        "timestamp": at.strftime(FMT),
        "customer_id": customer,
        "merchant_id": merchant,
        "merchant_category": category,
        "amount": f"{amount:.2f}",
        "currency": currency,
        "channel": channel,
        "device_id": device,
        "latitude": f"{lat:.5f}",
        "longitude": f"{lon:.5f}",
        "is_fraud": "0",
    }


def write_raw(raw: Path, rows: list[dict[str, str]], customers: list[str]) -> None:
    """One drop per calendar day of the rows' timestamps, rows in the given order."""
    (raw / "transactions").mkdir(parents=True)
    (raw / "customers.csv").write_text("\n".join([",".join(CUSTOMER_COLUMNS), *customers]) + "\n")
    by_day: dict[str, list[str]] = {}
    for r in rows:
        by_day.setdefault(r["timestamp"][:10], []).append(",".join(r[c] for c in RAW_COLUMNS))
    for day, lines in by_day.items():
        text = "\n".join([",".join(RAW_COLUMNS), *lines]) + "\n"
        (raw / "transactions" / f"{day}.csv").write_text(text)


def offline(tmp_path: Path, params: Params = PARAMS) -> tuple[pd.DataFrame, Path]:
    """Run the ETL; all splits' features indexed by transaction_id, and the processed dir."""
    processed = tmp_path / "processed"
    run_etl(tmp_path / "raw", processed, tmp_path / "quarantine", params)
    frames = [pd.read_parquet(processed / f"{s}.parquet") for s in SPLITS]
    return pd.concat(frames).set_index("transaction_id"), processed


def replay(processed: Path, ties_reversed: bool = True) -> dict[str, dict[str, float | str]]:
    """Online features of every clean transaction, replayed in timestamp order.

    Same-second transactions are replayed in reverse id order (by default): the features must
    not depend on how ties are ordered. The state goes through JSON at every step.
    """
    txs = pd.read_parquet(processed / "transactions.parquet")
    customers = pd.read_parquet(processed / "customers.parquet")
    txs = txs.sort_values(["timestamp", "transaction_id"], ascending=[True, not ties_reversed])
    stored = {cid: s.to_dict() for cid, s in build_states(txs.iloc[:0], customers).items()}
    out = {}
    for record in txs.to_dict("records"):
        txn = Transaction.from_mapping(record)
        # A customer missing from the master data starts from an empty state.
        saved = stored.get(txn.customer_id, CustomerState().to_dict())
        state = CustomerState.from_dict(json.loads(json.dumps(saved)))
        out[txn.transaction_id] = online_features(txn, state)
        stored[txn.customer_id] = update_state(state, txn).to_dict()
    return out


def assert_parity(expected: pd.DataFrame, online: dict[str, dict[str, float | str]]) -> None:
    assert set(online) == set(expected.index)
    mismatches = []
    for tid, features in online.items():
        assert tuple(features) == FEATURES
        row = expected.loc[tid]
        for name in NUMERIC_FEATURES:
            if not math.isclose(features[name], row[name], rel_tol=1e-9, abs_tol=1e-9):  # type: ignore[arg-type]
                mismatches.append((tid, name, features[name], row[name]))
        for name in FEATURES[len(NUMERIC_FEATURES) :]:
            if features[name] != row[name]:
                mismatches.append((tid, name, features[name], row[name]))
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:5]}"


# -- the specification, checked by hand ----------------------------------------------------
def golden_rows() -> list[dict[str, str]]:
    s = timedelta(seconds=1)
    h = timedelta(hours=1)
    return [
        tx("A", T0, amount=10),
        tx("B", T0 + h, amount=20, merchant="M2"),  # exactly 1h after A: A is in the window
        tx("C", T0 + h + s, amount=30, currency="USD", device="D2"),  # A is 1h+1s old: out
        tx("D", T0 + h + s, amount=5, currency="GBP", merchant="M3", device="D2"),  # tie with C
        tx("E", T0 + 25 * h + s, amount=1, merchant="M4"),  # exactly 24h after C and D
        tx("F", T0 + timedelta(days=35), amount=7, lon=1.0),  # silent > 30 days
        tx("U1", T0 + 2 * h, customer="UNKNOWN", lat=40, lon=3),  # not in customers.csv
        tx("N1", T0 + 3 * h, customer="NOHOME", lat=40, lon=3),  # home invalid in master data
        tx("V1", T0 + timedelta(days=34), customer="OTHER"),  # so that the valid day has data
    ]


GOLDEN_CUSTOMERS = ["C1,0,0,2025-01-01", "NOHOME,abc,0,2025-01-01"]


def test_offline_features_follow_the_definitions(tmp_path: Path) -> None:
    write_raw(tmp_path / "raw", golden_rows(), GOLDEN_CUSTOMERS)
    f, _ = offline(tmp_path)
    usd, gbp = 30 * 0.92, 5 * 1.17

    assert f.loc["A", ["n_tx_1h", "is_cold_start", "amount_ratio", "avg_amount_30d"]].tolist() == [
        0,
        1,
        1,
        0,
    ]
    assert f.loc["A", "seconds_since_last"] == CAP
    assert f.loc["A", "log_amount"] == pytest.approx(math.log(11), rel=1e-12)
    # The window's lower bound is inclusive.
    assert f.loc[
        "B", ["n_tx_1h", "amount_sum_1h", "seconds_since_last", "amount_ratio"]
    ].tolist() == [
        1,
        10,
        3600,
        2,
    ]
    for tie in ("C", "D"):  # ties do not see each other, nor does a device used in the tie
        assert f.loc[tie, ["n_tx_1h", "amount_sum_1h", "n_tx_24h", "amount_sum_24h"]].tolist() == [
            1,
            20,
            2,
            30,
        ]
        assert f.loc[tie, ["seconds_since_last", "is_new_device", "n_merchants_7d"]].tolist() == [
            1,
            1,
            2,
        ]
    assert f.loc["C", "amount_ratio"] == pytest.approx(usd / 15, rel=1e-12)
    assert f.loc["E", ["n_tx_1h", "n_tx_24h", "n_tx_7d", "n_merchants_7d"]].tolist() == [0, 2, 4, 3]
    assert f.loc["E", "amount_sum_24h"] == pytest.approx(usd + gbp, rel=1e-12)
    assert f.loc["E", "is_new_device"] == 0  # D1 was used by A and B
    assert f.loc["F", ["is_cold_start", "amount_ratio", "n_tx_7d", "is_new_device"]].tolist() == [
        1,
        1,
        0,
        0,
    ]
    assert f.loc["F", "seconds_since_last"] == CAP
    # Home (0, 0) to (0, 1): one degree of the equator.
    assert f.loc["F", "distance_from_home_km"] == pytest.approx(
        EARTH_RADIUS_KM * math.pi / 180, rel=1e-9
    )
    assert f.loc["A", "distance_from_home_km"] == 0
    assert f.loc["U1", ["distance_from_home_km", "is_cold_start"]].tolist() == [0, 1]
    assert f.loc["N1", "distance_from_home_km"] == 0
    assert f.loc["B", "hour"] == "1" and f.loc["B", "channel"] == "pos"


def test_online_matches_offline_on_the_golden_cases(tmp_path: Path) -> None:
    write_raw(tmp_path / "raw", golden_rows(), GOLDEN_CUSTOMERS)
    expected, processed = offline(tmp_path)
    for ties_reversed in (False, True):
        assert_parity(expected, replay(processed, ties_reversed))


# -- randomised edge cases -----------------------------------------------------------------
def edge_case_rows(seed: int = 3, n: int = 600) -> list[dict[str, str]]:
    """Few customers, bursts, same-second ties, boundaries, silences, new devices, currencies."""
    rng = random.Random(seed)
    rows = []
    customers = [f"C{i}" for i in range(12)] + ["UNKNOWN", "NOHOME"]
    for i in range(n):
        customer = rng.choice(customers)
        day = rng.choice([0, 1, 2, 3, 5, 8, 9, 20, 33, 38, 39, 40])
        at = T0 + timedelta(
            days=day, seconds=rng.choice([0, 60, 3600, 36000, rng.randrange(86400)])
        )
        if rows and rng.random() < 0.3:  # burst or tie near the previous transaction
            prev = datetime.strptime(rows[-1]["timestamp"], FMT)
            customer = rows[-1]["customer_id"]
            at = prev + timedelta(seconds=rng.choice([0, 0, 1, 30, 3600, 3601, 86400, 604800]))
            at = min(at, T0 + timedelta(days=40, hours=23))  # keep the last day the test day
        rows.append(
            tx(
                f"R{i:04d}",
                at,
                customer=customer,
                amount=rng.choice([0.01, 1, 9.99, 25, 120, 999.5, 12345.67]),
                currency=rng.choice(CURRENCIES),
                merchant=f"M{rng.randrange(6)}",
                device=f"{customer}-D{rng.randrange(3)}",
                lat=rng.uniform(-89, 89),
                lon=rng.uniform(-179, 179),
                category=rng.choice(MERCHANT_CATEGORIES),
                channel=rng.choice(CHANNELS),
            )
        )
    rng.shuffle(rows)  # drops arrive out of time order
    return rows


def test_online_matches_offline_on_edge_cases(tmp_path: Path) -> None:
    homes = [f"C{i},{10 * i - 60},{20 * i - 100},2025-01-01" for i in range(12)]
    write_raw(tmp_path / "raw", edge_case_rows(), [*homes, "NOHOME,,,2025-01-01"])
    expected, processed = offline(tmp_path)

    # The sample must really contain the cases this test is meant to cover.
    assert expected["is_cold_start"].sum() >= 10
    assert (expected["is_new_device"] == 1).sum() >= 20 and (expected["is_new_device"] == 0).any()
    assert (expected["n_tx_1h"] >= 3).any()
    assert (expected["seconds_since_last"] == CAP).any() and (
        expected["seconds_since_last"] < 2
    ).any()
    ties = expected.reset_index().duplicated(["customer_id", "timestamp"], keep=False)
    assert ties.sum() >= 10
    assert (expected["distance_from_home_km"] == 0).sum() >= 20

    assert_parity(expected, replay(processed))


def test_online_matches_offline_on_generated_data(tmp_path: Path, small_params: Params) -> None:
    from hearth.data.generate import generate

    generate(tmp_path / "raw", small_params.data)
    expected, processed = offline(tmp_path, small_params)
    assert_parity(expected, replay(processed))


def test_build_states_equals_step_by_step_replay(tmp_path: Path) -> None:
    write_raw(tmp_path / "raw", golden_rows(), GOLDEN_CUSTOMERS)
    _, processed = offline(tmp_path)
    txs = pd.read_parquet(processed / "transactions.parquet")
    customers = pd.read_parquet(processed / "customers.parquet")

    states = build_states(txs, customers)

    stepwise: dict[str, CustomerState] = {"C1": CustomerState(home=(0.0, 0.0))}
    for record in txs.to_dict("records"):
        txn = Transaction.from_mapping(record)
        update_state(stepwise.setdefault(txn.customer_id, CustomerState()), txn)
    assert states["C1"] == stepwise["C1"]
    assert states["NOHOME"].home is None and states["UNKNOWN"].home is None
    # F came 34 days after E: everything older than the horizon is pruned, devices are kept.
    assert [t for t, _, _ in states["C1"].history] == [epoch_seconds(datetime(2026, 2, 5))]
    assert set(states["C1"].devices) == {"D1", "D2"}


# -- the online types ----------------------------------------------------------------------
def test_transaction_has_exactly_the_contract_fields() -> None:
    assert tuple(f.name for f in dataclasses.fields(Transaction)) == TRANSACTION_FIELDS


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("currency", "XXX", "currency"),
        ("amount", -1.0, "amount"),
        ("amount", math.inf, "amount"),
        ("channel", "fax", "channel"),
        ("latitude", 91.0, "latitude"),
        ("device_id", "", "device_id"),
    ],
)
def test_transaction_rejects_what_the_etl_quarantines(
    field: str, value: object, message: str
) -> None:
    good = Transaction.from_mapping(tx("T", T0))
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(good, **{field: value})


def test_state_round_trips_through_json() -> None:
    state = CustomerState(
        home=(48.1, 2.2),
        times=[1_767_225_600, 1_767_225_601],
        amounts=[0.1, 1 / 3],
        merchants=["M1", "M2"],
        devices={"D1": 1_767_225_600},
        last_timestamp=1_767_225_601,
    )
    assert CustomerState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert CustomerState.from_dict(json.loads(json.dumps(CustomerState().to_dict()))).home is None


def test_history_horizon_covers_every_lookback() -> None:
    """Pruned history must still answer seconds_since_last up to its cap."""
    assert HISTORY_HORIZON.total_seconds() >= SECONDS_SINCE_LAST_CAP
