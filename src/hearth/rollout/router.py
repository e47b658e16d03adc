"""Sticky assignment of customers to the champion or the challenger.

A customer's bucket is a stable hash of (rollout salt, customer id) into `buckets` buckets;
the customer sees the challenger iff its bucket lies below ``percent / 100 * buckets``. So
during one rollout a customer always sees the same variant for the same weight, and raising
the weight only adds customers to the challenger (never moves one back). A new rollout gets
a new salt, so it does not pick the same unlucky customers as the previous one.

`Router` applies the shared `RolloutState` to requests. It keeps a snapshot of the state and
re-reads it at most every `refresh_interval` seconds (≤ 1 s): a rollback written by any
process reaches every replica within that time, with no restart and no failed request.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from hearth.rollout.state import RolloutState, StateStore, StateUnavailable

log = logging.getLogger(__name__)

CHAMPION: Literal["champion"] = "champion"
CHALLENGER: Literal["challenger"] = "challenger"
Variant = Literal["champion", "challenger"]
DEFAULT_BUCKETS = 10_000
MAX_REFRESH_INTERVAL_S = 1.0


def bucket(salt: str, customer_id: str, buckets: int = DEFAULT_BUCKETS) -> int:
    """The customer's bucket in ``[0, buckets)``: the same in every process and on every host.

    BLAKE2b rather than `hash()`, which is salted per process. The salt's length is part of
    the hashed text so that ("ab", "c") and ("a", "bc") cannot collide.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be positive, got {buckets}")
    text = f"{len(salt)}:{salt}:{customer_id}".encode()
    digest = hashlib.blake2b(text, digest_size=8).digest()
    # 64 bits modulo ≤ 10^6 buckets: the bias is below 1e-13, far under any sampling noise.
    return int.from_bytes(digest, "big") % buckets


def in_challenger(bucket_index: int, challenger_percent: float, buckets: int) -> bool:
    """True iff a customer in `bucket_index` sees the challenger at `challenger_percent` %."""
    # bucket < percent/100 * buckets, multiplied out: no division, so no rounding surprises.
    return bucket_index * 100 < challenger_percent * buckets


def assign(
    salt: str, customer_id: str, challenger_percent: float, buckets: int = DEFAULT_BUCKETS
) -> Variant:
    """The variant that serves `customer_id` at `challenger_percent` % challenger traffic."""
    if in_challenger(bucket(salt, customer_id, buckets), challenger_percent, buckets):
        return CHALLENGER
    return CHAMPION


@dataclass(frozen=True)
class Route:
    """Where one request goes.

    `variant` answers the request. `model_version` is the registry version behind it, or None
    when no rollout runs (then the variant is the champion and the serving pool knows its
    version). `shadow_version`, in shadow mode only, is the challenger that also scores a copy
    of the request, whose answer is logged and never returned.
    """

    variant: Variant
    model_version: str | None
    shadow_version: str | None = None
    rollout_id: str | None = None


CHAMPION_ONLY = Route(CHAMPION, None)


def route_for(
    state: RolloutState | None, customer_id: str, buckets: int = DEFAULT_BUCKETS
) -> Route:
    """The route of `customer_id` under `state` (pure: no store, no clock)."""
    if state is None or not state.running:
        return CHAMPION_ONLY
    if state.mode == "shadow":
        return Route(CHAMPION, state.champion_version, state.challenger_version, state.rollout_id)
    variant = assign(state.salt, customer_id, state.challenger_percent, buckets)
    version = state.challenger_version if variant == CHALLENGER else state.champion_version
    return Route(variant, version, None, state.rollout_id)


class Router:
    """Routes requests by the shared rollout state, re-read at most every `refresh_interval`.

    Safe to share between threads. Only one thread refreshes at a time; the others keep
    routing on the snapshot they have, so a slow store never queues requests. If the store
    cannot be read, the last snapshot stays in force (logged) and the read is retried at the
    next interval: routing never fails a request.
    """

    def __init__(
        self,
        store: StateStore,
        refresh_interval: float = 0.5,
        buckets: int = DEFAULT_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < refresh_interval <= MAX_REFRESH_INTERVAL_S:
            raise ValueError(
                f"refresh_interval must be within (0, {MAX_REFRESH_INTERVAL_S}] s so that a "
                f"rollback reaches every replica within a second, got {refresh_interval}"
            )
        self.store = store
        self.refresh_interval = refresh_interval
        self.buckets = buckets
        self._clock = clock
        self._lock = threading.Lock()
        self._state: RolloutState | None = None
        self._read_at: float | None = None  # None: never read successfully or attempted

    def state(self) -> RolloutState | None:
        """The snapshot in force, re-read first if it is older than `refresh_interval`."""
        if self._stale():
            # Only the very first read makes callers wait: before it there is no snapshot.
            self._refresh(blocking=self._read_at is None, force=False)
        return self._state

    def refresh(self) -> RolloutState | None:
        """Re-read the state now (tests, admin endpoints after a write)."""
        self._refresh(blocking=True, force=True)
        return self._state

    def _stale(self) -> bool:
        read_at = self._read_at
        return read_at is None or self._clock() - read_at >= self.refresh_interval

    def _refresh(self, blocking: bool, force: bool) -> None:
        if not self._lock.acquire(blocking=blocking):
            return  # another thread is reading; route on the current snapshot meanwhile
        try:
            if not force and not self._stale():
                return  # refreshed by the thread we waited for
            # Stamp before reading: a write that lands during the read is seen next time.
            now = self._clock()
            try:
                self._state = self.store.current()
            except StateUnavailable as exc:
                log.warning("rollout state unreadable, keeping the last snapshot: %s", exc)
            self._read_at = now
        finally:
            self._lock.release()

    def route(self, customer_id: str) -> Route:
        """The route of one request of `customer_id`."""
        return route_for(self.state(), customer_id, self.buckets)
