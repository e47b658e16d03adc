"""The online feature store: the latest `CustomerState` per customer, for serving.

Two backends behind one `OnlineStore` protocol, chosen by `Settings.store_backend`:

- ``sqlite`` (default, embedded): one file at `Settings.online_store_path`, WAL mode, so
  readers never block the writer and several serving processes may share it;
- ``redis``: a Redis server at `Settings.redis_url`, one string key per customer
  (``hearth:cust:<customer_id>``), for replicas on several machines.

States are stored in `hearth.features.state_codec`'s portable binary form (version 2; the
JSON of version 1 is still read, so an upgrade needs no re-materialisation). `observe` is
the serving hot path: it reads a customer's state, computes the features of the incoming
transaction from the state *before* it, applies the transaction and writes the state back,
atomically, so concurrent requests for one customer never lose an update: an optimistic
compare-and-set in a bounded retry loop on both backends (SQLite: one conditional
``UPDATE``/``INSERT OR IGNORE``; Redis: ``WATCH``/``MULTI`` from `hearth.storage`).

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

import asyncio
import bisect
import math
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

import pandas as pd

from hearth.config import Settings
from hearth.features import state_codec
from hearth.features.batch_states import build_states
from hearth.features.definitions import HISTORY_HORIZON
from hearth.features.online import (
    CustomerState,
    InputDomain,
    Transaction,
    answer,
    id_problem,
    observe_state,
    window_seconds,
)
from hearth.storage.sqlite import SQLiteFile, WouldBlock

if TYPE_CHECKING:
    from redis.client import Pipeline

    from hearth.storage.redis import Update

REDIS_KEY_PREFIX = "hearth:cust:"
MATERIALIZE_CHUNK = 1000
CHECKPOINT_EVERY_S = 0.25  # the SQLite store's background WAL checkpoints
_HORIZON_S = window_seconds(HISTORY_HORIZON)
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

Features = dict[str, float | str]
Connect = Callable[[], AbstractContextManager[sqlite3.Connection]]  # SQLiteFile.read or .nowait


class StoreError(RuntimeError):
    """The online store cannot answer; the message says which customer or backend and why."""


class StoreUnavailable(StoreError):
    """The backend is unreachable, locked for too long, or failing (a service answers 503)."""


class InvalidState(ValueError):
    """A state the store refuses to write (a bad customer id, a value out of the domain)."""


def check_states(states: Mapping[str, CustomerState], domain: InputDomain) -> None:
    """Refuse (InvalidState) to write any of `states` when one of them is out of `domain`:
    the store's own check, whoever calls it (defence in depth behind the gate)."""
    for customer_id, state in states.items():
        problems = domain.state_problems(state)
        if (bad_id := id_problem(customer_id)) is not None:
            problems.insert(0, f"customer_id {bad_id}")
        if problems:
            raise InvalidState(f"state of customer {customer_id!r}: {'; '.join(problems)}")


class MaterializeError(FileNotFoundError):
    """An ETL output the store is built from is missing; the message names it."""


class OnlineStore(Protocol):
    """Latest state per customer; every method is safe to call from several threads."""

    backend: str  # "sqlite" | "redis"

    def get(self, customer_id: str) -> CustomerState | None:
        """The stored state, or None for an unknown customer."""
        ...

    def put_many(self, states: Mapping[str, CustomerState]) -> int:
        """Write (replace) these customers' states; returns how many were written."""
        ...

    def observe(self, txn: Transaction) -> tuple[Features, bool]:
        """Atomically: features of `txn` from the state before it, then apply and store it.

        Returns (features, cold_start); cold_start means the customer had no stored state.
        A retry (transaction_id already in the kept history) stores nothing and returns the
        first answer again (`hearth.features.online.answer`).
        """
        ...

    def peek(self, txn: Transaction) -> tuple[Features, bool]:
        """The features `observe` would return, without updating the state."""
        ...

    def count(self) -> int:
        """Number of customers with a stored state."""
        ...

    def ping(self) -> bool:
        """True when the backend answers; False (never an exception) when it does not."""
        ...

    def clear(self) -> None:
        """Remove every customer state (and nothing else)."""
        ...

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


# -- serialisation -------------------------------------------------------------------------
def encode_state(state: CustomerState) -> bytes:
    """The stored form of `state` (`state_codec`, version 2), history pruned to
    HISTORY_HORIZON before its newest entry.

    `update_state` already prunes; this also bounds states written from elsewhere
    (hand-built, older code) without changing any feature: no window looks further back.
    The state object itself is left untouched. A non-finite amount or home is refused
    (ValueError), as are merchants or ids that hold the codec's separator.

    Binary columns, not JSON: every observe decodes and re-encodes the customer's whole
    state, and JSON's per-entry lists (`to_dict`'s transposition, `from_dict`'s conversions
    per column) made CPU per request grow with history length, which failed the soak where
    customers transact every few seconds. CPU µs per call, JSON → version 2, measured in one
    run (best of 6 alternating runs, the 2-core machine shared with other work):

    ==========  ===========  ===========  =========================
    entries     encode       decode       whole SQLiteStore.observe
    ==========  ===========  ===========  =========================
    0           2.2 → 2.6    3.6 → 4.6    121 → 129
    40          11 → 6.6     21 → 9.4     176 → 173
    220         45 → 19      98 → 28      351 → 234
    500         98 → 38      364 → 58     764 → 348
    ==========  ===========  ===========  =========================

    An observe's growth from 0 to 500 entries falls from ~640 to ~220 µs; what is left is
    mostly making the 2n merchant and id strings, the id set and the features themselves.
    """
    # sum first (C, a few ns per entry): any NaN or infinity makes it non-finite; only then
    # the exact check, since finite amounts can also add up past the largest float.
    amounts = state.amounts
    finite = math.isfinite(sum(amounts)) or all(map(math.isfinite, amounts))
    if not (finite and all(map(math.isfinite, state.home or ()))):
        raise ValueError("a customer state with a non-finite amount or home is not stored")
    keep_from = 0
    if state.times:
        newest = max(state.times[-1], state.last_timestamp or state.times[-1])
        keep_from = bisect.bisect_left(state.times, newest - _HORIZON_S)
    return state_codec.pack(state, keep_from)


def decode_state(raw: str | bytes, customer_id: str) -> CustomerState:
    """Parse a stored state, version 2 or version 1 JSON; a corrupt, truncated or
    foreign-version state is a StoreError naming the customer, not a crash."""
    try:
        return state_codec.unpack(raw)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise StoreError(f"stored state of customer {customer_id!r} is unreadable: {exc}") from exc


# -- SQLite --------------------------------------------------------------------------------
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
class RedisStore:
    """One value (`encode_state`'s bytes) per customer under `prefix`; the client's pool is
    thread-safe.

    The client is `hearth.storage.redis.connect`'s: short timeouts and one quick reconnect
    (a pooled connection may be stale after a Redis restart), so a dead server costs a
    request milliseconds. `observe` is `hearth.storage.redis.compare_and_set` on the
    customer's key.
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        prefix: str = REDIS_KEY_PREFIX,
        max_attempts: int = 100,
        timeout_s: float = 0.5,
        domain: InputDomain | None = None,
    ) -> None:
        # lazy: SQLite users (the default) never pay for loading redis-py.
        from hearth.storage import redis as redis_storage

        self._storage = redis_storage
        self.url = url
        self.prefix = prefix
        self.max_attempts = max_attempts
        self.domain = domain or InputDomain()
        self._where = f"Redis online store {redacted_url(url)}"
        self._timeout_s = timeout_s
        self._client = redis_storage.connect(url, timeout_s=timeout_s)
        self._async: tuple[asyncio.AbstractEventLoop, Any] | None = None  # observe_async's

    def _key(self, customer_id: str) -> str:
        return self.prefix + customer_id

    def _translate(self) -> AbstractContextManager[None]:
        return self._storage.translate_errors(StoreUnavailable, self._where)

    def _read(self, customer_id: str) -> CustomerState | None:
        with self._translate():
            raw = self._client.get(self._key(customer_id))
        return decode_state(raw, customer_id) if raw is not None else None

    def get(self, customer_id: str) -> CustomerState | None:
        return self._read(customer_id)

    def put_many(self, states: Mapping[str, CustomerState]) -> int:
        if not states:
            return 0
        check_states(states, self.domain)
        payload = {self._key(cid): encode_state(state) for cid, state in states.items()}
        with self._translate():
            self._client.mset(payload)
        return len(payload)

    def observe(self, txn: Transaction) -> tuple[Features, bool]:
        self.domain.check(txn)  # InvalidTransaction: nothing out of the domain is written
        key = self._key(txn.customer_id)
        return self._storage.compare_and_set(
            self._client,
            [key],
            partial(self._plan_observe, key, txn),
            error=StoreUnavailable,
            where=self._where,
            max_attempts=self.max_attempts,
        )

    async def observe_async(self, txn: Transaction) -> tuple[Features, bool]:
        """`observe` from an event loop, which it never blocks (`compare_and_set_async`)."""
        self.domain.check(txn)
        return await self._storage.compare_and_set_async(
            self._loop_client(),
            self._key(txn.customer_id),
            partial(self._plan, txn),
            error=StoreUnavailable,
            where=self._where,
            max_attempts=self.max_attempts,
        )

    def _loop_client(self) -> Any:
        """The asyncio client of the running loop (a new one when the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._async is None or self._async[0] is not loop:
            self._async = (loop, self._storage.connect_async(self.url, timeout_s=self._timeout_s))
        return self._async[1]

    def _plan(
        self, txn: Transaction, raw: bytes | str | None
    ) -> tuple[tuple[Features, bool], bytes | None]:
        """The answer to `txn` on the stored bytes `raw`, and the bytes to store (None: none;
        a retry writes nothing: its answer came from one GET, a consistent read)."""
        seen = observe_state(decode_state(raw, txn.customer_id) if raw is not None else None, txn)
        after = None if seen.after is None else encode_state(seen.after)
        return (seen.features, seen.cold_start), after

    def _plan_observe(
        self, key: str, txn: Transaction, pipe: Pipeline
    ) -> Update[tuple[Features, bool]]:
        """One optimistic attempt, on the state read while `key` is watched."""
        reply, state = self._plan(txn, pipe.get(key))
        if state is None:
            return self._storage.Update(reply)
        return self._storage.Update(reply, lambda p: p.set(key, state))

    def peek(self, txn: Transaction) -> tuple[Features, bool]:
        return answer(txn, self._read(txn.customer_id))

    def _keys(self) -> Iterator[Any]:
        # SCAN, not KEYS: it never blocks the server, and only our prefix is touched.
        return self._client.scan_iter(match=self.prefix + "*", count=1000)

    def count(self) -> int:
        with self._translate():
            return sum(1 for _ in self._keys())

    def ping(self) -> bool:
        return self._storage.ping(self._client)

    def clear(self) -> None:
        with self._translate():
            batch: list[Any] = []
            for key in self._keys():
                batch.append(key)
                if len(batch) >= 500:
                    self._client.unlink(*batch)
                    batch.clear()
            if batch:
                self._client.unlink(*batch)

    def close(self) -> None:
        self._client.close()
        if self._async is not None:  # its sockets belong to its loop: closed there
            (loop, client), self._async = self._async, None
            if not loop.is_closed():
                loop.call_soon_threadsafe(lambda: loop.create_task(client.aclose()))


# -- opening and filling -------------------------------------------------------------------
def redacted_url(url: str) -> str:
    """`url` with any password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def store_location(settings: Settings) -> str:
    """Where `open_store(settings)` keeps its data, safe to print."""
    if settings.store_backend == "redis":
        return redacted_url(settings.redis_url)
    return str(settings.online_store_path)


def open_store(settings: Settings) -> OnlineStore:
    """The online store chosen by `settings.store_backend`; close it when done."""
    domain = InputDomain.from_settings(settings)
    if settings.store_backend == "redis":
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
