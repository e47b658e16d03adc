"""The ETL's history by sorted arrays equals the SQL windows that define it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest

from hearth.data.etl import run_etl
from hearth.features import history
from hearth.features.history import build_history_table
from hearth.features.offline import build_history_sql
from tests.unit.test_features_parity import PARAMS, edge_case_rows, write_raw


@pytest.mark.parametrize(("chunk_rows", "threads"), [(7, 2), (1 << 20, 1)])
def test_history_table_equals_the_sql_windows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_rows: int, threads: int
) -> None:
    homes = [f"C{i},{10 * i - 60},{20 * i - 100},2025-01-01" for i in range(12)]
    write_raw(tmp_path / "raw", edge_case_rows(), [*homes, "NOHOME,,,2025-01-01"])
    processed = tmp_path / "processed"
    run_etl(tmp_path / "raw", processed, tmp_path / "quarantine", PARAMS)
    con = duckdb.connect()
    con.execute(f"CREATE TABLE tx AS FROM read_parquet('{processed / 'transactions.parquet'}')")
    con.execute(f"CREATE TABLE cu AS FROM read_parquet('{processed / 'customers.parquet'}')")
    # Small chunks: customers cut by a chunk boundary are carried over whole.
    monkeypatch.setattr(history, "CHUNK_ROWS", chunk_rows)
    build_history_table(con, "tx", "cu", "fast", threads)
    fast = con.execute("FROM fast ORDER BY pos").df()
    sql = con.execute(f"FROM ({build_history_sql('tx', 'cu')}) ORDER BY pos").df()
    assert len(fast) == len(sql) > 500
    exact = [c for c in sql.columns if not c.startswith(("amount_sum", "sum_"))]
    pd.testing.assert_frame_equal(fast[exact], sql[exact])
    # Sums add in another order (prefix differences in extended precision).
    pd.testing.assert_frame_equal(fast, sql, check_exact=False, rtol=1e-12)
