"""The snapshot of what serves that a serving process routes by and loads models for.

`Follower` keeps a snapshot of the shared state (`Served`: the champion and the latest
rollout) and re-reads it at most every `refresh_interval` seconds (≤ 1 s): a promotion or a
rollback written by any process reaches every replica within that time, with no restart and
no failed request.

A serving process calls `start()`: a daemon thread then re-reads the state every interval,
so `served()` and `route()` only read memory and never wait on the store (Redis or SQLite)
on the caller's thread, an event loop. Without `start()` (tools, tests), the caller that
finds the snapshot stale re-reads it itself.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from hearth.traffic.assignment import DEFAULT_BUCKETS, Route, route_for
from hearth.traffic.rollout_state import Served, StateUnavailable
from hearth.traffic.state_store import StateStore

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
        self._first_read = threading.Event()
        self._stop = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- the background refresher (serving processes) -------------------------------------
    def start(self) -> Follower:
        """Re-read the state every `refresh_interval` in a daemon thread from now on; the
        first read starts at once. Idempotent; returns self."""
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._follow, name="rollout-follower", daemon=True
                )
                self._thread.start()
        return self

    @property
    def following(self) -> bool:
        """Whether a background thread keeps the snapshot fresh (`start()`)."""
        return self._thread is not None

    def _follow(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._refresh(blocking=True, force=True)
            except Exception:  # never let the refresher die: the snapshot would freeze
                log.exception("rollout state refresh failed")
            # Interval measured from the start of the read: a slow read is not added to it.
            self._stop.wait(max(0.0, self.refresh_interval - (time.monotonic() - started)))

    def wait_first_read(self, timeout_s: float) -> bool:
        """Block until the state has been read (or found unreadable) once; False on timeout."""
        if not self.following:
            self.served()
            return True
        return self._first_read.wait(timeout_s)

    def stop(self) -> None:
        """Stop the background refresher (tests, shutdown)."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def served(self) -> Served:
        """The snapshot in force, re-read first if it is older than `refresh_interval` (by
        the caller only without `start()`: with it, this never touches the store)."""
        if self._thread is None and self._stale():
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
            self._first_read.set()
        finally:
            self._lock.release()

    def route(self, customer_id: str) -> Route:
        """The route of one request of `customer_id`."""
        return route_for(self.served(), customer_id, self.buckets)
