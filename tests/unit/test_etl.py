"""ETL: reading drops, quarantine with reasons, dedupe, typed outputs, time split, no leaks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from hearth.data.etl import DropError, EtlError, EtlReport, run_etl
from hearth.features.definitions import FEATURES, KEY_COLUMNS, NUMERIC_FEATURES, SPLITS
from hearth.features.offline import compute_offline_features
from hearth.params import Params
from hearth.schema import CUSTOMER_COLUMNS, EUR_RATES, RAW_COLUMNS

HEADER = ",".join(RAW_COLUMNS)


def row(tid: str, ts: str, **overrides: str) -> str:
    """One raw CSV line of a valid transaction, with fields overridden."""
    fields = {
        "transaction_id": tid,
        "timestamp": ts,
        "customer_id": "C1",
        "merchant_id": "M1",
        "merchant_category": "grocery",
        "amount": "10.00",
        "currency": "EUR",
        "channel": "pos",
        "device_id": "D1",
        "latitude": "48.85",
        "longitude": "2.35",
        "is_fraud": "0",
    }
    fields.update(overrides)
    return ",".join(fields[c] for c in RAW_COLUMNS)


def write_raw(
    raw: Path,
    drops: dict[str, Sequence[str]],
    customers: Sequence[str] = ("C1,48.85,2.35,2025-01-01",),
) -> Path:
    """customers.csv and transactions/<name> files with a valid header and the given lines."""
    (raw / "transactions").mkdir(parents=True, exist_ok=True)
    (raw / "customers.csv").write_text("\n".join([",".join(CUSTOMER_COLUMNS), *customers]) + "\n")
    for name, lines in drops.items():
        (raw / "transactions" / name).write_text("\n".join([HEADER, *lines]) + "\n")
    return raw


def four_days(extra_day1: Sequence[str] = ()) -> dict[str, list[str]]:
    """One valid row per day for four days, so that a 1/1-day split has data everywhere."""
    return {
        f"2026-01-0{d}.csv": [row(f"T{d}", f"2026-01-0{d}T12:00:00")]
        + (list(extra_day1) if d == 1 else [])
        for d in range(1, 5)
    }


@pytest.fixture
def params() -> Params:
    return Params.model_validate({"split": {"valid_days": 1, "test_days": 1}})


def etl(tmp_path: Path, params: Params) -> EtlReport:
    return run_etl(tmp_path / "raw", tmp_path / "processed", tmp_path / "quarantine", params)


def quarantine(tmp_path: Path) -> pd.DataFrame:
    return pd.read_parquet(tmp_path / "quarantine" / "quarantine.parquet")


DIRTY_ROWS = {
    # transaction_id: (line overrides, expected reason)
    "B1": ({"amount": '"12,50"'}, "malformed amount '12,50'"),
    "B2": ({"amount": "abc"}, "malformed amount 'abc'"),
    "B3": ({"amount": "-3.00"}, "non-positive amount '-3.00'"),
    "B4": ({"amount": "0"}, "non-positive amount '0'"),
    "B5": ({"amount": "1e999"}, "non-finite amount '1e999'"),
    "B6": ({"amount": "nan"}, "non-finite amount 'nan'"),
    "B7": ({"currency": "XXX"}, "unknown currency 'XXX'"),
    "B8": ({"timestamp": "2026-01-01 12:00"}, "malformed timestamp '2026-01-01 12:00'"),
    "B9": ({"timestamp": "2026-13-01T12:00:00"}, "malformed timestamp '2026-13-01T12:00:00'"),
    "B10": ({"customer_id": ""}, "missing customer_id"),
    "B11": ({"device_id": "  "}, "missing device_id"),
    "B12": ({"latitude": "91"}, "latitude out of range '91'"),
    "B13": ({"longitude": "east"}, "malformed longitude 'east'"),
    "B14": ({"channel": "fax"}, "unknown channel 'fax'"),
    "B15": ({"merchant_category": "toys"}, "unknown merchant_category 'toys'"),
    "B16": ({"is_fraud": "yes"}, "malformed is_fraud 'yes'"),
    "B17": ({"is_fraud": ""}, "missing is_fraud"),
}


def test_every_bad_row_is_quarantined_with_a_readable_reason(
    tmp_path: Path, params: Params
) -> None:
    bad = [row(tid, "2026-01-01T13:00:00", **o) for tid, (o, _) in DIRTY_ROWS.items()]
    write_raw(tmp_path / "raw", four_days([*bad, "T1,,only three fields"]))

    report = etl(tmp_path, params)

    q = quarantine(tmp_path)
    reasons = dict(zip(q["transaction_id"], q["reason"], strict=True))
    for tid, (_, expected) in DIRTY_ROWS.items():
        assert reasons[tid] == expected
    broken = q[q["check"] == "malformed CSV line"]
    assert len(broken) == 1 and "only three fields" in broken["reason"].iloc[0]
    assert report.rows_in == 4 + len(DIRTY_ROWS) + 1
    assert report.rows_clean == 4
    assert report.rows_in == report.rows_clean + report.rows_quarantined == 4 + len(q)
    assert sum(report.quarantine_reasons.values()) == report.rows_quarantined
    assert report.quarantine_reasons["malformed amount"] == 2
    assert set(q.columns) >= {*RAW_COLUMNS, "source_file", "source_line", "check", "reason"}
    assert all(q[c].dropna().map(type).eq(str).all() for c in RAW_COLUMNS)


def test_duplicates_keep_the_first_occurrence_by_file_then_line(
    tmp_path: Path, params: Params
) -> None:
    drops = four_days([row("D", "2026-01-01T08:00:00", amount="1.00")])
    drops["2026-01-02.csv"].append(row("D", "2026-01-01T08:00:00", amount="2.00"))
    drops["2026-01-03.csv"].append(row("D", "2026-01-01T08:00:00", amount="abc"))
    write_raw(tmp_path / "raw", drops)

    report = etl(tmp_path, params)

    q = quarantine(tmp_path).set_index("source_file")
    assert q.loc["2026-01-02.csv", "reason"] == (
        "duplicate transaction_id (first seen in 2026-01-01.csv line 3)"
    )
    # A copy that is broken anyway is quarantined for its own defect, not as a duplicate.
    assert q.loc["2026-01-03.csv", "reason"] == "malformed amount 'abc'"
    kept = pd.read_parquet(tmp_path / "processed" / "transactions.parquet").set_index(
        "transaction_id"
    )
    assert kept.loc["D", "amount"] == 1.0
    assert report.quarantine_reasons == {"duplicate transaction_id": 1, "malformed amount": 1}


def test_source_line_counts_lines_the_csv_reader_rejected(tmp_path: Path, params: Params) -> None:
    extra = ["x,y", row("L4", "2026-01-01T09:00:00", amount="-1"), "a,b,c"]
    extra += [row("L6", "2026-01-01T09:00:00", currency="ABC")]
    write_raw(tmp_path / "raw", four_days(extra))

    etl(tmp_path, params)

    lines = quarantine(tmp_path).set_index("source_line")["reason"]
    assert lines[3].startswith("malformed CSV line") and "'x,y'" in lines[3]
    assert lines[4] == "non-positive amount '-1'"
    assert lines[5].startswith("malformed CSV line")
    assert lines[6] == "unknown currency 'ABC'"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "is empty"),
        (HEADER + "\n", "no rows"),
        ("id,when,who\n1,2,3\n", "has header"),
        (HEADER.replace("amount", "amt") + "\n" + row("T", "2026-01-01T00:00:00"), "has header"),
    ],
)
def test_unreadable_drop_is_a_drop_error_naming_the_file(
    tmp_path: Path, params: Params, content: str, problem: str
) -> None:
    raw = write_raw(tmp_path / "raw", four_days())
    (raw / "transactions" / "2026-01-05.csv").write_text(content)

    with pytest.raises(DropError, match=problem) as err:
        etl(tmp_path, params)
    assert "2026-01-05.csv" in str(err.value)


def test_no_drops_says_how_to_get_some(tmp_path: Path, params: Params) -> None:
    write_raw(tmp_path / "raw", {})
    with pytest.raises(DropError, match="hearth data generate"):
        etl(tmp_path, params)


def test_clean_transactions_are_typed_sorted_and_in_eur(tmp_path: Path, params: Params) -> None:
    drops = four_days([row("A", "2026-01-01T06:00:00", amount="100", currency="USD")])
    drops["2026-01-02.csv"].append(row("Z", "2026-01-01T05:00:00"))  # arrived late
    write_raw(tmp_path / "raw", drops)

    etl(tmp_path, params)

    tx = pd.read_parquet(tmp_path / "processed" / "transactions.parquet")
    assert list(tx.columns) == [*RAW_COLUMNS, "amount_eur"]
    assert tx["transaction_id"].tolist() == ["Z", "A", "T1", "T2", "T3", "T4"]
    assert pd.api.types.is_datetime64_dtype(tx["timestamp"])
    assert tx.set_index("transaction_id").loc["A", "amount_eur"] == 100 * EUR_RATES["USD"]
    for col in ("amount", "latitude", "longitude", "amount_eur"):
        assert tx[col].dtype == "float64"


def test_splits_are_whole_calendar_days_with_the_feature_columns(
    tmp_path: Path, params: Params
) -> None:
    write_raw(tmp_path / "raw", four_days([row("Late", "2025-12-31T23:59:59")]))

    report = etl(tmp_path, params)

    assert report.split_dates == {
        "train": ("2025-12-31", "2026-01-02"),
        "valid": ("2026-01-03", "2026-01-03"),
        "test": ("2026-01-04", "2026-01-04"),
    }
    assert report.split_rows == {"train": 3, "valid": 1, "test": 1}
    hours = {"train": ["23", "12", "12"], "valid": ["12"], "test": ["12"]}
    for split in SPLITS:
        frame = pd.read_parquet(tmp_path / "processed" / f"{split}.parquet")
        assert list(frame.columns) == [*KEY_COLUMNS, *FEATURES, "is_fraud"]
        assert all(frame[f].dtype == "float64" for f in NUMERIC_FEATURES)
        assert frame["hour"].tolist() == hours[split]
    json.dumps(report.to_dict())  # the CLI writes it as a JSON report


def test_too_few_days_for_the_split_is_a_clear_error(tmp_path: Path) -> None:
    write_raw(tmp_path / "raw", four_days())
    params = Params.model_validate({"split": {"valid_days": 2, "test_days": 2}})
    with pytest.raises(EtlError, match=r"spans 4 day\(s\).*valid_days \+ test_days = 4"):
        etl(tmp_path, params)


def test_a_failed_run_leaves_the_previous_outputs_alone(tmp_path: Path, params: Params) -> None:
    write_raw(tmp_path / "raw", four_days())
    report = etl(tmp_path, params)
    before = {name: Path(p).read_bytes() for name, p in report.outputs.items()}
    (tmp_path / "raw" / "transactions" / "2026-01-05.csv").write_text(
        "\n".join([HEADER, row("T5", "2026-01-05T12:00:00")]) + "\n"
    )

    with pytest.raises(EtlError):
        etl(tmp_path, Params.model_validate({"split": {"valid_days": 3, "test_days": 2}}))

    assert {name: Path(p).read_bytes() for name, p in report.outputs.items()} == before
    assert not list(tmp_path.glob(".etl-*")), "scratch directory left behind"


def test_generated_drops_account_for_every_row(tmp_path: Path, small_params: Params) -> None:
    from hearth.data.generate import generate

    generated = generate(tmp_path / "raw", small_params.data)

    report = etl(tmp_path, small_params)

    assert report.rows_in == generated.transactions
    assert report.rows_quarantined == generated.dirty_rows
    assert report.rows_in == report.rows_clean + report.rows_quarantined
    assert report.drops == small_params.data.days
    assert sum(report.split_rows.values()) == report.rows_clean


def test_train_features_do_not_see_valid_or_test_data(tmp_path: Path, small_params: Params) -> None:
    """Recompute features from the train days' transactions alone: nothing may change."""
    from hearth.data.generate import generate

    generate(tmp_path / "raw", small_params.data)
    report = etl(tmp_path, small_params)
    processed = tmp_path / "processed"
    train = pd.read_parquet(processed / "train.parquet")
    last_train_day = report.split_dates["train"][1]

    con = duckdb.connect()
    con.execute(
        f"CREATE TABLE tx AS FROM read_parquet('{processed / 'transactions.parquet'}') "
        f"WHERE CAST(\"timestamp\" AS DATE) <= DATE '{last_train_day}'"
    )
    con.execute(f"CREATE TABLE cu AS FROM read_parquet('{processed / 'customers.parquet'}')")
    alone = compute_offline_features(con, "tx", "cu").df()

    alone = alone.sort_values(["timestamp", "transaction_id"]).reset_index(drop=True)
    assert len(alone) == len(train) == report.split_rows["train"]
    # Not bit-exact: window sums may add in another order when the partition is shorter.
    pd.testing.assert_frame_equal(alone, train, check_exact=False, rtol=1e-12)


def test_the_blank_check_is_trims() -> None:
    """The row checks' cheap blank test says what ``nullif(trim(x), '') IS NULL`` says."""
    from hearth.data.row_checks import _missing

    values = ["", " ", "  ", "\t", " \t", "a", " a", "a ", "!", "~", "\x7f", "\u00a0", "\u3000",
              "\u00a0x", "\u2003", "\u2003 ", "é", "\n", "0", None]  # fmt: skip
    con = duckdb.connect()
    con.execute("CREATE TABLE v (x VARCHAR)")
    con.executemany("INSERT INTO v VALUES (?)", [[v] for v in values])
    rows = con.execute(f"SELECT x, {_missing('x')}, nullif(trim(x), '') IS NULL FROM v").fetchall()
    assert [(x, fast) for x, fast, _ in rows] == [(x, slow) for x, _, slow in rows]
