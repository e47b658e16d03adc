"""Offline history aggregates by sorted arrays: what `build_history_sql` computes, faster.

DuckDB's framed windows cost a segment-tree lookup per row and aggregate (its windowed
DISTINCT count a merge-sort tree), most of the ETL's time. Here the clean transactions come
out of DuckDB once, sorted by (customer, timestamp), in chunks of whole customers; in that
order every window is a slice ``[lo, hi)`` found by binary search, counts are ``hi - lo``,
sums are differences of per-customer prefix sums, and the distinct merchants are the rows
of the slice whose previous visit to the same merchant lies before it. The chunks go back
into DuckDB and are sorted by position, so `feature_sql` reads the same table as before.

Semantics are `hearth.features.definitions`' (the SQL's frames): a window holds the
customer's transactions with ``timestamp - w <= t_prior < timestamp`` (whole seconds), so
same-second transactions never see each other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import duckdb
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from hearth.features.definitions import AVG_WINDOW, MERCHANT_WINDOW, WINDOWS
from hearth.features.online import window_seconds

# Rows per chunk read from DuckDB: bounds the memory of the arrays below (~100 B a row).
CHUNK_ROWS = 1 << 20

_I64 = npt.NDArray[np.int64]


def _sorted_sql(transactions: str, customers: str) -> str:
    return f"""
SELECT t.rowid AS pos, t.customer_id, epoch_us(t."timestamp") // 1000000 AS ts,
       t.amount_eur, t.merchant_id, t.device_id, c.home_latitude, c.home_longitude
FROM {transactions} AS t LEFT JOIN {customers} AS c USING (customer_id)
ORDER BY t.customer_id, t."timestamp"
"""


def _segmented_cumsum(values: npt.NDArray[np.float64], rank: _I64) -> npt.NDArray[np.longdouble]:
    """Inclusive prefix sums restarting at each customer (``rank`` = index within it).

    Extended precision and per-customer restarts keep ``P[hi] - P[lo]`` within a few units
    of 1e-18 of the customer's total, where one running float64 sum over millions of rows
    would lose small windows beside large totals."""
    out = values.astype(np.longdouble)
    step = 1
    longest = int(rank.max(initial=0)) + 1
    while step < longest:
        add = out[:-step].copy()
        add[rank[step:] < step] = 0
        out[step:] += add
        step *= 2
    return out


def _distinct_before(prev: _I64, lo: _I64, hi: _I64) -> _I64:
    """For each row, the rows j in [lo, hi) whose previous same-merchant row is < lo:
    the distinct merchants of the slice. Cost: the total length of the slices."""
    count = np.zeros(len(lo), dtype=np.int64)
    active = np.flatnonzero(hi > lo)
    j = hi[active] - 1
    while len(active):
        count[active] += prev[j] < lo[active]
        j -= 1
        keep = j >= lo[active]
        active, j = active[keep], j[keep]
    return count


def _codes(column: pa.ChunkedArray) -> _I64:
    return np.asarray(pc.dictionary_encode(column).combine_chunks().indices, dtype=np.int64)


def _previous_same(customer: _I64, code: _I64) -> tuple[_I64, _I64]:
    """(previous row with the same customer and code, or -1; first row of that pair)."""
    key = customer * (int(code.max(initial=0)) + 1) + code
    order = np.argsort(key, kind="stable")
    same = key[order[1:]] == key[order[:-1]]
    prev = np.full(len(key), -1, dtype=np.int64)
    prev[order[1:][same]] = order[:-1][same]
    first = np.empty(len(key), dtype=np.int64)
    starts = np.concatenate(([True], ~same))
    first[order] = order[np.flatnonzero(starts)][np.cumsum(starts) - 1]
    return prev, first


def _exclusive_prefix(amount: npt.NDArray[np.float64], rank: _I64) -> npt.NDArray[np.longdouble]:
    """``E[i]``: the sum of the customer's rows before row i; a slice [lo, hi) of one
    customer sums to ``E[hi] - E[lo]``."""
    inclusive = _segmented_cumsum(amount, rank)
    exclusive = np.zeros(len(amount), dtype=np.longdouble)
    exclusive[1:] = inclusive[:-1]
    exclusive[rank == 0] = 0
    return exclusive


def history_chunk(chunk: pa.Table) -> pa.Table:
    """The history columns for a chunk of whole customers sorted by (customer, timestamp)."""
    n = chunk.num_rows
    ids = chunk.column("customer_id").combine_chunks()
    new_customer = np.ones(n, dtype=bool)
    if n > 1:
        new_customer[1:] = np.asarray(pc.not_equal(ids[1:], ids[:-1]))
    customer = np.cumsum(new_customer) - 1
    start = np.flatnonzero(new_customer)[customer]
    rank = np.arange(n, dtype=np.int64) - start
    ts = np.asarray(chunk.column("ts"), dtype=np.int64)
    # (customer, seconds since the chunk's first second) as one sorted key.
    offset = ts - int(ts.min())
    key = (customer << 40) + offset
    hi = np.searchsorted(key, key, side="left")  # the customer's first row of this second
    prefix = _exclusive_prefix(np.asarray(chunk.column("amount_eur"), dtype=np.float64), rank)

    def window(seconds: int) -> _I64:  # first row with t_prior >= timestamp - seconds
        return np.searchsorted(key, (customer << 40) + np.maximum(offset - seconds, 0), "left")

    def summed(lo: _I64) -> pa.Array:
        return pa.array((prefix[hi] - prefix[lo]).astype(np.float64))

    out: dict[str, pa.Array | pa.ChunkedArray] = {"pos": chunk.column("pos")}
    for name, length in WINDOWS.items():
        lo = window(window_seconds(length))
        out[f"n_tx_{name}"] = pa.array(hi - lo)
        out[f"amount_sum_{name}"] = summed(lo)
    lo = window(window_seconds(AVG_WINDOW))
    out["n_avg"] = pa.array(hi - lo)
    out["sum_avg"] = summed(lo)
    prev_merchant, _ = _previous_same(customer, _codes(chunk.column("merchant_id")))
    lo = window(window_seconds(MERCHANT_WINDOW))
    out["n_merchants_7d"] = pa.array(_distinct_before(prev_merchant, lo, hi))
    out["last_ts"] = _timestamps(ts[np.maximum(hi - 1, 0)], hi > start)
    _, first_device = _previous_same(customer, _codes(chunk.column("device_id")))
    out["device_first_seen"] = _timestamps(ts[first_device], None)
    out["home_latitude"] = chunk.column("home_latitude")
    out["home_longitude"] = chunk.column("home_longitude")
    return pa.table(out)


def _timestamps(seconds: _I64, valid: npt.NDArray[np.bool_] | None) -> pa.Array:
    mask = None if valid is None else ~valid
    return pa.array(seconds * 1_000_000, type=pa.timestamp("us"), mask=mask)


def _customer_chunks(reader: pa.RecordBatchReader) -> Iterator[pa.Table]:
    """Tables of whole customers: a customer cut by a batch boundary waits for the next."""
    carry: pa.Table | None = None
    for batch in reader:
        table = pa.Table.from_batches([batch])
        if carry is not None:
            table = pa.concat_tables([carry, table])
        ids = table.column("customer_id")
        same = np.asarray(pc.equal(ids, ids[-1]).combine_chunks())
        cut = int(np.argmax(same))  # the first row of the last customer
        carry = table.slice(cut)
        if cut:
            yield table.slice(0, cut)
    if carry is not None and carry.num_rows:
        yield carry


def _in_threads(chunks: Iterator[pa.Table], threads: int) -> Iterator[pa.Table]:
    """`history_chunk` of each chunk, in order, `threads` at a time (numpy and Arrow release
    the GIL in the heavy calls); at most `threads` chunks are held beyond the one yielded."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[Future[pa.Table]] = deque()
        for chunk in chunks:
            pending.append(pool.submit(history_chunk, chunk))
            if len(pending) >= threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def build_history_table(
    con: duckdb.DuckDBPyConnection,
    transactions: str,
    customers: str,
    table: str,
    threads: int = 1,
) -> None:
    """Create `table`: `build_history_sql`'s columns for every row of `transactions`, in
    its order (``pos`` = rowid), computed chunk by chunk from the customer-sorted rows."""
    # Own connections to the same database: one streams the sorted rows, one writes.
    reader, writer = con.cursor(), con.cursor()
    batches = reader.sql(_sorted_sql(transactions, customers)).to_arrow_reader(CHUNK_ROWS)
    staging = f"{table}_unsorted"
    created = False
    for part in _in_threads(_customer_chunks(batches), threads):
        writer.register("history_part", part)
        if created:
            writer.execute(f"INSERT INTO {staging} FROM history_part")
        else:
            writer.execute(f"CREATE TABLE {staging} AS FROM history_part")
            created = True
        writer.unregister("history_part")
    batches.close()
    reader.close()
    writer.execute(f"CREATE TABLE {table} AS FROM {staging} ORDER BY pos")
    writer.execute(f"DROP TABLE {staging}")
    writer.close()
