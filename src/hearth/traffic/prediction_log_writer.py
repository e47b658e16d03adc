"""The serving side's writer of the prediction log: `submit` never blocks or raises.

A bounded in-memory buffer drained by one thread, so a log that fails (disk full, database
locked, read-only file, PostgreSQL restarting) or hangs (a PostgreSQL that takes the
connection and answers nothing) never fails or stalls a scored request.
Failed writes are retried with backoff; entries that still do not fit are dropped oldest
first, counted (``hearth_prediction_log_dropped_total``) and named in a log line, never
silently. The log itself (`PredictionLog`, SQLite or PostgreSQL) is `hearth.traffic.prediction_log`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError

from hearth.observability.prometheus import (
    record_log_dropped,
    record_log_write_failure,
    set_log_pending,
)
from hearth.traffic.prediction_log import PredictionLog, PredictionRecord

log = logging.getLogger(__name__)

MAX_PENDING = 100_000  # entries buffered while the log cannot be written (~0.5 KB each)
MAX_BATCH = 2_000  # entries per write transaction
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 5.0
STALLED_S = 1.0  # a write still in flight after this: the log hangs (do not wait for it)
REPORT_EVERY_S = 5.0  # at most one "cannot write" / "dropped" line per interval
_IDS_IN_REPORT = 20


class PredictionLogWriter:
    """Appends entries to a `PredictionLog` from one thread; `submit` never blocks or raises.

    Entries wait in a buffer of at most `max_pending`; the thread writes whatever is
    buffered in one transaction (so a burst costs one commit). A failed write keeps its
    entries at the front of the buffer and is retried with exponential backoff
    (`retry_first_s` doubling up to `retry_max_s`); when the buffer is full the oldest
    entries are dropped, counted and their transaction ids logged. A write in flight for
    longer than `stalled_s` makes the writer unhealthy until it ends, as a failure does.
    `open_log` is called before each write (a `Background.get`: a log still opening counts
    as a failed write).
    """

    def __init__(
        self,
        open_log: Callable[[], PredictionLog],
        max_pending: int = MAX_PENDING,
        max_batch: int = MAX_BATCH,
        retry_first_s: float = RETRY_FIRST_S,
        retry_max_s: float = RETRY_MAX_S,
        stalled_s: float = STALLED_S,
    ) -> None:
        self._open_log = open_log
        self.max_pending, self.max_batch = max_pending, max_batch
        self.retry_first_s, self.retry_max_s = retry_first_s, retry_max_s
        self.stalled_s = stalled_s
        self._queue: deque[PredictionRecord] = deque()
        self._head = 0  # sequence number of _queue[0]; entries are numbered as submitted
        self._waiters: deque[tuple[int, Future[bool]]] = deque()  # (end sequence, future)
        self._cond = threading.Condition()
        self._writing = 0  # entries taken by the thread, not yet written or put back
        self._write_started: float | None = None  # when the write in flight began
        self._failures = 0  # consecutive failed writes
        self._last_error = ""
        self.written = 0
        self.dropped = 0
        self._unreported_drops: list[str] = []
        self._unreported_count = 0
        self._reported_at = 0.0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """False while writes fail or one hangs: then callers should not wait for a write."""
        started = self._write_started
        stalled = started is not None and time.monotonic() - started > self.stalled_s
        return self._failures == 0 and not stalled

    @property
    def pending(self) -> int:
        """Entries not written yet (buffered or being written)."""
        return len(self._queue) + self._writing

    def submit(self, entries: Sequence[PredictionRecord]) -> Future[bool] | None:
        """Buffer `entries` for writing. The future says (True) once they are written, or
        (False) that the write failed or they were dropped; None when the log is failing or
        there is nothing to write (do not wait)."""
        if not entries:
            return None
        future: Future[bool] | None = None
        with self._cond:
            self._queue.extend(entries)
            if self.healthy:
                future = Future()
                self._waiters.append((self._head + len(self._queue), future))
            self._drop_overflow()
            self._cond.notify()
        return future

    def flush(self, timeout_s: float) -> bool:
        """Block until everything submitted so far is written; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._head + len(self._queue)
            # Entries before head - writing are written (or dropped); in flight are not.
            while self._head - self._writing < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is buffered (up to `timeout_s`), then stop the thread; what is still
        unwritten then is counted as dropped and logged."""
        self.flush(timeout_s)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout_s)
        with self._cond:
            lost = list(self._queue)
            self._queue.clear()
            self._head += len(lost)
        if lost:
            self.dropped += len(lost)
            record_log_dropped(len(lost))
            ids = ", ".join(e.transaction_id for e in lost[:_IDS_IN_REPORT])
            log.error(
                "prediction log: %d entries not written at shutdown (last error: %s); "
                "transaction ids: %s%s", len(lost), self._last_error, ids,
                " …" if len(lost) > _IDS_IN_REPORT else "",
            )  # fmt: skip
        set_log_pending(0)

    # -- the writer thread ------------------------------------------------------------------
    def _drop_overflow(self) -> None:
        """Drop the oldest buffered entries beyond max_pending (under the lock)."""
        over = len(self._queue) - self.max_pending
        if over <= 0:
            return
        for _ in range(over):
            entry = self._queue.popleft()
            if len(self._unreported_drops) < _IDS_IN_REPORT:
                self._unreported_drops.append(entry.transaction_id)
        self._head += over
        self.dropped += over
        self._unreported_count += over
        record_log_dropped(over)
        self._resolve(ok=False)

    def _resolve(self, ok: bool, everyone: bool = False) -> None:
        """Answer the waiters whose entries have left the buffer (all of them: `everyone`)."""
        done_upto = self._head - self._writing
        while self._waiters and (everyone or self._waiters[0][0] <= done_upto):
            _, future = self._waiters.popleft()
            with contextlib.suppress(InvalidStateError):  # the waiter gave up (cancelled)
                future.set_result(ok)

    def _take(self) -> list[PredictionRecord] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if not self._queue:
                return None
            n = min(len(self._queue), self.max_batch)
            batch = [self._queue.popleft() for _ in range(n)]
            self._head += n
            self._writing = n
            self._write_started = time.monotonic()
            return batch

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                self._open_log().record_entries(batch)
            except Exception as exc:  # disk full, locked, read-only, not open yet: retry
                self._failed(batch, exc)
                self._report()
                if self._stopping:  # closing: close() counts and logs what is left
                    return
                delay = min(self.retry_max_s, self.retry_first_s * 2 ** (self._failures - 1))
                with self._cond:
                    if not self._stopping:
                        self._cond.wait(delay)
                continue
            with self._cond:
                self._writing, self._write_started = 0, None
                self.written += len(batch)
                if self._failures:
                    log.warning(
                        "prediction log writable again after %d failed writes; %d entries "
                        "pending", self._failures, len(self._queue),
                    )  # fmt: skip
                self._failures = 0
                self._resolve(ok=True)
                self._cond.notify_all()
            self._report()

    def _failed(self, batch: list[PredictionRecord], exc: Exception) -> None:
        record_log_write_failure()
        with self._cond:
            self._writing, self._write_started = 0, None
            self._queue.extendleft(reversed(batch))
            self._head -= len(batch)
            self._failures += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._resolve(ok=False, everyone=True)  # nobody waits for a retry
            self._drop_overflow()
            self._cond.notify_all()

    def _report(self) -> None:
        """The pending gauge, and (at most every REPORT_EVERY_S) a line on failures/drops."""
        set_log_pending(self.pending)
        now = time.monotonic()
        if now - self._reported_at < REPORT_EVERY_S:
            return
        with self._cond:
            count, ids = self._unreported_count, self._unreported_drops
            self._unreported_count, self._unreported_drops = 0, []
            failing, error, pending = self._failures, self._last_error, len(self._queue)
        if count:
            shown = ", ".join(ids) + (" …" if count > len(ids) else "")
            log.error(
                "prediction log: dropped %d entries (buffer of %d full; last error: %s); "
                "transaction ids: %s", count, self.max_pending, error, shown,
            )  # fmt: skip
            self._reported_at = now
        elif failing:
            log.warning(
                "prediction log cannot be written (%d failed writes, %d entries buffered, "
                "retrying): %s", failing, pending, error,
            )  # fmt: skip
            self._reported_at = now
