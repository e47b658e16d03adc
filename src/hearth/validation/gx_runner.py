"""Great Expectations plumbing: one file-backed context per validation call, and the
translation of GX's results into `FailedExpectation`s a person can read."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from hearth.validation.results import FailedExpectation, ValidationResult

log = logging.getLogger(__name__)

DOCS_SITE = "hearth"
_DATASOURCE = "hearth"


class Runner:
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
class Tally:
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
