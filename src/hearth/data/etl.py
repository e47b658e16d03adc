"""ETL: raw daily drops → clean typed transactions, quarantine, features and time splits.

Everything runs in an in-process DuckDB with a memory limit and a spill directory, so the
data may be larger than memory. Raw drops are read as text (``all_varchar``) so that no
malformed value can crash the read; every row that breaks the contract goes to the
quarantine with a readable reason, and ``rows_in == rows_clean + rows_quarantined`` always.

Outputs (written to a scratch directory first and moved into place only when every step
succeeded, so a failed run leaves the previous outputs as they were):

- ``processed_dir/transactions.parquet``: clean typed transactions + ``amount_eur``, sorted
  by (timestamp, transaction_id); the online feature store materialises from it.
- ``processed_dir/customers.parquet``: customer master data, home NULL where unknown.
- ``processed_dir/{train,valid,test}.parquet``: KEY_COLUMNS + FEATURES + is_fraud.
- ``quarantine_dir/quarantine.parquet``: rejected rows, raw columns as text, with
  ``source_file``, ``source_line``, ``check`` (the kind of problem) and ``reason``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import date, timedelta
from pathlib import Path

import duckdb

from hearth.data.row_checks import build_clean_and_quarantine, check_rows
from hearth.data.sql import ident, lit
from hearth.features.definitions import SPLITS
from hearth.features.history import build_history_table
from hearth.features.offline import feature_sql
from hearth.params import EtlParams, Params, SplitParams
from hearth.schema import (
    CUSTOMER_COLUMNS,
    LABEL,
    RAW_COLUMNS,
)

logger = logging.getLogger(__name__)

TRANSACTIONS_SUBDIR = "transactions"
CUSTOMERS_FILE = "customers.csv"


class EtlError(ValueError):
    """The ETL cannot produce its outputs; the message says why and what to do."""


class DropError(EtlError):
    """A raw drop cannot be read at all (wrong header, empty file); message names the file,
    what is wrong and what to do."""


@dataclass(frozen=True)
class EtlReport:
    """What one ETL run read, kept, rejected and wrote."""

    rows_in: int
    rows_clean: int
    rows_quarantined: int
    quarantine_reasons: dict[str, int]
    drops: int
    split_rows: dict[str, int]
    split_dates: dict[str, tuple[str, str]]
    fraud_rate: dict[str, float]
    outputs: dict[str, str]

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (tuples become lists)."""
        out = asdict(self)
        out["split_dates"] = {k: list(v) for k, v in self.split_dates.items()}
        return out


# -- Phase 1: find and check the drops -----------------------------------------------------
def _check_header(path: Path, expected: tuple[str, ...]) -> None:
    """Raise DropError unless `path` has exactly the `expected` header and at least one row.

    Only the first two lines are read: a wrong file is rejected before DuckDB scans anything.
    """
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as handle:
        header = handle.readline()
        first_row = handle.readline()
    if not header:
        raise DropError(f"{path} is empty (0 bytes); remove it or re-export the drop")
    found = tuple(col.strip().strip('"') for col in header.rstrip("\r\n").split(","))
    if found != expected:
        raise DropError(
            f"{path} has header {','.join(found)!r}, expected {','.join(expected)!r}; "
            "fix the export or move the file out of the raw directory"
        )
    if not first_row.strip():
        raise DropError(f"{path} has a header but no rows; remove it or re-export the drop")


def find_drops(raw_dir: Path) -> list[Path]:
    """The daily transaction drops in file-name (= date) order, each with a valid header."""
    drops = sorted((raw_dir / TRANSACTIONS_SUBDIR).glob("*.csv"))
    if not drops:
        raise DropError(
            f"no transaction drops in {raw_dir / TRANSACTIONS_SUBDIR} (expected *.csv); "
            "run `hearth data generate` to create synthetic data, or copy the drops there"
        )
    for drop in drops:
        _check_header(drop, RAW_COLUMNS)
    customers = raw_dir / CUSTOMERS_FILE
    if not customers.exists():
        raise DropError(
            f"{customers} is missing; run `hearth data generate` or add the customer master data"
        )
    _check_header(customers, CUSTOMER_COLUMNS)
    return drops


# -- Phase 2: load raw text ----------------------------------------------------------------
def _read_csv_sql(files: list[Path], columns: tuple[str, ...], rejects: str) -> str:
    """read_csv as text with fixed columns; unparseable lines go to the `rejects` tables."""
    spec = "{" + ", ".join(f"{lit(c)}: 'VARCHAR'" for c in columns) + "}"
    paths = "[" + ", ".join(lit(str(f)) for f in files) + "]"
    return (
        f"read_csv({paths}, header = true, auto_detect = false, all_varchar = true, "
        f"columns = {spec}, delim = ',', quote = '\"', escape = '\"', "
        f"store_rejects = true, rejects_table = {lit(rejects + '_errors')}, "
        f"rejects_scan = {lit(rejects + '_scans')})"
    )


def _load_raw(con: duckdb.DuckDBPyConnection, drops: list[Path]) -> None:
    """Read and check every drop in one pass: tables `checked` and `duplicate_rows` (see
    `check_rows`), `raw_rejects` (one row per line the CSV reader could not split into the
    columns), and `row_files` / `line_gaps`, which turn a position in `checked` into its
    file and line."""
    columns = ", ".join(ident(c) for c in RAW_COLUMNS)
    read = _read_csv_sql(drops, RAW_COLUMNS, "csv_rejects")
    # preserve_insertion_order keeps file order then row order, so `checked`'s rowid is the
    # row's position and a file's rows have consecutive rowids.
    check_rows(con, f"(SELECT {columns}, file_index AS file_ FROM {read})")
    con.execute(
        """
        CREATE TABLE raw_rejects AS
        SELECT parse_filename(s.file_path) AS source_file,
               CAST(e.line AS BIGINT) AS source_line,
               first(lower(CAST(e.error_type AS VARCHAR)) ORDER BY e.column_idx) AS error_type,
               first(e.csv_line ORDER BY e.column_idx) AS csv_line
        FROM csv_rejects_errors e JOIN csv_rejects_scans s USING (scan_id, file_id)
        GROUP BY ALL
        """
    )
    names = ", ".join(f"({i}, {lit(drop.name)})" for i, drop in enumerate(drops))
    con.execute(
        f"""
        CREATE TABLE row_files AS
        SELECT n.source_file, s.first_rowid
        FROM (SELECT file_, min(rowid) AS first_rowid FROM checked GROUP BY ALL) AS s
        JOIN (VALUES {names}) AS n(file_, source_file) USING (file_)
        """
    )
    # The reader reports physical line numbers only for rejected lines. A parsed record's
    # line is 1 (header) + its ordinal k + the number of rejected lines before it; a
    # rejected line i (i-th in its file) comes after g_i = line_i - 1 - i records, so it
    # precedes record k iff g_i < k: an ASOF join on g finds the last such i. (Assumes no
    # quoted field spans lines, which the raw contract never produces.)
    con.execute(
        """
        CREATE TABLE line_gaps AS
        SELECT source_file, g, max(i) AS i FROM (
            SELECT source_file,
                   row_number() OVER (PARTITION BY source_file ORDER BY source_line) AS i,
                   source_line - 1
                     - row_number() OVER (PARTITION BY source_file ORDER BY source_line) AS g
            FROM raw_rejects)
        GROUP BY ALL
        """
    )


def _load_customers(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Table `customers`: one row per customer id (first wins), home NULL unless valid."""
    columns = ", ".join(ident(c) for c in CUSTOMER_COLUMNS)
    # Materialised first: rowid (file order) exists only on a table.
    con.execute(
        f"CREATE TABLE customers_raw AS SELECT {columns} "
        f"FROM {_read_csv_sql([path], CUSTOMER_COLUMNS, 'customer_rejects')}"
    )
    con.execute(
        """
        CREATE TABLE customers AS
        WITH parsed AS (
            SELECT customer_id,
                   TRY_CAST(home_latitude AS DOUBLE) AS lat,
                   TRY_CAST(home_longitude AS DOUBLE) AS lon,
                   TRY_CAST(signup_date AS DATE) AS signup_date,
                   row_number() OVER (PARTITION BY customer_id ORDER BY rowid) AS occurrence
            FROM customers_raw
            WHERE nullif(trim(customer_id), '') IS NOT NULL
        ), valid AS (
            SELECT *, lat IS NOT NULL AND lon IS NOT NULL AND isfinite(lat) AND isfinite(lon)
                      AND lat BETWEEN -90 AND 90 AND lon BETWEEN -180 AND 180 AS home_known
            FROM parsed WHERE occurrence = 1
        )
        SELECT customer_id,
               CASE WHEN home_known THEN lat END AS home_latitude,
               CASE WHEN home_known THEN lon END AS home_longitude,
               signup_date
        FROM valid ORDER BY customer_id
        """
    )
    total = _scalar(con, "SELECT count(*) FROM customers")
    homeless = _scalar(con, "SELECT count(*) FROM customers WHERE home_latitude IS NULL")
    rejected = _scalar(con, "SELECT count(DISTINCT line) FROM customer_rejects_errors")
    logger.info("customers: %d (%d without a usable home location)", total, homeless)
    if rejected:
        logger.warning("customers: %d unreadable line(s) in %s ignored", rejected, path)


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


# -- Phase 5: time split -------------------------------------------------------------------
@dataclass(frozen=True)
class _SplitBounds:
    first: date
    valid_start: date
    test_start: date
    last: date

    def dates(self) -> dict[str, tuple[str, str]]:
        one = timedelta(days=1)
        return {
            "train": (self.first.isoformat(), (self.valid_start - one).isoformat()),
            "valid": (self.valid_start.isoformat(), (self.test_start - one).isoformat()),
            "test": (self.test_start.isoformat(), self.last.isoformat()),
        }


def _split_bounds(con: duckdb.DuckDBPyConnection, split: SplitParams) -> _SplitBounds:
    """Calendar-day boundaries: the last test_days → test, the valid_days before → valid."""
    row = con.execute(
        'SELECT min(CAST("timestamp" AS DATE)), max(CAST("timestamp" AS DATE)) '
        "FROM clean_transactions"
    ).fetchone()
    if row is None or row[0] is None:
        raise EtlError("no clean transactions left after quarantine; see the quarantine report")
    first, last = row
    test_start = last - timedelta(days=split.test_days - 1)
    valid_start = test_start - timedelta(days=split.valid_days)
    if first >= valid_start:
        span = (last - first).days + 1
        raise EtlError(
            f"clean data spans {span} day(s) ({first} to {last}) but the split needs more than "
            f"valid_days + test_days = {split.valid_days + split.test_days} so that train is "
            "not empty; add more drops or lower split.valid_days / split.test_days in params.yaml"
        )
    return _SplitBounds(first, valid_start, test_start, last)


def _split_case(bounds: _SplitBounds) -> str:
    day = 'CAST("timestamp" AS DATE)'
    return (
        f"CASE WHEN {day} >= DATE '{bounds.test_start}' THEN 'test' "
        f"WHEN {day} >= DATE '{bounds.valid_start}' THEN 'valid' ELSE 'train' END"
    )


# -- Orchestration -------------------------------------------------------------------------
def _connect(etl: EtlParams, spill_dir: Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB with bounded memory; tables and operators spill to `spill_dir`."""
    # In-memory, but not memory-bound: beyond memory_limit DuckDB evicts table blocks and
    # operator state to temp_directory (twice as fast as a database file here).
    con = duckdb.connect(":memory:")
    con.execute(f"SET memory_limit = {lit(etl.memory_limit)}")
    con.execute(f"SET threads = {int(etl.threads)}")
    con.execute(f"SET temp_directory = {lit(str(spill_dir))}")
    con.execute("SET preserve_insertion_order = true")
    return con


def _copy_parquet(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> None:
    # zstd level 1, not the default 3: a quarter less CPU to write, files about 20 % larger.
    options = "FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1"
    con.execute(f"COPY ({query}) TO {lit(str(path))} ({options})")


def _reason_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    rows = con.execute(
        'SELECT "check", count(*) FROM quarantine GROUP BY ALL ORDER BY 2 DESC, 1'
    ).fetchall()
    return {str(check): int(n) for check, n in rows}


@dataclass(frozen=True)
class _SplitStats:
    rows: dict[str, int]
    fraud_rate: dict[str, float]
    # Each split's rowids in clean_transactions, [first, end): sorted by timestamp, a split
    # (a range of days) is one contiguous run of rows.
    ranges: dict[str, tuple[int, int]]


def _split_stats(con: duckdb.DuckDBPyConnection, bounds: _SplitBounds) -> _SplitStats:
    rows = con.execute(
        f"SELECT {_split_case(bounds)}, count(*), avg({ident(LABEL)}), min(rowid), max(rowid) "
        "FROM clean_transactions GROUP BY ALL"
    ).fetchall()
    found = {str(s): (int(n), float(rate), int(lo), int(hi)) for s, n, rate, lo, hi in rows}
    counts = {s: found.get(s, (0,))[0] for s in SPLITS}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise EtlError(
            f"split(s) {', '.join(empty)} have no transactions (days without data); "
            "add drops for those days or change split.valid_days / split.test_days"
        )
    ranges = {s: (found[s][2], found[s][3] + 1) for s in SPLITS}
    if any(end - first != counts[s] for s, (first, end) in ranges.items()):
        raise EtlError("clean transactions are not in timestamp order")  # never expected
    return _SplitStats(counts, {s: found[s][1] for s in SPLITS}, ranges)


def _publish(scratch: Path, targets: dict[str, Path]) -> dict[str, str]:
    """Move finished files into place (a rename when on the same filesystem)."""
    for target in targets.values():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(scratch / target.name, target)
        logger.debug("wrote %s", target)
    return {name: str(target) for name, target in targets.items()}


def run_etl(raw_dir: Path, processed_dir: Path, quarantine_dir: Path, params: Params) -> EtlReport:
    """Clean, quarantine, featurise and split the raw drops; see the module docstring."""
    started = time.perf_counter()
    drops = find_drops(raw_dir)
    logger.info("etl: %d drop(s) in %s", len(drops), raw_dir / TRANSACTIONS_SUBDIR)
    processed_dir.mkdir(parents=True, exist_ok=True)
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    # Scratch beside the outputs, not in /tmp (often RAM-backed): spilling must hit disk,
    # and the final renames stay on one filesystem.
    with tempfile.TemporaryDirectory(prefix=".etl-", dir=processed_dir.parent) as tmp:
        scratch = Path(tmp)
        con = _connect(params.etl, scratch / "spill")
        try:
            report = _run(con, raw_dir, drops, scratch, processed_dir, quarantine_dir, params)
        finally:
            con.close()
        shutil.rmtree(scratch / "spill", ignore_errors=True)
    elapsed = time.perf_counter() - started
    logger.info(
        "etl: done in %.1fs (%d rows in, %.0f rows/s)",
        elapsed,
        report.rows_in,
        report.rows_in / max(elapsed, 1e-9),
    )
    return report


def _clean(
    con: duckdb.DuckDBPyConnection, raw_dir: Path, drops: list[Path]
) -> tuple[int, int, int, dict[str, int]]:
    """Phases 2-3: load the raw text, check every row, split clean from quarantined.

    Returns (rows in, clean rows, quarantined rows, quarantine reasons), the report's first
    four fields."""
    _load_raw(con, drops)
    _load_customers(con, raw_dir / CUSTOMERS_FILE)
    rows_in = _scalar(con, "SELECT count(*) FROM checked") + _scalar(
        con, "SELECT count(*) FROM raw_rejects"
    )
    logger.info("etl: read %d row(s)", rows_in)
    build_clean_and_quarantine(con)
    clean = _scalar(con, "SELECT count(*) FROM clean_transactions")
    quarantined = _scalar(con, "SELECT count(*) FROM quarantine")
    if clean + quarantined != rows_in:  # an invariant, never expected to trip
        raise EtlError(f"row accounting broken: {rows_in} in != {clean} + {quarantined}")
    reasons = _reason_counts(con)
    logger.info("etl: %d clean, %d quarantined %s", clean, quarantined, reasons)
    return rows_in, clean, quarantined, reasons


def _split_features_sql(first: int, end: int) -> str:
    """The features of clean_transactions' rows [first, end), only those computed."""
    rows = f"BETWEEN {int(first)} AND {int(end) - 1}"
    return feature_sql(
        f"(SELECT rowid, * FROM clean_transactions WHERE rowid {rows})",
        f"(FROM feature_history WHERE pos {rows})",
    ).strip()


def _write_outputs(
    con: duckdb.DuckDBPyConnection,
    params: Params,
    ranges: dict[str, tuple[int, int]],
    scratch: Path,
    targets: dict[str, Path],
) -> None:
    """Phases 4-6: every output to scratch. The tables first, while the most memory is
    free; then table `feature_history` (`build_history_sql`'s columns, computed by
    `build_history_table`), from which each split's features are written."""
    for name, table in (("transactions", "clean_transactions"), ("customers", "customers"),
                        ("quarantine", "quarantine")):  # fmt: skip
        _copy_parquet(con, f"FROM {table}", scratch / targets[name].name)
    con.execute("DROP TABLE quarantine")
    build_history_table(
        con, "clean_transactions", "customers", "feature_history", params.etl.threads
    )
    logger.info("etl: features computed")
    for split in SPLITS:
        # In clean_transactions' order: by timestamp then transaction_id.
        _copy_parquet(con, _split_features_sql(*ranges[split]), scratch / targets[split].name)


def _run(
    con: duckdb.DuckDBPyConnection,
    raw_dir: Path,
    drops: list[Path],
    scratch: Path,
    processed_dir: Path,
    quarantine_dir: Path,
    params: Params,
) -> EtlReport:
    rows_in, rows_clean, rows_quarantined, reasons = _clean(con, raw_dir, drops)
    bounds = _split_bounds(con, params.split)
    stats = _split_stats(con, bounds)
    logger.info("etl: split %s", stats.rows)
    targets = {
        "transactions": processed_dir / "transactions.parquet",
        "customers": processed_dir / "customers.parquet",
        **{s: processed_dir / f"{s}.parquet" for s in SPLITS},
        "quarantine": quarantine_dir / "quarantine.parquet",
    }
    _write_outputs(con, params, stats.ranges, scratch, targets)
    outputs = _publish(scratch, targets)
    logger.info("etl: wrote %s", ", ".join(outputs.values()))
    return EtlReport(
        rows_in=rows_in,
        rows_clean=rows_clean,
        rows_quarantined=rows_quarantined,
        quarantine_reasons=reasons,
        drops=len(drops),
        split_rows=stats.rows,
        split_dates=bounds.dates(),
        fraud_rate=stats.fraud_rate,
        outputs=outputs,
    )
