"""Expectation suites and the validation gate (Great Expectations 1.x).

The suites are data, versioned with the code: ``hearth/expectations/raw.json`` and
``hearth/expectations/processed.json``, in GX's own suite format. Everything that depends on
configuration is a GX suite parameter (``{"$PARAMETER": "1 - raw_max_bad_fraction"}``), filled
at run time from `ValidationParams`, from the contract in `hearth.schema` /
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

from hearth.validation.reference import WARMUP, build_reference
from hearth.validation.results import (
    FailedExpectation,
    ValidationFailed,
    ValidationResult,
    gate,
)
from hearth.validation.suites import (
    load_suite_config,
    null_checked_columns,
    processed_columns,
    read_drop,
    validate_processed,
    validate_raw,
)

__all__ = [
    "WARMUP",
    "FailedExpectation",
    "ValidationFailed",
    "ValidationResult",
    "build_reference",
    "gate",
    "load_suite_config",
    "null_checked_columns",
    "processed_columns",
    "read_drop",
    "validate_processed",
    "validate_raw",
]
