"""The suites as data, the batches they read, and the two validations (raw, processed)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from hearth import schema
from hearth.features import definitions
from hearth.params import ValidationParams
from hearth.validation.gx_runner import Runner, Tally
from hearth.validation.reference import REFERENCE_SPLIT, load_or_build_reference, split_path
from hearth.validation.results import ValidationResult

log = logging.getLogger(__name__)

RAW_SUITE = "raw"
RAW_ALL_DROPS_SUITE = "raw_all_drops"
PROCESSED_SUITE = "processed"
ALL_DROPS_BATCH = "raw/all drops"
ALL_DROPS_SCOPE = "all_drops"
PROCESSED_DRIFT_SUITE = "processed_drift"
HOLDOUT_SCOPE = "holdout"


# -- suites as data ------------------------------------------------------------------------
def load_suite_config(name: str) -> dict[str, Any]:
    """The suite ``hearth/expectations/<name>.json`` as a GX suite dict."""
    text = resources.files("hearth").joinpath("expectations", f"{name}.json").read_text()
    config: dict[str, Any] = json.loads(text)
    return config


def _split_by_scope(config: Mapping[str, Any], scope: str) -> tuple[list[Any], list[Any]]:
    """Expectations without / with ``meta.scope == scope``."""
    inside = [e for e in config["expectations"] if e.get("meta", {}).get("scope") == scope]
    outside = [e for e in config["expectations"] if e not in inside]
    return outside, inside


def raw_parameters(params: ValidationParams) -> dict[str, Any]:
    """Suite parameters of the raw suites: the thresholds and the contract's value sets."""
    return {
        "raw_max_bad_fraction": params.raw_max_bad_fraction,
        "label_rate_min": params.label_rate_min,
        "label_rate_max": params.label_rate_max,
        "raw_columns": list(schema.RAW_COLUMNS),
        "currencies": list(schema.CURRENCIES),
        "channels": list(schema.CHANNELS),
        "merchant_categories": list(schema.MERCHANT_CATEGORIES),
    }


def processed_columns() -> list[str]:
    """Columns of every processed split, in order."""
    return [*definitions.KEY_COLUMNS, *definitions.FEATURES, schema.LABEL]


def processed_parameters(params: ValidationParams, profile: Mapping[str, Any]) -> dict[str, Any]:
    """Suite parameters of the processed suite, including ``<feature>_mean``/``_std``."""
    values: dict[str, Any] = {
        "label_rate_min": params.label_rate_min,
        "label_rate_max": params.label_rate_max,
        "feature_mean_tolerance": params.feature_mean_tolerance,
        "processed_columns": processed_columns(),
        "seconds_since_last_cap": definitions.SECONDS_SINCE_LAST_CAP,
        **{f"{name}_values": list(v) for name, v in definitions.CATEGORICAL_FEATURES.items()},
    }
    for name, stats in profile["features"].items():
        values[f"{name}_mean"] = stats["mean"]
        values[f"{name}_std"] = stats["std"]
    return values


# -- reading batches -----------------------------------------------------------------------
def null_checked_columns(config: Mapping[str, Any]) -> tuple[str, ...]:
    """Columns the suite checks for presence only (``expect_column_values_to_not_be_null``)."""
    return tuple(
        e["kwargs"]["column"]
        for e in config["expectations"]
        if e["type"] == "expect_column_values_to_not_be_null"
    )


def read_drop(path: Path, null_columns: Iterable[str] = ()) -> pd.DataFrame:
    """A raw drop exactly as delivered: every field a string.

    An empty field is missing (NaN) only in `null_columns`. Elsewhere it stays "", because
    GX's format and vocabulary checks skip missing values: kept as "", an empty amount counts
    as a malformed amount in the one check that judges amounts.
    """
    try:
        # keep_default_na=False: "NA" or "null" in a drop is a (bad) value, not a missing one.
        return pd.read_csv(
            path,
            dtype=str,
            keep_default_na=False,
            na_values={column: [""] for column in null_columns},
        )
    except pd.errors.EmptyDataError:
        # A zero-byte drop has no header at all; the column and row-count checks say so.
        return pd.DataFrame()


def _all_drops(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Well-formed drops together, with the label as a number so its mean is the label rate.

    Drops with a wrong header are left out: they already fail on their own, and mixing their
    columns in would only repeat that failure here.
    """
    good = [f for f in frames if list(f.columns) == list(schema.RAW_COLUMNS)]
    if not good:
        return pd.DataFrame({c: pd.Series(dtype="str") for c in schema.RAW_COLUMNS})
    combined = pd.concat(good, ignore_index=True)
    combined[schema.LABEL] = pd.to_numeric(combined[schema.LABEL], errors="coerce")
    return combined


# -- the two validations -------------------------------------------------------------------
def validate_raw(raw_dir: Path, params: ValidationParams, docs_dir: Path) -> ValidationResult:
    """Check every drop in ``raw_dir/transactions`` against the raw contract.

    One batch per drop (named ``raw/<file>``), then one batch of all well-formed drops
    together for the statistics that need many rows. Publishes Data Docs into `docs_dir`.
    """
    drops = sorted((raw_dir / "transactions").glob("*.csv"))
    if not drops:
        raise FileNotFoundError(f"no raw drops (*.csv) under {raw_dir / 'transactions'}")
    started = time.perf_counter()
    config = load_suite_config(RAW_SUITE)
    per_drop, all_drops = _split_by_scope(config, ALL_DROPS_SCOPE)
    parameters = raw_parameters(params)
    runner = Runner(docs_dir)
    tally = Tally()

    definition = runner.definition(RAW_SUITE, per_drop, config.get("meta", {}))
    null_columns = null_checked_columns(config)
    frames = []
    for path in drops:
        batch = f"raw/{path.name}"
        frame = read_drop(path, null_columns)
        frames.append(frame)
        tally.add(RAW_SUITE, batch, runner.run(definition, batch, frame, parameters))
    if all_drops:
        combined = runner.definition(RAW_ALL_DROPS_SUITE, all_drops, config.get("meta", {}))
        gx_result = runner.run(combined, ALL_DROPS_BATCH, _all_drops(frames), parameters)
        tally.add(RAW_SUITE, ALL_DROPS_BATCH, gx_result)
    return tally.result(RAW_SUITE, runner.publish(), started)


def validate_processed(
    processed_dir: Path, reference_dir: Path, params: ValidationParams, docs_dir: Path
) -> ValidationResult:
    """Check every processed split (one batch each) against the processed suite.

    The valid and test splits also get the drift guard (``meta.scope == "holdout"``): their
    feature means are compared with the reference profile of the train split. A missing
    profile is built first, and the result's notes say so.
    """
    paths = [split_path(processed_dir, split) for split in definitions.SPLITS]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"processed splits missing: {', '.join(missing)}")
    started = time.perf_counter()
    profile, note = load_or_build_reference(processed_dir, reference_dir)
    config = load_suite_config(PROCESSED_SUITE)
    parameters = processed_parameters(params, profile)
    runner = Runner(docs_dir)
    tally = Tally()

    everywhere, holdout = _split_by_scope(config, HOLDOUT_SCOPE)
    definition = runner.definition(PROCESSED_SUITE, everywhere, config.get("meta", {}))
    drift = runner.definition(PROCESSED_DRIFT_SUITE, holdout, config.get("meta", {}))
    for split, path in zip(definitions.SPLITS, paths, strict=True):
        batch = f"processed/{path.name}"
        frame = pd.read_parquet(path)
        tally.add(PROCESSED_SUITE, batch, runner.run(definition, batch, frame, parameters))
        if holdout and split != REFERENCE_SPLIT:
            tally.add(PROCESSED_SUITE, batch, runner.run(drift, batch, frame, parameters))
    return tally.result(PROCESSED_SUITE, runner.publish(), started, (note,) if note else ())
