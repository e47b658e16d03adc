"""Expectation suites and the validation gate (Great Expectations 1.x).

The suites are data, versioned with the code: ``hearth/expectations/raw.json`` and
``hearth/expectations/processed.json``, in GX's own suite format. Everything that depends on
configuration is a GX suite parameter (``{"$PARAMETER": "1 - raw_max_bad_fraction"}``), filled
at run time from `ValidationParams`, from the contract in `hearth.data.schema` /
`hearth.features.definitions` and, for the drift checks, from the reference feature profile.
So the JSON never goes stale when a threshold in ``params.yaml`` changes.

Raw data is validated one batch per drop, so a failure names the drop. Expectations whose
``meta.scope`` is ``"all_drops"`` (the label rate, cross-drop id uniqueness) are statistics
that need many rows; they run once, on all well-formed drops together. Processed data is one
batch per split; expectations with ``meta.scope == "holdout"`` (the drift guard against the
train-split reference profile) run on the valid and test splits only.

Each call makes one file-backed GX context kept beside the Data Docs (``docs_dir.parent/gx``),
so the Data Docs index lists past raw and processed runs too, and publishes this call's
results as HTML with GX's own site builder into ``docs_dir``. Calls are not thread-safe within
one process (GX parses suite parameters with a module-level parser): run them one at a time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from hearth.config import ValidationParams
from hearth.data import schema
from hearth.features import definitions

log = logging.getLogger(__name__)

RAW_SUITE = "raw"
RAW_ALL_DROPS_SUITE = "raw_all_drops"
PROCESSED_SUITE = "processed"
ALL_DROPS_BATCH = "raw/all drops"
ALL_DROPS_SCOPE = "all_drops"
PROCESSED_DRIFT_SUITE = "processed_drift"
HOLDOUT_SCOPE = "holdout"
REFERENCE_FILE = "feature_profile.json"
REFERENCE_SPLIT = "train"
QUANTILES: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
# The first rows of the data have truncated history windows (n_tx_7d counts only the days
# that exist), so their window features run low. The reference skips them; see build_reference.
WARMUP = max([*definitions.WINDOWS.values(), definitions.MERCHANT_WINDOW])
MIN_REFERENCE_ROWS = 100
DOCS_SITE = "hearth"
_DATASOURCE = "hearth"


# -- results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class FailedExpectation:
    """One expectation that failed on one batch."""

    suite: str
    batch: str
    expectation: str
    column: str | None
    details: str  # observed value or unexpected percent, human-readable

    def line(self) -> str:
        target = f"{self.expectation}({self.column})" if self.column else self.expectation
        return f"{self.batch}: {target}: {self.details}"


@dataclass(frozen=True)
class ValidationResult:
    """The outcome of one suite over all of its batches."""

    suite: str
    success: bool
    batches: int
    evaluated: int
    failed: tuple[FailedExpectation, ...]
    docs_index: Path | None
    seconds: float = field(default=0.0, compare=False)
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line per failure, or one line saying that everything passed."""
        if not self.failed:
            return (
                f"{self.suite}: all {self.evaluated} expectations passed on {self.batches} batches"
            )
        return "\n".join(f.line() for f in self.failed)

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready view, for reports and lineage tags."""
        return {
            "suite": self.suite,
            "success": self.success,
            "batches": self.batches,
            "evaluated": self.evaluated,
            "failed": [
                {
                    "batch": f.batch,
                    "expectation": f.expectation,
                    "column": f.column,
                    "details": f.details,
                }
                for f in self.failed
            ],
            "docs_index": str(self.docs_index) if self.docs_index else None,
            "seconds": round(self.seconds, 2),
            "notes": list(self.notes),
        }


class ValidationFailed(Exception):
    """A suite failed; the message names every failed expectation and where the docs are."""

    def __init__(self, result: ValidationResult):
        self.result = result
        where = result.docs_index or "not published"
        super().__init__(
            f"validation suite '{result.suite}' failed: {len(result.failed)} failed "
            f"expectation(s) over {result.batches} batch(es)\n{result.summary()}\n"
            f"Data Docs: {where}"
        )


def gate(result: ValidationResult) -> None:
    """Raise `ValidationFailed` unless the result is a success."""
    if not result.success:
        raise ValidationFailed(result)


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


def _split_path(processed_dir: Path, split: str) -> Path:
    return processed_dir / f"{split}.parquet"


# -- reference profile ---------------------------------------------------------------------
def _warm_rows(frame: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    """Train rows whose full history windows lie inside the data, and where they start.

    Falls back to every row (and None) when the warm part is too small to profile.
    """
    timestamps = pd.to_datetime(frame["timestamp"])
    warm_from = timestamps.min() + WARMUP
    warm = frame[timestamps >= warm_from]
    if len(warm) < MIN_REFERENCE_ROWS:
        log.warning(
            "train split has only %d rows after the %s warm-up; profiling all %d rows",
            len(warm),
            WARMUP,
            len(frame),
        )
        return frame, None
    return warm, warm_from.isoformat()


def _feature_stats(column: pd.Series) -> dict[str, float]:
    column = column.astype("float64")
    stats = {"mean": column.mean(), "std": column.std(ddof=0), "min": column.min()}
    stats |= {f"q{round(q * 100):02d}": column.quantile(q) for q in QUANTILES}
    stats["max"] = column.max()
    return {k: float(v) for k, v in stats.items()}


def build_reference(processed_dir: Path, reference_dir: Path) -> Path:
    """Write ``reference_dir/feature_profile.json`` from the train split; return its path.

    Per numeric feature: mean, std, min, max and a few quantiles. The processed suite checks
    that the valid and test splits' feature means stay within a tolerance of these, in std
    units. Only train rows at least `WARMUP` after the first one are profiled: earlier rows
    see a truncated history, and held-out rows never do, so including them would flag drift
    that is only the start of the data.
    """
    source = _split_path(processed_dir, REFERENCE_SPLIT)
    frame = pd.read_parquet(source, columns=["timestamp", *definitions.NUMERIC_FEATURES])
    warm, warm_from = _warm_rows(frame)
    profile = {
        "source": str(source),
        "split": REFERENCE_SPLIT,
        "rows": len(warm),
        "split_rows": len(frame),
        "warm_from": warm_from,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "features": {name: _feature_stats(warm[name]) for name in definitions.NUMERIC_FEATURES},
    }
    reference_dir.mkdir(parents=True, exist_ok=True)
    out = reference_dir / REFERENCE_FILE
    out.write_text(json.dumps(profile, indent=2) + "\n")
    return out


def _load_or_build_reference(
    processed_dir: Path, reference_dir: Path
) -> tuple[dict[str, Any], str | None]:
    """The reference profile, and a note when it had to be built first."""
    path = reference_dir / REFERENCE_FILE
    note = None
    if not path.exists():
        build_reference(processed_dir, reference_dir)
        note = f"reference profile {path} was missing; built it from the {REFERENCE_SPLIT} split"
        log.warning(note)
    profile: dict[str, Any] = json.loads(path.read_text())
    missing = set(definitions.NUMERIC_FEATURES) - set(profile.get("features", {}))
    if missing:
        raise ValueError(
            f"{path} has no profile for {sorted(missing)}; rebuild it with build_reference()"
        )
    return profile, note


# -- Great Expectations plumbing -----------------------------------------------------------
class _Runner:
    """One GX context per validation call; one validation definition per suite.

    Kept small on purpose: GX contexts are slow to make, so a call makes one and runs every
    batch of a suite through the same validation definition.
    """

    def __init__(self, docs_dir: Path):
        import great_expectations as gx  # heavy import; keep `import hearth.validation` cheap

        self.docs_dir = docs_dir.resolve()
        # GX's own project state (suites, results) lives beside the docs, never in the repo.
        self.context = gx.get_context(mode="file", project_root_dir=self.docs_dir.parent)
        self._quiet()
        self._configure_docs_site()
        self.run_time = datetime.now(UTC)

    def _quiet(self) -> None:
        """No progress bar per batch: the caller logs one line per batch instead."""
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)

    def _configure_docs_site(self) -> None:
        site = {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(self.docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        }
        sites = self.context.list_data_docs_sites()
        for name in [n for n in sites if n != DOCS_SITE]:
            # The default "local_site" would render a second copy inside the gx dir.
            self.context.delete_data_docs_site(name)
        if DOCS_SITE in sites:
            self.context.update_data_docs_site(DOCS_SITE, site)  # type: ignore[arg-type]
        else:
            self.context.add_data_docs_site(DOCS_SITE, site)  # type: ignore[arg-type]

    def definition(self, suite_name: str, expectations: list[Any], meta: Mapping[str, Any]) -> Any:
        """An up-to-date validation definition for the suite over an in-memory DataFrame."""
        import great_expectations as gx

        # One datasource per suite, replaced on each call: stale assets from earlier calls go,
        # and a raw and a processed validation running side by side never touch each other's.
        source = self.context.data_sources.add_or_update_pandas(f"{_DATASOURCE}_{suite_name}")
        asset = source.add_dataframe_asset(suite_name)
        batch = asset.add_batch_definition_whole_dataframe("batch")
        suite = gx.ExpectationSuite(name=suite_name, expectations=expectations, meta=dict(meta))
        suite = self.context.suites.add_or_update(suite)
        vd = gx.ValidationDefinition(name=suite_name, data=batch, suite=suite)
        return self.context.validation_definitions.add_or_update(vd)

    def run(
        self, definition: Any, batch: str, frame: pd.DataFrame, parameters: Mapping[str, Any]
    ) -> Any:
        """Validate one DataFrame; the run name is the batch's file name, so the docs show it."""
        from great_expectations.core.run_identifier import RunIdentifier

        # GX stores results under a path built from the run name: no slashes allowed.
        run_name = batch.rsplit("/", 1)[-1].replace(" ", "-")
        run_id = RunIdentifier(run_name=run_name, run_time=self.run_time)
        return definition.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=dict(parameters),
            run_id=run_id,
        )

    def publish(self) -> Path | None:
        """Render this call's results and refresh the index; return the index path."""
        from great_expectations.data_context.types.resource_identifiers import (
            ValidationResultIdentifier,
        )

        # Render only this call's results: the store keeps every past run (the index lists
        # them all), and re-rendering each of them every time would only grow slower.
        mine = [
            key
            for key in self.context.validation_results_store.list_keys()
            if isinstance(key, ValidationResultIdentifier) and key.run_id.run_time == self.run_time
        ]
        try:
            self.context.build_data_docs(site_names=[DOCS_SITE], resource_identifiers=mine)
        except Exception:  # Data Docs are a report: never let them hide the verdict.
            log.exception("publishing Data Docs failed")
            return None
        index = self.docs_dir / "index.html"
        return index if index.exists() else None


# -- interpreting GX results ---------------------------------------------------------------
def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def _exception_message(info: Any) -> str | None:
    """GX 1.x nests exception info per metric; return the first message, if any."""
    if not isinstance(info, Mapping):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "error")
    for nested in info.values():
        message = _exception_message(nested)
        if message:
            return message
    return None


def _unexpected(kwargs: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    text = f"{float(result['unexpected_percent']):.3g}% unexpected"
    if kwargs.get("mostly", 1) != 1:
        text += f" (mostly={_fmt(kwargs['mostly'])})"
    sample = result.get("partial_unexpected_list") or []
    return text + (f", e.g. {sample[:3]}" if sample else "")


def _column_mismatch(result: Mapping[str, Any]) -> str:
    observed = result.get("observed_value") or []
    if not observed:
        return "no columns (no header)"
    mismatched = (result.get("details") or {}).get("mismatched") or []
    shown = [
        f"#{m['Expected Column Position'] + 1} {m['Found']!r} instead of {m['Expected']!r}"
        for m in mismatched[:4]
    ]
    more = f" and {len(mismatched) - 4} more" if len(mismatched) > 4 else ""
    return "columns differ: " + ", ".join(shown) + more if shown else f"observed {observed}"


def _observed(kwargs: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    text = f"observed {_fmt(result.get('observed_value'))}"
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and high is not None:
        text += f" (expected {_fmt(low)} .. {_fmt(high)})"
    elif low is not None:
        text += f" (expected >= {_fmt(low)})"
    elif high is not None:
        text += f" (expected <= {_fmt(high)})"
    return text


def _details(kind: str, kwargs: Mapping[str, Any], result: Mapping[str, Any], info: Any) -> str:
    """Human-readable why: unexpected share for row checks, observed value otherwise."""
    message = _exception_message(info)
    if message:
        # Typically a column the drop does not have; the column check names the cause.
        return f"not evaluated: {message.splitlines()[0][:200]}"
    if result.get("unexpected_percent") is not None:
        return _unexpected(kwargs, result)
    if kind == "expect_table_columns_to_match_ordered_list":
        return _column_mismatch(result)
    return _observed(kwargs, result)


def _failures(suite: str, batch: str, gx_result: Any) -> list[FailedExpectation]:
    """The failed expectations of one batch, table-level first (they usually are the cause)."""
    failed = []
    for r in gx_result.results:
        if r.success:
            continue
        config = r.expectation_config
        kwargs = dict(config.kwargs)
        failed.append(
            FailedExpectation(
                suite=suite,
                batch=batch,
                expectation=config.type,
                column=kwargs.get("column"),
                details=_details(config.type, kwargs, r.result or {}, r.exception_info),
            )
        )
    return sorted(failed, key=lambda f: f.column is not None)


@dataclass
class _Tally:
    """Running totals of one validation call."""

    batches: set[str] = field(default_factory=set)
    evaluated: int = 0
    success: bool = True
    failed: list[FailedExpectation] = field(default_factory=list)

    def add(self, suite: str, batch: str, gx_result: Any) -> None:
        self.batches.add(batch)  # a split checked by two suites is still one batch
        self.evaluated += len(gx_result.results)
        self.success &= bool(gx_result.success)
        self.failed.extend(_failures(suite, batch, gx_result))
        log.info("%s %s: %s", suite, batch, "ok" if gx_result.success else "FAILED")

    def result(
        self, suite: str, docs: Path | None, started: float, notes: tuple[str, ...] = ()
    ) -> ValidationResult:
        return ValidationResult(
            suite=suite,
            success=self.success,
            batches=len(self.batches),
            evaluated=self.evaluated,
            failed=tuple(self.failed),
            docs_index=docs,
            seconds=time.perf_counter() - started,
            notes=notes,
        )


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
    runner = _Runner(docs_dir)
    tally = _Tally()

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
    paths = [_split_path(processed_dir, split) for split in definitions.SPLITS]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"processed splits missing: {', '.join(missing)}")
    started = time.perf_counter()
    profile, note = _load_or_build_reference(processed_dir, reference_dir)
    config = load_suite_config(PROCESSED_SUITE)
    parameters = processed_parameters(params, profile)
    runner = _Runner(docs_dir)
    tally = _Tally()

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
