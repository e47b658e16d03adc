"""The synthetic data generator: layout, determinism, fraud, dirt, drift, day-by-day writing."""

from __future__ import annotations

import csv
import json
import math
import re
from collections import Counter
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from hearth.data.drift_scenarios import DRIFTS, drift_named
from hearth.data.fraud_patterns import PATTERNS
from hearth.data.generate import generate
from hearth.params import DataParams, Params
from hearth.schema import (
    CHANNELS,
    CURRENCIES,
    CUSTOMER_COLUMNS,
    EUR_RATES,
    MERCHANT_CATEGORIES,
    RAW_COLUMNS,
    RISKY_CATEGORIES,
    TIMESTAMP_FORMAT,
)

TINY = DataParams(customers=200, days=5, seed=3)
AMOUNT = re.compile(r"\d+\.\d{2}")


# -- helpers -------------------------------------------------------------------------------------
def read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        header, *rows = csv.reader(f)
    return header, rows


def read_drops(out: Path) -> list[dict[str, str]]:
    """All rows of all drops, each with the file's day under "_file"."""
    rows = []
    for path in sorted((out / "transactions").glob("*.csv")):
        _, body = read_csv(path)
        rows += [{**dict(zip(RAW_COLUMNS, r, strict=True)), "_file": path.stem} for r in body]
    return rows


def defects(row: dict[str, str]) -> set[str]:
    """What is wrong with a row on its own (duplicates need the other rows)."""
    found = set()
    if any(row[c] == "" for c in RAW_COLUMNS):
        found.add("missing")
    if row["amount"] and not AMOUNT.fullmatch(row["amount"]):
        found.add("bad_amount")
    if row["currency"] and row["currency"] not in CURRENCIES:
        found.add("bad_currency")
    if row["timestamp"] and parse_ts(row["timestamp"]) is None:
        found.add("bad_timestamp")
    return found


def parse_ts(value: str) -> datetime | None:
    try:
        return datetime.strptime(value, TIMESTAMP_FORMAT)
    except ValueError:
        return None


def epoch(row: dict[str, str]) -> float:
    parsed = parse_ts(row["timestamp"])
    assert parsed is not None
    return parsed.timestamp()


def clean(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows without defects, first occurrence of each transaction id only."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        if not defects(row) and row["transaction_id"] not in seen:
            seen.add(row["transaction_id"])
            kept.append(row)
    return kept


def eur(row: dict[str, str]) -> float:
    return float(row["amount"]) * EUR_RATES[row["currency"]]


def homes(out: Path) -> dict[str, tuple[float, float]]:
    _, rows = read_csv(out / "customers.csv")
    return {r[0]: (float(r[1]), float(r[2])) for r in rows}


def km_from_home(row: dict[str, str], home: dict[str, tuple[float, float]]) -> float:
    lat1, lon1 = map(math.radians, home[row["customer_id"]])
    lat2, lon2 = math.radians(float(row["latitude"])), math.radians(float(row["longitude"]))
    a = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0 * math.asin(math.sqrt(a))


def file_bytes(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.csv"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("tiny")
    return out, generate(out, TINY)


# -- layout --------------------------------------------------------------------------------------
def test_writes_customers_and_one_drop_per_day_with_the_contract_header(tiny) -> None:
    out, report = tiny
    days = [TINY.start_date + timedelta(days=i) for i in range(TINY.days)]
    expected = tuple(out / "transactions" / f"{d.isoformat()}.csv" for d in days)
    assert report.files == expected
    assert sorted((out / "transactions").iterdir()) == list(expected)  # no temp files left
    assert report.customers_file == out / "customers.csv"

    header, customers = read_csv(report.customers_file)
    assert tuple(header) == CUSTOMER_COLUMNS
    assert len(customers) == TINY.customers
    rows = 0
    for path in expected:
        header, body = read_csv(path)
        assert tuple(header) == RAW_COLUMNS
        assert all(len(r) == len(RAW_COLUMNS) for r in body)
        rows += len(body)
    assert rows == report.transactions
    assert report.days == TINY.days


def test_clean_rows_follow_the_contract(tiny) -> None:
    out, _ = tiny
    rows = clean(read_drops(out))
    known = set(homes(out))
    assert rows
    for row in rows:
        assert re.fullmatch(r"t\d{8}\d+", row["transaction_id"])
        assert re.fullmatch(r"c\d{6}", row["customer_id"]) and row["customer_id"] in known
        assert re.fullmatch(r"m\d{5}", row["merchant_id"])
        assert re.fullmatch(r"d\d{7}", row["device_id"])
        assert row["merchant_category"] in MERCHANT_CATEGORIES
        assert row["channel"] in CHANNELS
        assert row["is_fraud"] in ("0", "1")
        assert float(row["amount"]) > 0
        assert -90 <= float(row["latitude"]) <= 90 and -180 <= float(row["longitude"]) <= 180
    assert {r["channel"] for r in rows} == set(CHANNELS)


def test_customers_live_in_europe_and_signed_up_before_the_data(tiny) -> None:
    out, _ = tiny
    _, rows = read_csv(out / "customers.csv")
    for cid, lat, lon, signup in rows:
        assert 30 < float(lat) < 68 and -20 < float(lon) < 35, cid
        assert date.fromisoformat(signup) < TINY.start_date


def test_report_to_dict_is_json_ready(tiny) -> None:
    _, report = tiny
    summary = json.loads(json.dumps(report.to_dict()))
    assert summary["transactions"] == report.transactions
    assert summary["files"] == [str(p) for p in report.files]


# -- determinism ---------------------------------------------------------------------------------
def test_same_inputs_give_byte_identical_files(tmp_path: Path) -> None:
    generate(tmp_path / "a", TINY)
    generate(tmp_path / "b", TINY)
    generate(tmp_path / "c", TINY.model_copy(update={"seed": TINY.seed + 1}))
    a, b, c = (file_bytes(tmp_path / x) for x in "abc")
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_a_day_does_not_depend_on_the_days_before_it(tmp_path: Path) -> None:
    generate(tmp_path / "long", TINY)
    third = TINY.start_date + timedelta(days=2)
    generate(tmp_path / "one", TINY.model_copy(update={"days": 1}), start_date=third)
    name = f"transactions/{third.isoformat()}.csv"
    assert file_bytes(tmp_path / "long")[name] == file_bytes(tmp_path / "one")[name]


def test_customers_are_the_same_in_every_period(tmp_path: Path) -> None:
    first = generate(tmp_path / "jan", TINY)
    later = generate(
        tmp_path / "mar", TINY, drift="fraud-pattern", start_date=date(2026, 3, 1)
    ).customers_file
    assert first.customers_file.read_bytes() == later.read_bytes()
    _, rows = read_csv(later)
    assert all(all(field != "" for field in row) for row in rows)  # master data is clean


# -- fraud ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2])
def test_fraud_rate_lands_near_the_target(tmp_path: Path, seed: int) -> None:
    params = DataParams(customers=600, days=8, seed=seed)
    report = generate(tmp_path, params)
    assert 0.005 <= report.fraud / report.transactions <= 0.02
    labels = Counter(r["is_fraud"] for r in read_drops(tmp_path))
    assert labels["1"] == report.fraud


def test_fraud_rate_follows_the_parameter(tmp_path: Path) -> None:
    high = generate(tmp_path / "high", DataParams(customers=400, days=5, fraud_rate=0.05))
    none = generate(tmp_path / "none", DataParams(customers=400, days=5, fraud_rate=0.0))
    assert 0.035 <= high.fraud / high.transactions <= 0.065
    assert none.fraud == 0


def _signals(rows: list[dict[str, str]], home: dict[str, tuple[float, float]]) -> np.ndarray:
    """Cheap stand-ins for the real features: ratio, distance, night, risky, online, velocity."""
    per_customer: dict[str, list[float]] = {}
    times: dict[str, list[float]] = {}
    for r in rows:
        per_customer.setdefault(r["customer_id"], []).append(eur(r))
        times.setdefault(r["customer_id"], []).append(epoch(r))
    median = {c: float(np.median(v)) for c, v in per_customer.items()}
    out = []
    for r in rows:
        burst = sum(abs(epoch(r) - other) <= 3600 for other in times[r["customer_id"]]) - 1
        out.append(
            [
                math.log(eur(r) / median[r["customer_id"]]),
                math.log1p(km_from_home(r, home)),
                int(r["timestamp"][11:13]) < 6,
                r["merchant_category"] in RISKY_CATEGORIES,
                r["channel"] == "online",
                burst,
            ]
        )
    return np.array(out, dtype=float)


def test_fraud_is_learnable_but_not_trivially(tmp_path: Path, small_params: Params) -> None:
    # Enough fraud in the held-out days for a stable AUC.
    params = small_params.data.model_copy(update={"customers": 600, "fraud_rate": 0.03})
    generate(tmp_path, params)
    rows = clean(read_drops(tmp_path))
    x = _signals(rows, homes(tmp_path))
    y = np.array([r["is_fraud"] == "1" for r in rows])
    train = np.array([r["_file"] < "2026-01-09" for r in rows])
    model = LogisticRegression(max_iter=1000).fit(x[train], y[train])
    auc = roc_auc_score(y[~train], model.predict_proba(x[~train])[:, 1])
    assert 0.8 < auc < 0.99, auc


def test_every_fraud_pattern_leaves_its_trace(tmp_path: Path) -> None:
    generate(tmp_path, DataParams(customers=600, days=6, fraud_rate=0.05))
    rows = clean(read_drops(tmp_path))
    home = homes(tmp_path)
    fraud = [r for r in rows if r["is_fraud"] == "1"]
    normal = [r for r in rows if r["is_fraud"] == "0"]

    def share(group: list[dict[str, str]], pred) -> float:
        return sum(map(pred, group)) / len(group)

    def far(r: dict[str, str]) -> bool:
        return km_from_home(r, home) > 250

    def night_risky(r: dict[str, str]) -> bool:
        return int(r["timestamp"][11:13]) < 6 and r["merchant_category"] in RISKY_CATEGORIES

    def tiny_online(r: dict[str, str]) -> bool:
        return float(r["amount"]) <= 3 and r["channel"] == "online"

    for signal in (far, night_risky, tiny_online):
        assert share(fraud, signal) > 5 * share(normal, signal) > 0, signal.__name__
    # …and some fraud looks perfectly ordinary.
    assert 0 < share(fraud, lambda r: not (far(r) or night_risky(r) or tiny_online(r))) < 0.6


# -- dirt ----------------------------------------------------------------------------------------
def test_dirty_rows_come_at_the_requested_rate_and_in_every_kind(tmp_path: Path) -> None:
    params = DataParams(customers=300, days=5, dirty_rate=0.05, seed=5)
    report = generate(tmp_path, params)
    rows = read_drops(tmp_path)

    kinds: Counter[str] = Counter()
    dirty = 0
    seen: dict[str, dict[str, str]] = {}
    for row in rows:
        found = defects(row)
        tid = row["transaction_id"]
        if tid and tid in seen:
            found.add("duplicate" if seen[tid] == row else "conflict")
        elif tid:
            seen[tid] = row
        kinds.update(found)
        dirty += bool(found)

    assert dirty == report.dirty_rows
    assert 0.035 <= report.dirty_rows / report.transactions <= 0.065
    kinds_expected = {"duplicate", "conflict", "missing", "bad_amount", "bad_currency"}
    assert kinds_expected | {"bad_timestamp"} <= set(kinds)
    amounts = {r["amount"] for r in rows if "bad_amount" in defects(r)}
    assert any("," in a for a in amounts) and any(a.startswith("-") for a in amounts)
    missing_columns = {c for r in rows for c in RAW_COLUMNS if r[c] == ""}
    assert len(missing_columns) >= 8  # any column may be empty, not a favourite one


def test_drops_are_unsorted_and_carry_late_rows_from_yesterday(tmp_path: Path) -> None:
    generate(tmp_path, DataParams(customers=300, days=3, dirty_rate=0.02))
    rows = [r for r in read_drops(tmp_path) if parse_ts(r["timestamp"])]
    late = [r for r in rows if r["timestamp"][:10] < r["_file"]]
    assert late and all(r["timestamp"][:10] == _yesterday(r["_file"]) for r in late)
    stamps = [r["timestamp"] for r in rows if r["_file"] == rows[-1]["_file"]]
    assert stamps != sorted(stamps)


def _yesterday(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


def test_no_dirt_when_dirty_rate_is_zero(tmp_path: Path) -> None:
    report = generate(tmp_path, TINY.model_copy(update={"dirty_rate": 0.0}))
    rows = read_drops(tmp_path)
    assert report.dirty_rows == 0
    assert not any(defects(r) for r in rows)
    assert len({r["transaction_id"] for r in rows}) == len(rows)
    assert all(r["timestamp"][:10] == r["_file"] for r in rows)


# -- drift ---------------------------------------------------------------------------------------
def _period(tmp_path: Path, drift: str) -> tuple[list[dict[str, str]], Path]:
    out = tmp_path / drift
    # A high fraud rate, so that each pattern has dozens of events.
    generate(out, DataParams(customers=800, days=4, fraud_rate=0.1), drift=drift)
    return clean(read_drops(out)), out


def test_spending_drift_raises_amounts_and_moves_online(tmp_path: Path) -> None:
    before, _ = _period(tmp_path, "none")
    after, _ = _period(tmp_path, "spending")

    def mean_eur(rows: list[dict[str, str]]) -> float:
        return float(np.mean([eur(r) for r in rows if r["is_fraud"] == "0"]))

    def online(rows: list[dict[str, str]]) -> float:
        return sum(r["channel"] == "online" for r in rows) / len(rows)

    assert 1.4 < mean_eur(after) / mean_eur(before) < 1.8
    assert online(after) > online(before) + 0.1


def test_fraud_pattern_drift_moves_fraud_close_to_home_and_to_known_devices(
    tmp_path: Path,
) -> None:
    def profile(drift: str) -> tuple[float, float, float]:
        rows, out = _period(tmp_path, drift)
        home = homes(out)
        fraud = [r for r in rows if r["is_fraud"] == "1"]
        known = {(r["customer_id"], r["device_id"]) for r in rows if r["is_fraud"] == "0"}
        own = [(r["customer_id"], r["device_id"]) in known for r in fraud]
        far = [km_from_home(r, home) > 250 for r in fraud]
        tiny = [float(r["amount"]) <= 3 for r in fraud]
        return float(np.mean(far)), float(np.mean(own)), float(np.mean(tiny))

    far_before, own_before, tiny_before = profile("none")
    far_after, own_after, tiny_after = profile("fraud-pattern")
    assert far_after < 0.6 * far_before
    assert own_after > own_before + 0.2
    assert tiny_after > tiny_before  # more card testing


def test_unknown_drift_is_refused_with_the_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown drift 'seasonal'") as info:
        generate(tmp_path / "out", TINY, drift="seasonal")
    assert all(name in str(info.value) for name in DRIFTS)
    assert not (tmp_path / "out").exists()


def test_every_drift_mixes_known_fraud_patterns_and_keeps_its_seed_position() -> None:
    # A drift's index is part of each day's seed: reordering DRIFTS would silently change
    # every generated file.
    assert DRIFTS == ("none", "spending", "fraud-pattern")
    for name in DRIFTS:
        mix = drift_named(name).fraud_mix
        assert set(mix) <= set(PATTERNS), name
        assert math.isclose(sum(mix.values()), 1.0), name


# -- scale ---------------------------------------------------------------------------------------
def test_days_are_generated_and_written_one_at_a_time(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int) -> None:
        # When day N is reported, exactly N drops exist: the generator streams day by day.
        assert len(list((tmp_path / "transactions").glob("*.csv"))) == done
        calls.append((done, total))

    generate(tmp_path, TINY, progress=progress)
    assert calls == [(i, TINY.days) for i in range(1, TINY.days + 1)]
