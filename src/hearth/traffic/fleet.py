"""The serving fleet as the shared state sees it: heartbeats written, and read back.

`HeartbeatReporter` runs in every serving process: a daemon thread that writes the
process's `Heartbeat` into the rollout state store at once and then every `interval_s`
(a store that does not answer is logged and tried again at the next beat: serving never
waits on it). `fleet_status` reads them back for `hearth rollout status` and
`GET /admin/rollout`: the processes heard from within `window_s` (live) and those heard from
before but not since (quiet: killed, hung, cut off, or stopped). A process not heard from
for `FORGET_AFTER_S` is dropped from the store by the next beat of any process.

Ages compare the writer's clock with the reader's: keep the machines' clocks in sync
(NTP); a skew of a few seconds only shifts the ages by as much.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict

from hearth.traffic.heartbeat import Heartbeat, LoadedVersion, process_key
from hearth.traffic.rollout_state import StateUnavailable, utcnow
from hearth.traffic.state_store import StateStore

log = logging.getLogger(__name__)

FORGET_AFTER_S = 24 * 3600.0  # a quiet process is named for a day, then forgotten


class HeartbeatReporter:
    """Writes this process's heartbeat every `interval_s`, from a daemon thread.

    `versions` says what the process serves now (variant → version and whether it is
    loaded); it is called on the reporter's thread and must answer from memory.
    """

    def __init__(
        self,
        store: StateStore,
        versions: Callable[[], dict[str, LoadedVersion]],
        role: str,
        home: str,
        interval_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"a heartbeat interval must be positive, got {interval_s}")
        self.store, self.versions, self.role, self.home = store, versions, role, home
        self.interval_s = interval_s
        self._clock = clock
        self.host = socket.gethostname()
        self.started_at = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def heartbeat(self) -> Heartbeat:
        """What this process reports now."""
        pid = os.getpid()  # read each time: a forked worker reports as itself
        return Heartbeat(
            process=process_key(self.host, pid),
            host=self.host,
            pid=pid,
            home=self.home,
            role=self.role,
            versions=self.versions(),
            started_at=self.started_at,
            seen_at=self._clock(),
        )

    def beat(self) -> Heartbeat:
        """Write one heartbeat now; StateUnavailable when the store does not answer."""
        heartbeat = self.heartbeat()
        forget_before = heartbeat.seen_at - timedelta(seconds=FORGET_AFTER_S)
        self.store.beat(heartbeat, forget_before)
        return heartbeat

    def start(self) -> HeartbeatReporter:
        """Beat now and every `interval_s` from a daemon thread; idempotent; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                self.beat()
                if failing:
                    log.info("heartbeat written again")
                failing = False
            except NotImplementedError as exc:  # a backend without heartbeats: say it once
                log.warning("no heartbeats: %s", exc)
                return
            except Exception as exc:  # never let the reporter die: the process would go quiet
                if not failing:
                    log.warning(
                        "heartbeat not written (retried every %gs): %s", self.interval_s, exc
                    )
                failing = True
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        """Stop beating (tests, shutdown); the last heartbeat stays in the store."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServingProcess(_View):
    """A serving process as the status shows it."""

    process: str
    host: str
    pid: int
    home: str
    role: str
    versions: dict[str, LoadedVersion]
    started_at: datetime
    seen_at: datetime
    age_s: float  # seconds since it was last heard from, when the status was read


class FleetStatus(_View):
    """The serving processes heard from within `window_s` (`live`) and those heard from
    before but not since (`quiet`), most recently seen first. `error` says why both are
    empty when the heartbeats could not be read."""

    window_s: float
    live: tuple[ServingProcess, ...] = ()
    quiet: tuple[ServingProcess, ...] = ()
    error: str | None = None


def fleet_status(store: StateStore, window_s: float, now: datetime | None = None) -> FleetStatus:
    """The fleet as the heartbeats in `store` show it; never raises for a store that does
    not answer or keeps no heartbeats (`error` says so)."""
    try:
        beats = store.heartbeats()
    except (StateUnavailable, NotImplementedError) as exc:
        return FleetStatus(window_s=window_s, error=f"heartbeats unavailable: {exc}"[:300])
    now = now or utcnow()
    shown = [ServingProcess(**b.model_dump(), age_s=round(b.age_s(now), 1)) for b in beats]
    return FleetStatus(
        window_s=window_s,
        live=tuple(p for p in shown if p.age_s <= window_s),
        quiet=tuple(p for p in shown if p.age_s > window_s),
    )
