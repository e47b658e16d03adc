"""The ETL's row checks: every raw row gets the first check it fails, with a readable
reason, or none; clean rows become typed transactions and the rest the quarantine."""

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


def _quoted_value(column: str) -> str:
    """SQL for the raw value of `column`, quoted and shortened, for a reason text."""
    col = ident(column)
    return (
        f"'''' || left({col}, {_REASON_VALUE_CHARS}) || "
        f"CASE WHEN length({col}) > {_REASON_VALUE_CHARS} THEN '…' ELSE '' END || ''''"
    )


def _row_checks() -> list[tuple[str, str, str | None]]:
    """(check name, SQL condition that fails the row, column whose value the reason shows).

    Evaluated in order; a row gets the first check it fails. The typed helper columns
    (``ts_``, ``amount_``, ...) are computed in `check_rows`.
    """
    checks: list[tuple[str, str, str | None]] = [
        (f"missing {c}", f"nullif(trim({ident(c)}), '') IS NULL", None) for c in RAW_COLUMNS
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


def check_rows(con: duckdb.DuckDBPyConnection) -> None:
    """Table `checked`: every raw row with typed helper columns, `check` and `reason`.

    `check` is NULL for a clean row. Duplicates are decided among rows that pass every other
    check: the first by (file, line) is kept, so a later corrected re-send of a rejected
    row is not lost.
    """
    checks = _row_checks()
    check_case = " ".join(f"WHEN {cond} THEN {lit(name)}" for name, cond, _ in checks)
    # Keyed on the check already found, so only rejected rows pay for building the text.
    reason_case = " ".join(
        f"WHEN {lit(name)} THEN {lit(name)} || ' ' || {_quoted_value(col)}"
        for name, _, col in checks
        if col
    )
    rates = ", ".join(f"({lit(cur)}, {rate!r})" for cur, rate in EUR_RATES.items())
    con.execute(
        f"""
        CREATE TABLE checked AS
        WITH typed AS (
            SELECT r.*,
                   try_strptime(r."timestamp", {lit(TIMESTAMP_FORMAT)}) AS ts_,
                   TRY_CAST(r.amount AS DOUBLE) AS amount_,
                   TRY_CAST(r.latitude AS DOUBLE) AS latitude_,
                   TRY_CAST(r.longitude AS DOUBLE) AS longitude_,
                   rates.rate AS rate_
            FROM raw r LEFT JOIN (VALUES {rates}) AS rates(currency, rate) USING (currency)
        ), first_pass AS (
            SELECT *, CASE {check_case} END AS check_,
                   {{'file': source_file, 'line': source_line}} AS position_
            FROM typed
        ), duplicated AS (
            SELECT transaction_id, min(position_) AS first_position
            FROM first_pass WHERE check_ IS NULL
            GROUP BY transaction_id HAVING count(*) > 1
        )
        SELECT p.* EXCLUDE (check_, position_),
               CASE WHEN p.position_ > d.first_position THEN {lit(_DUPLICATE)}
                    ELSE p.check_ END AS "check",
               CASE WHEN p.position_ > d.first_position
                    THEN {lit(_DUPLICATE)} || ' (first seen in ' || d.first_position.file
                         || ' line ' || d.first_position.line || ')'
                    WHEN p.check_ IS NOT NULL
                    THEN CASE p.check_ {reason_case} ELSE p.check_ END
               END AS reason
        FROM first_pass p
        LEFT JOIN duplicated d ON p.check_ IS NULL AND p.transaction_id = d.transaction_id
        """
    )
    con.execute("DROP TABLE raw")  # free memory early: everything lives on in `checked`


def build_clean_and_quarantine(con: duckdb.DuckDBPyConnection) -> None:
    """Tables `clean_transactions` (typed, + amount_eur) and `quarantine` (text + reason)."""
    con.execute(
        f"""
        CREATE TABLE clean_transactions AS
        SELECT transaction_id, ts_ AS "timestamp", customer_id, merchant_id, merchant_category,
               amount_ AS amount, currency, channel, device_id,
               latitude_ AS latitude, longitude_ AS longitude,
               CAST({ident(LABEL)} AS BIGINT) AS {ident(LABEL)},
               amount_ * rate_ AS amount_eur
        FROM checked WHERE "check" IS NULL
        ORDER BY "timestamp", transaction_id
        """
    )
    raw_columns = ", ".join(ident(c) for c in RAW_COLUMNS)
    null_columns = ", ".join(f"CAST(NULL AS VARCHAR) AS {ident(c)}" for c in RAW_COLUMNS)
    con.execute(
        f"""
        CREATE TABLE quarantine AS
        SELECT {raw_columns}, source_file, source_line, "check", reason
        FROM checked WHERE "check" IS NOT NULL
        UNION ALL
        SELECT {null_columns}, source_file, source_line, {lit(_MALFORMED_LINE)} AS "check",
               {lit(_MALFORMED_LINE)} || ' (' || replace(error_type, '_', ' ') || '): '''
                 || left(csv_line, 120) || '''' AS reason
        FROM raw_rejects
        ORDER BY source_file, source_line
        """
    )
    con.execute("DROP TABLE checked")
