"""The online feature store: its contract on SQLite, materialisation and serving-side parity.

The `check_*` functions state the contract for any backend; this module runs them on SQLite
and tests/integration/test_store_redis.py runs them on a real Redis server.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from hearth.config import Settings
from hearth.data.etl import run_etl
from hearth.data.generate import generate
from hearth.features.batch_states import build_states
from hearth.features.definitions import (
    FEATURES,
    HISTORY_HORIZON,
    NUMERIC_FEATURES,
    SECONDS_SINCE_LAST_CAP,
)
from hearth.features.online import (
    CustomerState,
    Transaction,
    epoch_seconds,
    online_features,
    update_state,
)
from hearth.features.store import (
    MaterializeError,
    OnlineStore,
    SQLiteStore,
    StoreError,
    StoreUnavailable,
    decode_state,
    encode_state,
    materialize,
    open_store,
    redacted_url,
    state_summary,
)
from hearth.params import Params
from tests.helpers import run_together

T0 = datetime(2026, 3, 2, 12, 0, 0)
# Features that count or flag something must match exactly; sums and ratios to rounding.
EXACT_FEATURES = {
    *(f for f in NUMERIC_FEATURES if f.startswith("n_")),
    "seconds_since_last",
    "is_new_device",
    "is_cold_start",
}
COLD_START_VALUES = {
    "amount_ratio": 1.0,
    "n_tx_1h": 0.0,
    "n_tx_24h": 0.0,
    "n_tx_7d": 0.0,
    "amount_sum_1h": 0.0,
    "amount_sum_24h": 0.0,
    "amount_sum_7d": 0.0,
    "avg_amount_30d": 0.0,
    "n_merchants_7d": 0.0,
    "seconds_since_last": float(SECONDS_SINCE_LAST_CAP),
    "is_new_device": 1.0,
    "distance_from_home_km": 0.0,
    "is_cold_start": 1.0,
}


def txn(
    customer: str = "C1",
    at: datetime = T0,
    amount: float = 20.0,
    tid: str | None = None,
    device: str = "D1",
    merchant: str = "M1",
) -> Transaction:
    return Transaction(
        # Unique per customer, second and device: the store treats a repeated id as a retry.
        transaction_id=tid or f"{customer}-{at:%Y%m%d%H%M%S}-{device}",
        timestamp=at,
        customer_id=customer,
        merchant_id=merchant,
        merchant_category="grocery",
        amount=amount,
        currency="EUR",
        channel="pos",
        device_id=device,
        latitude=48.85,
        longitude=2.35,
    )


def make_processed(settings: Settings, params: Params) -> Path:
    """Generated raw drops → real ETL → settings.processed_dir."""
    generate(settings.raw_dir, params.data)
    run_etl(settings.raw_dir, settings.processed_dir, settings.quarantine_dir, params)
    return settings.processed_dir


# -- the contract, for any backend ---------------------------------------------------------
def check_materialize_then_observe_matches_offline(store: OnlineStore, processed: Path) -> None:
    """Serving-side parity: materialise everything before the test days, then replay the test
    days through `observe`; every feature of every row equals the offline test.parquet, and
    the states end equal to a batch replay of all the data."""
    expected = pd.read_parquet(processed / "test.parquet").set_index("transaction_id")
    transactions = pd.read_parquet(processed / "transactions.parquet")
    customers = pd.read_parquet(processed / "customers.parquet")
    cutoff = expected["timestamp"].min()
    history_dir = processed.parent / "history"
    history_dir.mkdir()
    before = transactions[transactions["timestamp"] < cutoff]
    before.to_parquet(history_dir / "transactions.parquet")
    customers.to_parquet(history_dir / "customers.parquet")

    report = materialize(store, history_dir)
    known = set(build_states(before, customers))
    materialized = frozenset(known)
    assert (report.customers, report.transactions) == (len(known), len(before))
    assert store.count() == len(known)

    later = transactions[transactions["timestamp"] >= cutoff]
    later = later.sort_values(["timestamp", "transaction_id"], kind="stable")
    assert set(later["transaction_id"]) == set(expected.index) and len(later) > 100
    mismatches = []
    for record in later.to_dict("records"):
        t = Transaction.from_mapping(record)
        features, cold = store.observe(t)
        assert cold == (t.customer_id not in known)
        known.add(t.customer_id)
        mismatches += feature_mismatches(t.transaction_id, features, expected.loc[t.transaction_id])
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:5]}"
    # The test days must exercise the features, not only cold starts and empty windows.
    assert (expected["n_tx_1h"] > 0).any() and (expected["is_new_device"] == 0).any()

    batch = build_states(transactions, customers)
    assert store.count() == len(batch)
    for cid, state in batch.items():
        stored = store.get(cid)
        assert stored is not None
        # Which observe created a state is serving's record (for retries), not batch data's.
        assert (stored.cold_start_id is None) == (cid in materialized), cid
        assert dataclasses.replace(stored, cold_start_id=None) == state, cid


def feature_mismatches(
    tid: str, online: dict[str, float | str], offline: pd.Series
) -> list[tuple[str, str, object, object]]:
    """Every feature that differs: names and order exact, counts/flags/categories exact."""
    if tuple(online) != FEATURES:
        return [(tid, "<names>", tuple(online), FEATURES)]
    out = []
    for name in FEATURES:
        got, want = online[name], offline[name]
        if name in EXACT_FEATURES or name not in NUMERIC_FEATURES:
            same = got == want
        else:
            same = math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=1e-9)
        if not same:
            out.append((tid, name, got, want))
    return out


def check_unknown_customer_is_a_cold_start(store: OnlineStore) -> None:
    first = txn("NEW", T0)
    assert store.get("NEW") is None
    assert store.peek(first) == (online_features(first, None), True)
    features, cold = store.observe(first)
    assert cold is True
    assert {k: features[k] for k in COLD_START_VALUES} == COLD_START_VALUES
    state = store.get("NEW")
    assert state is not None and state.history == [(epoch_seconds(T0), 20.0, "M1")]
    features, cold = store.observe(txn("NEW", T0 + timedelta(minutes=5)))
    assert cold is False and features["n_tx_1h"] == 1 and features["is_cold_start"] == 0


def check_velocity_rises_over_a_burst(store: OnlineStore) -> None:
    store.put_many({"C1": CustomerState(home=(48.85, 2.35))})
    seen = []
    for i in range(6):
        features, cold = store.observe(txn("C1", T0 + timedelta(minutes=i), amount=10.0 + i))
        assert cold is False  # materialised (home only): known, even without transactions
        seen.append(features)
    assert [f["n_tx_1h"] for f in seen] == [0, 1, 2, 3, 4, 5]
    assert [f["amount_sum_1h"] for f in seen] == [0, 10, 21, 33, 46, 60]
    assert [f["seconds_since_last"] for f in seen[1:]] == [60.0] * 5
    assert seen[0]["is_cold_start"] == 1 and seen[1]["is_cold_start"] == 0
    assert seen[0]["distance_from_home_km"] == pytest.approx(0.0, abs=1e-6)


def check_peek_does_not_update(store: OnlineStore) -> None:
    store.observe(txn("P", T0))
    nxt = txn("P", T0 + timedelta(seconds=30))
    before = store.get("P")
    peeked = store.peek(nxt)
    assert store.get("P") == before
    assert store.observe(nxt) == peeked == (online_features(nxt, before), False)


def check_put_get_count_clear(store: OnlineStore) -> None:
    old = epoch_seconds(T0)
    horizon = int(HISTORY_HORIZON.total_seconds())
    # Hand-built and unpruned: the store keeps only what a window can still see.
    unpruned = CustomerState(
        home=(1.0, 2.0),
        times=[old - horizon - 1, old - horizon, old],
        amounts=[1.0, 2.0, 3.0],
        merchants=["M1", "M2", "M3"],
        devices={"D1": old - horizon - 1},
        last_timestamp=old,
    )
    assert store.put_many({"A": unpruned, "B": CustomerState()}) == 2
    assert store.put_many({}) == 0
    assert store.count() == 2
    stored = store.get("A")
    assert stored is not None and stored.times == [old - horizon, old]
    assert stored.devices == unpruned.devices and len(unpruned.times) == 3  # input untouched
    assert store.get("B") == CustomerState() and store.get("missing") is None
    store.clear()
    assert store.count() == 0 and store.get("A") is None
    assert store.ping() is True


def check_concurrent_observes_lose_nothing(
    stores: list[OnlineStore], threads: int = 8, per_thread: int = 10
) -> None:
    """threads x per_thread observes of one new customer, started together: every update is
    kept, and exactly one observer saw the customer as unknown."""

    def work(worker: int) -> list[bool]:
        store = stores[worker % len(stores)]
        colds = []
        for i in range(per_thread):
            at = T0 + timedelta(seconds=worker * per_thread + i)
            _, cold = store.observe(txn("HOT", at, device=f"D{worker}-{i}"))
            colds.append(cold)
        return colds

    colds = [cold for worker in run_together(work, threads) for cold in worker]
    state = stores[0].get("HOT")
    assert state is not None
    assert len(state.history) == threads * per_thread
    assert len(state.devices) == threads * per_thread
    assert state.times == sorted(state.times)
    assert colds.count(True) == 1


def check_nothing_out_of_the_domain_is_written(store: OnlineStore) -> None:
    """Defence in depth (issue #11): whoever calls it, the store itself refuses a transaction
    or a state outside the input domain, and writes nothing."""
    from hearth.features.online import InvalidTransaction
    from hearth.features.store import InvalidState

    store.observe(txn("OK", T0))
    before = store.get("OK")
    for bad, field in (
        (txn("OK", T0 + timedelta(seconds=1), amount=1e308), "amount"),
        (txn("OK", datetime(9999, 1, 1)), "timestamp"),
        (txn("OK bad", T0, tid="t2"), "customer_id"),
        (txn("OK", T0, tid="t 1"), "transaction_id"),
        (txn("OK", T0, tid="t3", device="d\x00"), "device_id"),
    ):
        with pytest.raises(InvalidTransaction) as refused:
            store.observe(bad)
        assert [f for f, _ in refused.value.problems] == [field]
    assert store.get("OK") == before and store.get("OK bad") is None
    now = epoch_seconds(T0)
    for states in (
        {"X": CustomerState(times=[now], amounts=[float("nan")], merchants=["M"])},
        {"X": CustomerState(times=[now], amounts=[1e300], merchants=["M"])},
        {"X": CustomerState(times=[253402300799], amounts=[1.0], merchants=["M"])},
        {"X": CustomerState(home=(float("inf"), 0.0))},
        {"   ": CustomerState()},
    ):
        with pytest.raises(InvalidState):
            store.put_many({"Y": CustomerState(), **states})
    assert store.count() == 1  # not even the valid "Y" of a refused batch


# The checks that need nothing but an empty store.
CHECKS = [
    check_unknown_customer_is_a_cold_start,
    check_velocity_rises_over_a_burst,
    check_peek_does_not_update,
    check_put_get_count_clear,
    check_nothing_out_of_the_domain_is_written,
]


class StoreContract:
    """What every backend promises. A `Test…` subclass per backend runs it on the store its
    module's `store` fixture opens (here SQLite; tests/integration/test_store_redis.py Redis)."""

    def test_materialize_then_observe_matches_offline(
        self, settings: Settings, small_params: Params, store: OnlineStore
    ) -> None:
        processed = make_processed(settings, small_params)
        check_materialize_then_observe_matches_offline(store, processed)

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    def test_an_empty_store(self, store: OnlineStore, check: Callable[[OnlineStore], None]) -> None:
        check(store)


# -- SQLite --------------------------------------------------------------------------------
@pytest.fixture
def store(settings: Settings) -> SQLiteStore:
    s = open_store(settings)
    assert isinstance(s, SQLiteStore)
    yield s  # type: ignore[misc]
    s.close()


def test_sqlite_is_the_default_backend_in_the_home(settings: Settings, store: SQLiteStore) -> None:
    assert store.backend == "sqlite" and settings.store_backend == "sqlite"
    assert store.path == settings.online_store_path == settings.home_abs / "online_store.sqlite"
    assert settings.online_store_path.exists()
    with sqlite3.connect(settings.online_store_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_settings_choose_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEARTH_STORE_BACKEND", "redis")
    monkeypatch.setenv("HEARTH_REDIS_URL", "redis://:secret@10.0.0.5:6380/2")
    s = Settings()
    assert (s.store_backend, s.redis_url) == ("redis", "redis://:secret@10.0.0.5:6380/2")
    assert redacted_url(s.redis_url) == "redis://:***@10.0.0.5:6380/2"
    monkeypatch.setenv("HEARTH_STORE_BACKEND", "memcached")
    with pytest.raises(ValueError, match="store_backend"):
        Settings()


class TestSQLiteStore(StoreContract):
    """The store contract on SQLite."""


def test_concurrent_observes_lose_nothing(settings: Settings, store: SQLiteStore) -> None:
    # A second connection to the same file stands in for another serving process: only
    # the compare-and-set write, not the in-process lock, keeps the two from losing updates.
    other = SQLiteStore(settings.online_store_path)
    try:
        check_concurrent_observes_lose_nothing([store, other])
    finally:
        other.close()


def test_state_survives_reopening(settings: Settings, store: SQLiteStore) -> None:
    store.observe(txn("C1", T0))
    store.close()
    reopened = open_store(settings)
    try:
        features, cold = reopened.observe(txn("C1", T0 + timedelta(hours=2)))
        assert cold is False and features["n_tx_24h"] == 1
    finally:
        reopened.close()


def test_closed_store_pings_false_and_raises(store: SQLiteStore) -> None:
    store.close()
    assert store.ping() is False
    with pytest.raises(StoreUnavailable, match="closed"):
        store.observe(txn())
    store.close()  # twice is harmless


def test_unreadable_state_is_a_store_error(settings: Settings, store: SQLiteStore) -> None:
    with sqlite3.connect(settings.online_store_path) as conn:
        conn.execute("INSERT INTO customer_state VALUES ('BAD', ?)", (json.dumps({"v": 9}),))
    with pytest.raises(StoreError, match="'BAD'"):
        store.observe(txn("BAD"))
    assert store.get("C1") is None  # the failed observe rolled back and the store still works


def test_encode_state_round_trips_and_leaves_the_state_alone() -> None:
    def make() -> CustomerState:
        return CustomerState(times=[1, 2], amounts=[1.5, 2.5], merchants=["a", "b"])

    state = make()
    assert decode_state(encode_state(state), "C1") == state == make()


# -- materialisation -----------------------------------------------------------------------
def write_processed(directory: Path, customers: list[tuple], rows: list[Transaction]) -> Path:
    """A hand-made processed dir with the two files materialize reads."""
    directory.mkdir(parents=True)
    pd.DataFrame(customers, columns=["customer_id", "home_latitude", "home_longitude"]).to_parquet(
        directory / "customers.parquet"
    )
    records = [{f: getattr(t, f) for f in t.__dataclass_fields__} for t in rows]
    pd.DataFrame(records).to_parquet(directory / "transactions.parquet")
    return directory


def test_materialize_gives_customers_without_transactions_a_state(
    tmp_path: Path, store: SQLiteStore
) -> None:
    processed = write_processed(
        tmp_path / "processed",
        [("C1", 48.85, 2.35), ("QUIET", 52.52, 13.40), ("NOHOME", None, None)],
        [txn("C1", T0 - timedelta(days=1)), txn("STRANGER", T0 - timedelta(hours=1))],
    )
    progress: list[tuple[int, int]] = []
    report = materialize(store, processed, progress=lambda d, t: progress.append((d, t)))
    assert (report.customers, report.transactions, report.backend) == (4, 2, "sqlite")
    assert progress[0] == (0, 4) and progress[-1] == (4, 4) and report.seconds >= 0

    features, cold = store.observe(txn("QUIET", T0))
    assert cold is False  # known from the master data: not an unknown customer
    assert features["is_cold_start"] == 1  # ... but with no prior transaction
    assert features["distance_from_home_km"] > 800  # Paris is far from a Berlin home
    assert store.observe(txn("NOHOME", T0))[0]["distance_from_home_km"] == 0
    assert store.observe(txn("STRANGER", T0))[1] is False
    assert store.observe(txn("C1", T0))[0]["n_tx_24h"] == 1


@pytest.mark.parametrize("missing", ["transactions.parquet", "customers.parquet"])
def test_materialize_names_the_missing_file(
    tmp_path: Path, store: SQLiteStore, missing: str
) -> None:
    processed = write_processed(tmp_path / "processed", [("C1", 0.0, 0.0)], [txn()])
    (processed / missing).unlink()
    with pytest.raises(MaterializeError, match=rf"{missing} is missing.*hearth etl"):
        materialize(store, processed)
    assert store.count() == 0


# -- inspection and the command line -------------------------------------------------------
def test_state_summary_is_readable_json() -> None:
    state = CustomerState(home=(48.85, 2.35))
    update_state(state, txn("C1", T0, amount=12.5))
    summary = json.loads(json.dumps(state_summary("C1", state)))
    assert summary["home"] == [48.85, 2.35]
    assert summary["last_transaction"] == "2026-03-02T12:00:00+00:00"
    assert summary["history"] == {
        "transactions": 1,
        "oldest": "2026-03-02T12:00:00+00:00",
        "amount_eur": 12.5,
        "merchants": 1,
    }
    assert summary["devices"] == {"D1": "2026-03-02T12:00:00+00:00"}


def test_cli_materialize_and_show(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from hearth.cli import app

    monkeypatch.setenv("HEARTH_HOME", str(settings.home_abs))
    monkeypatch.setenv("HEARTH_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    missing = runner.invoke(app, ["features", "materialize"])
    assert missing.exit_code == 1 and "hearth etl" in missing.output

    write_processed(settings.processed_dir, [("C1", 48.85, 2.35), ("C2", 1.0, 2.0)], [txn()])
    done = runner.invoke(app, ["features", "materialize", "--clear"])
    assert done.exit_code == 0, done.output
    unwrapped = done.output.replace("\n", "")  # rich wraps long paths
    assert "2 customers" in unwrapped and "online_store.sqlite" in unwrapped

    shown = runner.invoke(app, ["features", "show", "C1"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["history"]["transactions"] == 1
    unknown = runner.invoke(app, ["features", "show", "NOPE"])
    assert unknown.exit_code == 1 and "'NOPE'" in unknown.output
