"""What every online store shares: the `OnlineStore` protocol, its errors, and the stored
form of a customer's state (`encode_state`, `decode_state`).

The backends are `hearth.features.store.SQLiteStore` (embedded, the default) and
`hearth.features.store_redis.RedisStore`; `hearth.features.store` opens the one Settings
choose and re-exports all of this.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from hearth.features import state_codec
from hearth.features.definitions import HISTORY_HORIZON
from hearth.features.online import (
    CustomerState,
    InputDomain,
    Transaction,
    id_problem,
    window_seconds,
)

_HORIZON_S = window_seconds(HISTORY_HORIZON)

Features = dict[str, float | str]


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


def redacted_url(url: str) -> str:
    """`url` with any password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
