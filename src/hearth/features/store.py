"""The online feature store: the latest `CustomerState` per customer, for serving.

Two backends behind one `OnlineStore` protocol, chosen by `Settings.store_backend`:

- ``sqlite`` (default, embedded): one file at `Settings.online_store_path`, WAL mode, so
  readers never block the writer and several serving processes may share it;
- ``redis``: a Redis server at `Settings.redis_url`, one string key per customer
  (``hearth:cust:<customer_id>``), for replicas on several machines
  (`hearth.features.store_redis`).

States are stored in `hearth.features.state_codec`'s portable binary form (version 2; the
JSON of version 1 is still read, so an upgrade needs no re-materialisation). `observe` is
the serving hot path: it reads a customer's state, computes the features of the incoming
transaction from the state *before* it, applies the transaction and writes the state back,
atomically, so concurrent requests for one customer never lose an update: an optimistic
compare-and-set in a bounded retry loop on both backends (SQLite: one conditional
``UPDATE``/``INSERT OR IGNORE``; Redis: ``WATCH``/``MULTI`` from `hearth.storage`, or
from an event loop a ``GET`` and a set-if-unchanged script).

`observe` is idempotent per transaction_id: the state keeps the ids of its history, so a
client retrying a transaction (after a 503 + Retry-After, a timeout) changes nothing and
gets the first answer again, instead of inflating the customer's velocity features. The
rules, and the two cases where a retry's features can differ from its first answer, are in
`hearth.features.online.answer`. The offline ETL quarantines repeated ids too, so online
and offline count each transaction once. Ids are per customer: an id reused by another
customer is not recognised.

`materialize` fills a store from the ETL's Parquet outputs, so a customer seen in the batch
data is never a cold start online. Backend failures surface as `StoreUnavailable` (a
`StoreError`), which a service maps to 503; `ping` never raises.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from hearth.config import Settings
from hearth.features.batch_states import build_states
from hearth.features.online import (
    CustomerState,
    InputDomain,
    Transaction,
    answer,
    observe_state,
)

# Re-exported: what every store shares, imported from here by its callers.
from hearth.features.store_base import Features as Features
from hearth.features.store_base import InvalidState as InvalidState
from hearth.features.store_base import OnlineStore as OnlineStore
from hearth.features.store_base import StoreError as StoreError
from hearth.features.store_base import StoreUnavailable as StoreUnavailable
from hearth.features.store_base import check_states as check_states
from hearth.features.store_base import decode_state as decode_state
from hearth.features.store_base import encode_state as encode_state
from hearth.features.store_base import redacted_url as redacted_url
from hearth.storage.sqlite import SQLiteFile, WouldBlock

MATERIALIZE_CHUNK = 1000
CHECKPOINT_EVERY_S = 0.25  # the SQLite store's background WAL checkpoints
# Columns build_states reads; reading only these keeps materialize light on wide files.
_TRANSACTION_COLUMNS = [
    "transaction_id",
    "timestamp",
    "customer_id",
    "merchant_id",
    "device_id",
    "amount",
    "currency",
]
_CUSTOMER_COLUMNS = ["customer_id", "home_latitude", "home_longitude"]

Connect = Callable[[], AbstractContextManager[sqlite3.Connection]]  # SQLiteFile.read or .nowait


class MaterializeError(FileNotFoundError):
    """An ETL output the store is built from is missing; the message names it."""


_UPSERT = "INSERT OR REPLACE INTO customer_state (customer_id, state) VALUES (?, ?)"
_SELECT = "SELECT state FROM customer_state WHERE customer_id = ?"
# The compare-and-set of `observe`: each changes a row only if nobody wrote it since (the
# same bytes as read are the same state, so the state computed from them is still right).
_INSERT_NEW = "INSERT OR IGNORE INTO customer_state (customer_id, state) VALUES (?, ?)"
_SWAP = "UPDATE customer_state SET state = ? WHERE customer_id = ? AND state = ?"


class SQLiteStore:
    """One SQLite file (`hearth.storage.sqlite.SQLiteFile`: WAL, one locked connection).

    `observe` is optimistic, like the Redis store's: it reads the customer's state, computes
    the new one with no lock held, and writes it with one compare-and-set statement (an
    ``UPDATE … WHERE state = <the bytes read>``, or ``INSERT OR IGNORE`` for a new customer),
    retrying from the read when another writer got there first. Each statement commits on
    its own inside one C call, so SQLite's write lock is never held across Python code.
    (With ``BEGIN IMMEDIATE`` around read, compute and write, the holder waited for the GIL
    inside its transaction; under `hearth serve --workers 2` at c=32 the other worker slept
    in SQLite's busy handler ~40 % of the time, leaving 0.5-0.6 of the 2 cores idle.)

    WAL checkpoints run in a thread of their own (`hearth.storage.sqlite.Checkpointer`): in
    a commit, one observe in ~300 waited 5-47 ms holding the lock, and every observe with it.
    """

    backend = "sqlite"

    def __init__(
        self,
        path: Path,
        timeout_s: float = 5.0,
        domain: InputDomain | None = None,
        max_attempts: int = 100,
    ) -> None:
        self.path = path
        self.domain = domain or InputDomain()
        self.max_attempts = max_attempts
        # synchronous=NORMAL: in WAL mode it survives a process crash and skips an fsync per
        # commit; a power cut may lose the last few updates, which the next materialize
        # restores.
        self._db = SQLiteFile(
            path,
            name=f"SQLite online store {path}",
            error=StoreUnavailable,
            synchronous="NORMAL",
            timeout_s=timeout_s,
            checkpoint_every_s=CHECKPOINT_EVERY_S,
        )
        # States are bytes now (version 2) in a column declared TEXT, with no migration: a
        # column's TEXT affinity converts numbers only, a BLOB is kept as it is, so old rows
        # (TEXT, version 1 JSON) and new ones (BLOB) share the table and `decode_state`
        # reads both; files of either version keep one schema.
        self._db.script(
            "CREATE TABLE IF NOT EXISTS customer_state "
            "(customer_id TEXT PRIMARY KEY, state TEXT NOT NULL) WITHOUT ROWID"
        )

    def _raw(self, customer_id: str, connect: Connect) -> str | bytes | None:
        with connect() as conn:
            row = conn.execute(_SELECT, (customer_id,)).fetchone()
        return row[0] if row else None

    def get(self, customer_id: str) -> CustomerState | None:
        raw = self._raw(customer_id, self._db.read)
        return decode_state(raw, customer_id) if raw is not None else None

    def put_many(self, states: Mapping[str, CustomerState]) -> int:
        check_states(states, self.domain)
        rows = [(cid, encode_state(state)) for cid, state in states.items()]
        with self._db.transaction() as conn:
            conn.executemany(_UPSERT, rows)
        return len(rows)

    def observe(self, txn: Transaction) -> tuple[Features, bool]:
        seen = self._observe(txn, self._db.read, self.max_attempts)
        if seen is None:
            raise StoreUnavailable(
                f"{self._db.name}: customer {txn.customer_id!r} changed under each of "
                f"{self.max_attempts} attempts to observe transaction {txn.transaction_id!r}"
            )
        return seen

    def observe_nowait(self, txn: Transaction) -> tuple[Features, bool]:
        """`observe` for an event loop: `WouldBlock` (nothing written) where it would wait or
        retry, so the caller runs `observe` in a thread (`observe_from_loop` in serving)."""
        seen = self._observe(txn, self._db.nowait, 1)
        if seen is None:
            raise WouldBlock(f"{self._db.name}: customer {txn.customer_id!r} was written first")
        return seen

    def _observe(
        self, txn: Transaction, connect: Connect, attempts: int
    ) -> tuple[Features, bool] | None:
        """The compare-and-set loop; None when another writer won each of `attempts`."""
        self.domain.check(txn)  # InvalidTransaction: nothing out of the domain is written
        customer = txn.customer_id
        for _ in range(attempts):
            raw = self._raw(customer, connect)
            seen = observe_state(decode_state(raw, customer) if raw is not None else None, txn)
            if seen.after is None:  # a retry: the stored state stays as it is
                return seen.features, seen.cold_start
            state = encode_state(seen.after)
            sql, args = (
                (_INSERT_NEW, (customer, state)) if raw is None else (_SWAP, (state, customer, raw))
            )
            with connect() as conn:
                if conn.execute(sql, args).rowcount == 1:
                    return seen.features, seen.cold_start
        return None

    def peek(self, txn: Transaction) -> tuple[Features, bool]:
        return answer(txn, self.get(txn.customer_id))

    def count(self) -> int:
        with self._db.read() as conn:
            return int(conn.execute("SELECT count(*) FROM customer_state").fetchone()[0])

    def ping(self) -> bool:
        return self._db.ping()

    def clear(self) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM customer_state")

    def close(self) -> None:
        self._db.close()


# -- Redis ---------------------------------------------------------------------------------
# -- opening and filling -------------------------------------------------------------------
def store_location(settings: Settings) -> str:
    """Where `open_store(settings)` keeps its data, safe to print."""
    if settings.store_backend == "redis":
        return redacted_url(settings.redis_url)
    return str(settings.online_store_path)


def open_store(settings: Settings) -> OnlineStore:
    """The online store chosen by `settings.store_backend`; close it when done."""
    domain = InputDomain.from_settings(settings)
    if settings.store_backend == "redis":
        from hearth.features.store_redis import RedisStore  # lazy: redis-py

        return RedisStore(settings.redis_url, domain=domain)
    return SQLiteStore(settings.online_store_path, domain=domain)


def state_summary(customer_id: str, state: CustomerState) -> dict[str, Any]:
    """A readable, JSON-ready summary of a stored state (for `hearth features show`)."""

    def iso(seconds: int | None) -> str | None:
        return None if seconds is None else datetime.fromtimestamp(seconds, UTC).isoformat()

    return {
        "customer_id": customer_id,
        "home": list(state.home) if state.home else None,
        "last_transaction": iso(state.last_timestamp),
        "history": {
            "transactions": len(state.times),
            "oldest": iso(state.times[0] if state.times else None),
            "amount_eur": round(sum(state.amounts), 2),
            "merchants": len(set(state.merchants)),
        },
        "devices": {device: iso(first) for device, first in sorted(state.devices.items())},
        "state_bytes": len(encode_state(state)),
    }


@dataclass(frozen=True)
class MaterializeReport:
    """What one materialisation wrote."""

    customers: int
    transactions: int
    seconds: float
    backend: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read_processed(processed_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    paths = {
        "transactions": processed_dir / "transactions.parquet",
        "customers": processed_dir / "customers.parquet",
    }
    for path in paths.values():
        if not path.exists():
            raise MaterializeError(
                f"{path} is missing; run `hearth etl` first to build the processed data"
            )
    return (
        pd.read_parquet(paths["transactions"], columns=_TRANSACTION_COLUMNS),
        pd.read_parquet(paths["customers"], columns=_CUSTOMER_COLUMNS),
    )


def materialize(
    store: OnlineStore,
    processed_dir: Path,
    progress: Callable[[int, int], None] | None = None,
) -> MaterializeReport:
    """Replay the ETL's clean transactions into one state per customer and write them.

    Every customer of customers.parquet gets a state, with or without transactions, so a
    known customer is never a cold start online. States are upserted in chunks of
    MATERIALIZE_CHUNK (progress(done, total) after each); customers already in the store but
    absent from the data are kept. Live updates made after the ETL's data are overwritten
    for the customers written, so materialise before serving, not during.
    """
    started = time.perf_counter()
    transactions, customers = _read_processed(processed_dir)
    states = build_states(transactions, customers)
    items = list(states.items())
    if progress:
        progress(0, len(items))
    written = 0
    for start in range(0, len(items), MATERIALIZE_CHUNK):
        written += store.put_many(dict(items[start : start + MATERIALIZE_CHUNK]))
        if progress:
            progress(written, len(items))
    return MaterializeReport(
        customers=written,
        transactions=len(transactions),
        seconds=time.perf_counter() - started,
        backend=store.backend,
    )
