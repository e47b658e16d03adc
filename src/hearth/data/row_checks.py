"""The ETL's row checks: every raw row gets the first check it fails, with a readable
reason, or none; clean rows become typed transactions and the rest the quarantine.

The raw rows are checked as they are read (one pass over the drops, no copy of the raw
text), into table `checked` whose rowid is the row's position: drops in file-name order,
rows in file order. Positions become (file, line) only for the few quarantined rows."""

from __future__ import annotations

import duckdb

from hearth.data.sql import ident, in_list, lit
from hearth.schema import (
    CHANNELS,
    EUR_RATES,
    LABEL,
    MERCHANT_CATEGORIES,
    RAW_COLUMNS,
    TIMESTAMP_FORMAT,
)

# Longest raw value quoted in a quarantine reason; the full value is in its own column.
_REASON_VALUE_CHARS = 40
_MALFORMED_LINE = "malformed CSV line"
_DUPLICATE = "duplicate transaction_id"
# The typed values the checks and clean_transactions use, NULL where the raw text does not
# parse. Computed twice rather than stored in `checked`: at 10^7 rows, 400 MB more there
# pushed it and the sort after it past the memory limit, into the spill files.
_TYPED = {
    "ts_": f'try_strptime("timestamp", {lit(TIMESTAMP_FORMAT)})',
    "amount_": "TRY_CAST(amount AS DOUBLE)",
    "latitude_": "TRY_CAST(latitude AS DOUBLE)",
    "longitude_": "TRY_CAST(longitude AS DOUBLE)",
    # A CASE, not a join: `checked` must keep the read order (its rowid is the position).
    "rate_": "CASE currency "
    + " ".join(f"WHEN {lit(cur)} THEN {rate!r}" for cur, rate in EUR_RATES.items())
    + " END",
}


def _quoted_value(column: str) -> str:
    """SQL for the raw value of `column`, quoted and shortened, for a reason text."""
    col = ident(column)
    return (
        f"'''' || left({col}, {_REASON_VALUE_CHARS}) || "
        f"CASE WHEN length({col}) > {_REASON_VALUE_CHARS} THEN '…' ELSE '' END || ''''"
    )


def _missing(column: str) -> str:
    """SQL: the raw value is NULL, empty or only spaces (what ``trim`` strips).

    Trimming every value of every column allocated a string per value and was most of the
    row checks' cost. A value whose first byte is printable ASCII other than a space cannot
    be blank, so only the others (empty, a space, a tab, a multi-byte first character: a
    handful) are trimmed; the result is the same."""
    col = ident(column)
    return f"{col} IS NULL OR NOT ({col} >= '!' AND {col} < chr(127)) AND trim({col}) = ''"


def _row_checks() -> list[tuple[str, str, str | None]]:
    """(check name, SQL condition that fails the row, column whose value the reason shows).

    Evaluated in order; a row gets the first check it fails. The typed helper columns
    (``ts_``, ``amount_``, ...) are `_TYPED`.
    """
    checks: list[tuple[str, str, str | None]] = [
        (f"missing {c}", _missing(c), None) for c in RAW_COLUMNS
    ]
    checks += [
        ("malformed timestamp", "ts_ IS NULL", "timestamp"),
        ("malformed amount", "amount_ IS NULL", "amount"),
        ("non-finite amount", "NOT isfinite(amount_)", "amount"),
        ("non-positive amount", "amount_ <= 0", "amount"),
        ("unknown currency", "rate_ IS NULL", "currency"),
        ("unknown channel", f"channel NOT IN {in_list(CHANNELS)}", "channel"),
        (
            "unknown merchant_category",
            f"merchant_category NOT IN {in_list(MERCHANT_CATEGORIES)}",
            "merchant_category",
        ),
    ]
    for column, bound in (("latitude", 90), ("longitude", 180)):
        checks += [
            (f"malformed {column}", f"{column}_ IS NULL OR NOT isfinite({column}_)", column),
            (f"{column} out of range", f"abs({column}_) > {bound}", column),
        ]
    checks.append((f"malformed {LABEL}", f"{ident(LABEL)} NOT IN ('0', '1')", LABEL))
    return checks


def check_rows(con: duckdb.DuckDBPyConnection, source: str) -> None:
    """Tables `checked` and `duplicate_rows` from `source`, the raw rows as text.

    `source` is a relation with RAW_COLUMNS as text and ``file_``, the drop's index, in file
    then line order. `checked` holds every raw row as text, ``file_`` and
    ``check_``, the first check it fails (NULL when it passes them all); its rowid is the
    row's position. Duplicates are decided among rows that pass every other check: the first
    by position is kept, so a later corrected re-send of a rejected row is not lost;
    `duplicate_rows` holds (pos, first_pos) for each later copy.
    """
    typed = ", ".join(f"{sql} AS {name}" for name, sql in _TYPED.items())
    check_case = " ".join(f"WHEN {cond} THEN {lit(name)}" for name, cond, _ in _row_checks())
    con.execute(
        f"""
        CREATE TABLE checked AS
        SELECT * EXCLUDE ({", ".join(_TYPED)}), CASE {check_case} END AS check_
        FROM (SELECT *, {typed} FROM {source})
        """
    )
    # Ids are grouped by hash first (a fixed-width key): only the ids whose hash repeats,
    # a handful, are then compared as text.
    con.execute(
        """
        CREATE TABLE duplicate_rows AS
        WITH repeated AS (
            SELECT hash(transaction_id) AS h FROM checked WHERE check_ IS NULL
            GROUP BY ALL HAVING count(*) > 1
        ), candidates AS (
            SELECT rowid AS pos, min(rowid) OVER (PARTITION BY transaction_id) AS first_pos
            FROM checked
            WHERE check_ IS NULL AND hash(transaction_id) IN (SELECT h FROM repeated)
        )
        SELECT pos, first_pos FROM candidates WHERE pos > first_pos
        """
    )


def build_clean_and_quarantine(con: duckdb.DuckDBPyConnection) -> None:
    """Tables `clean_transactions` (typed, + amount_eur) and `quarantine` (text + reason).

    Reads `checked`, `duplicate_rows`, `raw_rejects` and `row_files` / `line_gaps`, which
    turn a position into its (file, line) (see `hearth.data.etl`).
    """
    typed = ", ".join(f"{sql} AS {name}" for name, sql in _TYPED.items())
    con.execute(
        f"""
        CREATE TABLE clean_transactions AS
        SELECT transaction_id, ts_ AS "timestamp", customer_id, merchant_id, merchant_category,
               amount_ AS amount, currency, channel, device_id,
               latitude_ AS latitude, longitude_ AS longitude,
               CAST({ident(LABEL)} AS BIGINT) AS {ident(LABEL)},
               amount_ * rate_ AS amount_eur
        FROM (SELECT *, {typed} FROM checked
              WHERE check_ IS NULL AND rowid NOT IN (SELECT pos FROM duplicate_rows))
        ORDER BY "timestamp", transaction_id
        """
    )
    raw_columns = ", ".join(ident(c) for c in RAW_COLUMNS)
    null_columns = ", ".join(f"CAST(NULL AS VARCHAR) AS {ident(c)}" for c in RAW_COLUMNS)
    # Keyed on the check already found, so only rejected rows pay for building the text.
    reason_case = " ".join(
        f"WHEN {lit(name)} THEN {lit(name)} || ' ' || {_quoted_value(col)}"
        for name, _, col in _row_checks()
        if col
    )
    con.execute(
        f"""
        CREATE TABLE quarantine AS
        WITH flagged AS (
            SELECT c.rowid AS pos, {", ".join(f"c.{ident(col)}" for col in RAW_COLUMNS)},
                   c.check_, d.first_pos
            FROM checked c LEFT JOIN duplicate_rows d ON c.rowid = d.pos
            WHERE c.check_ IS NOT NULL OR d.pos IS NOT NULL
        ), positions AS (
            SELECT pos FROM flagged UNION SELECT first_pos FROM flagged WHERE first_pos IS NOT NULL
        ), in_file AS (
            SELECT p.pos, f.source_file, p.pos - f.first_rowid + 1 AS record
            FROM positions p ASOF JOIN row_files f ON p.pos >= f.first_rowid
        ), located AS (
            SELECT i.pos, i.source_file, CAST(i.record + 1 + coalesce(g.i, 0) AS BIGINT) AS line
            FROM in_file i ASOF LEFT JOIN line_gaps g
              ON i.source_file = g.source_file AND i.record > g.g
        )
        SELECT {raw_columns}, loc.source_file, loc.line AS source_line,
               coalesce(check_, {lit(_DUPLICATE)}) AS "check",
               CASE WHEN check_ IS NULL
                    THEN {lit(_DUPLICATE)} || ' (first seen in ' || seen.source_file
                         || ' line ' || seen.line || ')'
                    ELSE CASE check_ {reason_case} ELSE check_ END
               END AS reason
        FROM flagged JOIN located AS loc ON loc.pos = flagged.pos
        LEFT JOIN located AS seen ON seen.pos = flagged.first_pos
        UNION ALL
        SELECT {null_columns}, source_file, source_line, {lit(_MALFORMED_LINE)} AS "check",
               {lit(_MALFORMED_LINE)} || ' (' || replace(error_type, '_', ' ') || '): '''
                 || left(csv_line, 120) || '''' AS reason
        FROM raw_rejects
        ORDER BY source_file, source_line
        """
    )
    con.execute("DROP TABLE checked")
