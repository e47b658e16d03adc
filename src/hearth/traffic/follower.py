"""The snapshot of what serves that a serving process routes by and loads models for.

`Follower` keeps a snapshot of the shared state (`Served`: the champion and the latest
rollout) and re-reads it at most every `refresh_interval` seconds (≤ 1 s): a promotion or a
rollback written by any process reaches every replica within that time, with no restart and
no failed request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from hearth.traffic.assignment import DEFAULT_BUCKETS, Route, route_for
from hearth.traffic.rollout_state import (
    Served,
    StateUnavailable,
)
from hearth.traffic.state_store import (
    StateStore,
)

log = logging.getLogger(__name__)

MAX_REFRESH_INTERVAL_S = 1.0


class Follower:
    """Follows the shared state, re-read at most every `refresh_interval`, and routes by it.

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
        self._served = Served()  # nothing serves until the first read
        self._read_at: float | None = None  # None: never read successfully or attempted

    def served(self) -> Served:
        """The snapshot in force, re-read first if it is older than `refresh_interval`."""
        if self._stale():
            # Only the very first read makes callers wait: before it there is no snapshot.
            self._refresh(blocking=self._read_at is None, force=False)
        return self._served

    def refresh(self) -> Served:
        """Re-read the state now (tests, admin endpoints after a write)."""
        self._refresh(blocking=True, force=True)
        return self._served

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
                self._served = self.store.served()
            except StateUnavailable as exc:
                log.warning("rollout state unreadable, keeping the last snapshot: %s", exc)
            self._read_at = now
        finally:
            self._lock.release()

    def route(self, customer_id: str) -> Route:
        """The route of one request of `customer_id`."""
        return route_for(self.served(), customer_id, self.buckets)
