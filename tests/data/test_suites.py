"""Data tests: the raw and processed expectation suites and the validation gate.

Drops and splits are built here, small and deterministic, so each test states exactly which
rows are broken and checks that the failure names the expectation and the batch.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hearth import schema, validation
from hearth.config import Settings
from hearth.features import definitions
from hearth.params import ValidationParams
from hearth.validation import (
    FailedExpectation,
    ValidationFailed,
    ValidationResult,
    build_reference,
    gate,
    validate_processed,
    validate_raw,
)

ROWS_PER_DROP = 200
FRAUD_EVERY = 50  # a 2 % label rate: inside the default [0.2 %, 5 %] band


# -- raw drops -----------------------------------------------------------------------------
def _clean_rows(day: int, n: int = ROWS_PER_DROP, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed * 1000 + day)
    return [
        [
            f"tx-{day:02d}-{i:05d}",
            f"2026-01-{day:02d}T{rng.randrange(24):02d}:{rng.randrange(60):02d}:07",
            f"c{rng.randrange(50)}",
            f"m{rng.randrange(30)}",
            rng.choice(schema.MERCHANT_CATEGORIES),
            f"{rng.uniform(1, 400):.2f}",
            rng.choice(schema.CURRENCIES),
            rng.choice(schema.CHANNELS),
            f"d{rng.randrange(80)}",
            f"{rng.uniform(47, 55):.5f}",
            f"{rng.uniform(6, 15):.5f}",
            "1" if i % FRAUD_EVERY == 0 else "0",
        ]
        for i in range(n)
    ]


def _write_drop(
    tx_dir: Path, day: int, rows: Sequence[Sequence[str]], header: Sequence[str] | None = None
) -> Path:
    tx_dir.mkdir(parents=True, exist_ok=True)
    path = tx_dir / f"2026-01-{day:02d}.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(schema.RAW_COLUMNS if header is None else header)
        writer.writerows(rows)
    return path


def _slightly_dirty(day: int) -> list[list[str]]:
    """What a normal drop looks like: a re-sent row and a couple of bad fields, under 5 %."""
    rows = _clean_rows(day)
    rows.append(list(rows[3]))  # duplicate transaction_id
    rows[5][5] = "12,50"
    rows[6][6] = "XXX"
    rows[7][1] = ""
    return rows


def _wrong_header(tx_dir: Path, day: int) -> None:
    header = list(schema.RAW_COLUMNS)
    header[5], header[6] = header[6], header[5]  # currency before amount
    _write_drop(tx_dir, day, _clean_rows(day), header)


def _zero_bytes(tx_dir: Path, day: int) -> None:
    (tx_dir / f"2026-01-{day:02d}.csv").write_text("")


def _header_only(tx_dir: Path, day: int) -> None:
    _write_drop(tx_dir, day, [])


def _third_malformed(tx_dir: Path, day: int) -> None:
    rows = _clean_rows(day)
    for row in rows[::3]:
        row[5] = "abc" if int(row[0][-1]) % 2 else "12,50"
        row[1] = row[1].replace("T", " ").replace("-", "/")
    _write_drop(tx_dir, day, rows)


def _names(result: ValidationResult) -> set[tuple[str, str, str | None]]:
    return {(f.batch, f.expectation, f.column) for f in result.failed}


@pytest.fixture
def params() -> ValidationParams:
    return ValidationParams()


@pytest.fixture
def tx_dir(settings: Settings) -> Path:
    return settings.transactions_dir


def test_clean_and_slightly_dirty_drops_pass_and_publish_docs(
    settings: Settings, tx_dir: Path, params: ValidationParams
) -> None:
    _write_drop(tx_dir, 1, _clean_rows(1))
    _write_drop(tx_dir, 2, _slightly_dirty(2))

    result = validate_raw(settings.raw_dir, params, settings.data_docs_dir)

    assert result.success, result.summary()
    assert result.batches == 3  # two drops + all drops together
    assert result.evaluated > 20
    gate(result)  # does not raise
    assert result.docs_index == settings.data_docs_dir.resolve() / "index.html"
    assert result.docs_index.is_file()
    assert "2026-01-02.csv" in result.docs_index.read_text()
    # GX keeps its own state beside the docs, not in the working directory.
    assert (settings.gx_dir / "great_expectations.yml").is_file()
    assert not (Path.cwd() / "gx").exists()


@pytest.mark.parametrize(
    ("corrupt", "expected"),
    [
        (_wrong_header, {("expect_table_columns_to_match_ordered_list", None)}),
        (_zero_bytes, {("expect_table_row_count_to_be_between", None)}),
        (_header_only, {("expect_table_row_count_to_be_between", None)}),
        (
            _third_malformed,
            {
                ("expect_column_values_to_match_regex", "amount"),
                ("expect_column_values_to_match_regex", "timestamp"),
            },
        ),
    ],
    ids=["wrong-header", "empty-drop", "header-only", "third-malformed"],
)
def test_broken_drop_fails_naming_the_expectation_and_the_drop(
    settings: Settings, tx_dir: Path, params: ValidationParams, corrupt, expected
) -> None:
    _write_drop(tx_dir, 1, _clean_rows(1))
    corrupt(tx_dir, 2)

    result = validate_raw(settings.raw_dir, params, settings.data_docs_dir)

    assert not result.success
    failed_here = {(e, c) for b, e, c in _names(result) if b == "raw/2026-01-02.csv"}
    assert expected <= failed_here, result.summary()
    assert not any(f.batch == "raw/2026-01-01.csv" for f in result.failed)
    with pytest.raises(ValidationFailed) as info:
        gate(result)
    message = str(info.value)
    assert "2026-01-02.csv" in message
    for expectation, column in expected:
        assert expectation in message
        if column:
            assert f"{expectation}({column})" in message
    assert str(result.docs_index) in message
    assert info.value.result is result


def test_third_malformed_reports_unexpected_share_and_mostly(
    settings: Settings, tx_dir: Path, params: ValidationParams
) -> None:
    _third_malformed(tx_dir, 3)

    result = validate_raw(settings.raw_dir, params, settings.data_docs_dir)

    [amount] = [f for f in result.failed if f.column == "amount"]
    assert amount.details.startswith("33.5% unexpected (mostly=0.95)"), amount.details
    assert (
        "raw/2026-01-03.csv: expect_column_values_to_match_regex(amount): 33.5% unexpected"
        in result.summary()
    )


def test_thresholds_come_from_params_at_run_time(settings: Settings, tx_dir: Path) -> None:
    _write_drop(tx_dir, 1, _slightly_dirty(1))
    strict = ValidationParams(raw_max_bad_fraction=0.0, label_rate_min=0.1, label_rate_max=0.2)

    result = validate_raw(settings.raw_dir, strict, settings.data_docs_dir)

    names = _names(result)
    assert ("raw/2026-01-01.csv", "expect_column_values_to_be_unique", "transaction_id") in names
    assert ("raw/2026-01-01.csv", "expect_column_values_to_match_regex", "amount") in names
    assert ("raw/2026-01-01.csv", "expect_column_values_to_be_in_set", "currency") in names
    # The label rate is judged over all drops together, not per drop.
    assert ("raw/all drops", "expect_column_mean_to_be_between", "is_fraud") in names


def test_missing_drops_is_a_clear_error(settings: Settings, params: ValidationParams) -> None:
    with pytest.raises(FileNotFoundError, match="transactions"):
        validate_raw(settings.raw_dir, params, settings.data_docs_dir)


# -- processed splits ----------------------------------------------------------------------
def _split(n: int, seed: int, prefix: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.lognormal(3.5, 1.0, n)
    avg = amount * rng.uniform(0.5, 1.5, n)
    counts = {w: rng.poisson(lam, n) for w, lam in (("1h", 0.2), ("24h", 2.0), ("7d", 12.0))}
    frame = pd.DataFrame(
        {
            "transaction_id": [f"{prefix}-{i}" for i in range(n)],
            "timestamp": pd.Timestamp("2026-01-01") + pd.to_timedelta(np.arange(n) * 60, "s"),
            "customer_id": [f"c{i % 40}" for i in range(n)],
            "log_amount": np.log1p(amount),
            "amount_ratio": amount / avg,
            **{f"n_tx_{w}": c.astype("float64") for w, c in counts.items()},
            **{f"amount_sum_{w}": c * avg for w, c in counts.items()},
            "avg_amount_30d": avg,
            "n_merchants_7d": np.minimum(counts["7d"], 5).astype("float64"),
            "seconds_since_last": rng.uniform(0, 200_000, n),
            "is_new_device": (rng.random(n) < 0.1).astype("float64"),
            "distance_from_home_km": rng.exponential(5.0, n),
            "is_cold_start": (rng.random(n) < 0.05).astype("float64"),
            "channel": rng.choice(schema.CHANNELS, n),
            "merchant_category": rng.choice(schema.MERCHANT_CATEGORIES, n),
            "hour": [str(h) for h in rng.integers(0, 24, n)],
            "is_fraud": (np.arange(n) % FRAUD_EVERY == 0).astype("float64"),
        }
    )
    assert list(frame.columns) == validation.processed_columns()
    return frame


def _write_splits(processed_dir: Path, **overrides: pd.DataFrame) -> None:
    processed_dir.mkdir(parents=True, exist_ok=True)
    for seed, split in enumerate(definitions.SPLITS):
        frame = overrides.get(split, _split(600, seed, split))
        frame.to_parquet(processed_dir / f"{split}.parquet", index=False)


def test_clean_splits_pass_and_a_missing_reference_is_built(
    settings: Settings, params: ValidationParams
) -> None:
    _write_splits(settings.processed_dir)
    profile = settings.reference_dir / "feature_profile.json"
    assert not profile.exists()

    result = validate_processed(
        settings.processed_dir, settings.reference_dir, params, settings.data_docs_dir
    )

    assert result.success, result.summary()
    assert result.batches == 3
    assert profile.is_file()
    assert any("built it" in note for note in result.notes)
    assert result.docs_index is not None and result.docs_index.is_file()
    assert "valid.parquet" in result.docs_index.read_text()


def test_shifted_feature_mean_fails_the_drift_check(
    settings: Settings, params: ValidationParams
) -> None:
    shifted = _split(600, 1, "valid")
    shifted["distance_from_home_km"] += 25.0  # ≈ 5 reference stds
    _write_splits(settings.processed_dir, valid=shifted)
    build_reference(settings.processed_dir, settings.reference_dir)

    result = validate_processed(
        settings.processed_dir, settings.reference_dir, params, settings.data_docs_dir
    )

    assert not result.success
    assert _names(result) == {
        ("processed/valid.parquet", "expect_column_mean_to_be_between", "distance_from_home_km")
    }
    assert not result.notes  # the reference existed


def test_broken_values_fail_naming_the_column_and_split(
    settings: Settings, params: ValidationParams
) -> None:
    broken = _split(600, 2, "test")
    broken.loc[0, "hour"] = "24"
    broken.loc[1, "n_tx_24h"] = -1.0
    broken.loc[2, "log_amount"] = np.nan
    broken.loc[3, "transaction_id"] = broken.loc[4, "transaction_id"]
    broken.loc[5, "is_new_device"] = 2.0
    broken["is_fraud"] = 0.0
    _write_splits(settings.processed_dir, test=broken)

    result = validate_processed(
        settings.processed_dir, settings.reference_dir, params, settings.data_docs_dir
    )

    test_failures = {(e, c) for b, e, c in _names(result) if b == "processed/test.parquet"}
    assert {
        ("expect_column_values_to_be_in_set", "hour"),
        ("expect_column_values_to_be_between", "n_tx_24h"),
        ("expect_column_values_to_not_be_null", "log_amount"),
        ("expect_column_values_to_be_unique", "transaction_id"),
        ("expect_column_values_to_be_in_set", "is_new_device"),
        ("expect_column_mean_to_be_between", "is_fraud"),
    } <= test_failures, result.summary()
    assert all(f.batch == "processed/test.parquet" for f in result.failed)


def test_build_reference_profiles_every_numeric_feature_of_the_train_split(
    settings: Settings,
) -> None:
    _write_splits(settings.processed_dir)

    path = build_reference(settings.processed_dir, settings.reference_dir)

    profile = json.loads(path.read_text())
    # These splits span ten hours, less than the warm-up, so every train row is profiled.
    assert profile["split"] == "train" and profile["rows"] == 600 and profile["warm_from"] is None
    assert set(profile["features"]) == set(definitions.NUMERIC_FEATURES)
    train = pd.read_parquet(settings.processed_dir / "train.parquet")
    stats = profile["features"]["log_amount"]
    assert stats["mean"] == pytest.approx(train["log_amount"].mean())
    assert stats["q01"] <= stats["q50"] <= stats["q99"]


# -- the suites as data and the result types (no GX run) -----------------------------------
def test_suites_only_name_contract_columns_and_known_parameters() -> None:
    raw = validation.load_suite_config("raw")
    processed = validation.load_suite_config("processed")
    assert {e["kwargs"]["column"] for e in raw["expectations"] if "column" in e["kwargs"]} <= set(
        schema.RAW_COLUMNS
    )
    columns = {e["kwargs"].get("column") for e in processed["expectations"]} - {None}
    assert columns <= set(validation.processed_columns())
    drift = {
        e["kwargs"]["column"]
        for e in processed["expectations"]
        if e["type"] == "expect_column_mean_to_be_between" and e["kwargs"]["column"] != "is_fraud"
    }
    assert drift == set(definitions.NUMERIC_FEATURES)
    not_null = {
        e["kwargs"]["column"]
        for e in processed["expectations"]
        if e["type"] == "expect_column_values_to_not_be_null"
    }
    assert set(definitions.FEATURES) <= not_null


def test_result_summary_dict_and_gate() -> None:
    failure = FailedExpectation(
        "raw",
        "raw/2026-01-03.csv",
        "expect_column_values_to_match_regex",
        "amount",
        "31% unexpected (mostly=0.95)",
    )
    result = ValidationResult("raw", False, 31, 600, (failure,), Path("/docs/index.html"))
    assert result.summary() == (
        "raw/2026-01-03.csv: expect_column_values_to_match_regex(amount): 31% unexpected "
        "(mostly=0.95)"
    )
    assert json.loads(json.dumps(result.to_dict()))["failed"][0]["column"] == "amount"
    with pytest.raises(ValidationFailed, match=r"(?s)31% unexpected.*Data Docs: /docs/index.html"):
        gate(result)


def test_empty_fields_are_missing_only_where_the_suite_checks_presence(tmp_path: Path) -> None:
    rows = _clean_rows(1, n=2)
    rows[0][2] = ""  # customer_id: presence-checked, so missing
    rows[0][5] = ""  # amount: format-checked, so an empty string the regex rejects
    path = _write_drop(tmp_path, 1, rows)

    frame = validation.read_drop(
        path, validation.null_checked_columns(validation.load_suite_config("raw"))
    )

    assert frame["customer_id"].isna().tolist() == [True, False]
    assert frame["amount"].tolist()[0] == ""
    assert frame["is_fraud"].tolist() == ["1", "0"]


def test_reference_skips_the_warm_up_rows_whose_history_is_truncated(settings: Settings) -> None:
    train = _split(600, 0, "train")
    start = pd.Timestamp("2026-01-01")
    train["timestamp"] = start + pd.to_timedelta(np.arange(600) * 1440, "s")  # ten days
    warming = train["timestamp"] < start + validation.WARMUP
    train.loc[warming, "n_tx_7d"] = 0.0  # what a truncated 7-day window looks like
    _write_splits(settings.processed_dir, train=train)

    profile = json.loads(
        build_reference(settings.processed_dir, settings.reference_dir).read_text()
    )

    assert profile["rows"] == int((~warming).sum()) and profile["split_rows"] == 600
    assert profile["features"]["n_tx_7d"]["mean"] == pytest.approx(
        train.loc[~warming, "n_tx_7d"].mean()
    )
    assert profile["features"]["n_tx_7d"]["min"] > 0
