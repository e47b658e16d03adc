"""The generator's dirt: drops broken the way real ones are.

A ``params.dirty_rate`` fraction of rows gets exactly one defect (a duplicate, the same id
with other content, an empty field, a malformed amount or timestamp, an unknown currency); a
similar fraction arrives a day late (valid rows, yesterday's timestamps in today's drop); and
rows are written in arrival order, not sorted by time.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from hearth.data.population import Day, IntArray, Rows
from hearth.schema import RAW_COLUMNS

# Kinds of dirty rows and their shares of the dirty budget.
_DIRT_MIX: dict[str, float] = {
    "duplicate": 0.2,  # the same row sent twice
    "conflict": 0.15,  # same transaction id, different content
    "missing": 0.25,  # an empty field
    "bad_amount": 0.15,
    "bad_currency": 0.1,
    "bad_timestamp": 0.15,
}
_UNKNOWN_CURRENCIES = ("XXX", "ZZZ", "QQQ")
_LATE_SHARE = 1.0  # late-arriving rows per dirty row (they are valid, not dirty)


@dataclass(frozen=True)
class Dirt:
    """Which rows of a day get which defect (indices into the clean rows)."""

    duplicate: IntArray
    conflict: IntArray
    missing: IntArray
    bad_amount: IntArray
    bad_currency: IntArray
    bad_timestamp: IntArray

    @property
    def count(self) -> int:
        return sum(int(getattr(self, f.name).size) for f in fields(self))


def plan_dirt(rng: np.random.Generator, n: int, dirty_rate: float) -> Dirt:
    """Distinct rows for every defect, so each dirty row has exactly one."""
    total = min(int(rng.binomial(n, dirty_rate)), n) if n else 0
    counts = rng.multinomial(total, list(_DIRT_MIX.values()))
    rows = rng.choice(n, size=total, replace=False) if total else np.zeros(0, np.int64)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    parts = {k: np.sort(rows[bounds[i] : bounds[i + 1]]) for i, k in enumerate(_DIRT_MIX)}
    return Dirt(**parts)


def resent(rng: np.random.Generator, rows: Rows, dirt: Dirt) -> Rows:
    """Duplicates to append: exact copies and same-id copies with changed content."""
    exact = rows.take(dirt.duplicate)
    conflict = rows.take(dirt.conflict)
    conflict.amount = np.round(conflict.amount * rng.uniform(0.5, 1.5, len(conflict)), 2) + 0.01
    conflict.ts = conflict.ts + rng.integers(1, 600, len(conflict))
    return Rows.concat([exact, conflict])


def make_late(day: Day, rows: Rows, dirty_rate: float) -> None:
    """Move some transactions to the previous evening: they arrive in today's drop, late."""
    late = day.rng.random(len(rows)) < dirty_rate * _LATE_SHARE
    rows.ts[late] = day.start - day.rng.integers(1, 2 * 3600, int(late.sum()))


def arrival_order(rng: np.random.Generator, rows: Rows, resent: Rows, start: int) -> pa.Array:
    """Row order in the drop: by arrival, a little after the event, resends later still.

    So a drop is not sorted by timestamp, and yesterday's late rows come first.
    """
    arrival = np.concatenate([rows.ts, resent.ts]) + rng.exponential(90.0, len(rows) + len(resent))
    arrival[len(rows) :] += rng.exponential(1800.0, len(resent))
    early = arrival < start
    arrival[early] = start + rng.exponential(600.0, int(early.sum()))
    return pa.array(np.argsort(arrival, kind="stable"))


# -- broken fields (on the text columns) -------------------------------------------------------
def corrupt(rng: np.random.Generator, cols: dict[str, pa.Array], dirt: Dirt) -> None:
    """Break fields in place: empty values, malformed amounts/timestamps, unknown currencies."""
    which = rng.integers(0, len(RAW_COLUMNS), dirt.missing.size)
    for i, name in enumerate(RAW_COLUMNS):
        rows = dirt.missing[which == i]
        cols[name] = _replace(cols[name], rows, pa.array([""] * rows.size, pa.string()))
    amounts = _bad_amounts(rng, _at(cols["amount"], dirt.bad_amount))
    cols["amount"] = _replace(cols["amount"], dirt.bad_amount, amounts)
    unknown = np.array(_UNKNOWN_CURRENCIES)[rng.integers(0, 3, dirt.bad_currency.size)]
    cols["currency"] = _replace(cols["currency"], dirt.bad_currency, pa.array(unknown))
    timestamps = _bad_timestamps(rng, _at(cols["timestamp"], dirt.bad_timestamp))
    cols["timestamp"] = _replace(cols["timestamp"], dirt.bad_timestamp, timestamps)


def _at(column: pa.Array, idx: IntArray) -> pa.Array:
    return column.take(pa.array(idx, pa.int64()))


def _replace(column: pa.Array, idx: IntArray, values: pa.Array) -> pa.Array:
    """`column` with the rows at sorted `idx` replaced by `values`."""
    if idx.size == 0:
        return column
    mask = np.zeros(len(column), dtype=bool)
    mask[idx] = True
    return pc.replace_with_mask(column, pa.array(mask), values)


def _one_of(rng: np.random.Generator, *variants: pa.Array) -> pa.Array:
    """Row by row, one of the equally long `variants`, picked at random."""
    choice = pa.array(rng.integers(0, len(variants), len(variants[0])), pa.int8())
    return pc.choose(choice, *variants)


def _bad_amounts(rng: np.random.Generator, good: pa.Array) -> pa.Array:
    """Malformed versions of the well-formed amounts `good`."""
    n = len(good)
    # A decimal comma must be quoted to keep the row's field count.
    comma = pc.binary_join_element_wise('"', pc.replace_substring(good, ".", ","), '"', "")
    constant = [pa.array([v] * n, pa.string()) for v in ("abc", "-", "1e999")]
    negative = pc.binary_join_element_wise("-", good, "")
    return _one_of(rng, comma, *constant, negative)


def _bad_timestamps(rng: np.random.Generator, good: pa.Array) -> pa.Array:
    """Malformed versions of the well-formed timestamps `good`."""

    def part(start: int, stop: int | None = None) -> pa.Array:
        return pc.utf8_slice_codeunits(good, start, stop if stop is not None else 99)

    return _one_of(
        rng,
        pc.binary_join_element_wise(part(0, 11), "25", part(13), ""),  # hour 25
        pc.binary_join_element_wise(part(0, 5), "13", part(7), ""),  # month 13
        pc.binary_join_element_wise(  # a local format: 31/01/2026 10:00
            part(8, 10), "/", part(5, 7), "/", part(0, 4), " ", part(11, 16), ""
        ),
        part(0, 16),  # no seconds
        pa.array(["not a timestamp"] * len(good), pa.string()),
    )
