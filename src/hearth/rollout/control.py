"""The operator's rollout controls, shared by `hearth rollout …` and the gateway's admin API.

Each operation validates its input and changes nothing when it refuses: `UnknownVersion`
(404), `InvalidRollout` (422), `RolloutConflict` / `NoActiveRollout` (409) carry the HTTP
status an API answers with, `StateUnavailable` means the state backend is down (503: nothing
took effect). Those that touch the registry finish an interrupted promotion first
(`promotion.repair`); `rollback` and `set_weight` read nothing from MLflow: each is one
write to the state, so it works with the registry down, and the aliases follow later.
Framework-free: the CLI and the admin API are thin adapters over these functions.

How serving follows: the rollout state names what serves (`Served`: the champion and a
running rollout). The gateways route by it (re-read every ≤ 1 s), naming the version of
each request, and the model pools load the versions it names from the registry into their
local cache. So every change here is one write to the state; nothing else to update.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any, cast

from pydantic import BaseModel, ConfigDict

from hearth.config import Settings
from hearth.params import Params
from hearth.rollout import promotion, registry_reads
from hearth.rollout.promotion import promote, rollback, rollback_to_previous
from hearth.traffic.fleet import FleetStatus, fleet_status
from hearth.traffic.rollout_state import (
    Decision,
    HistoryEvent,
    InvalidRollout,
    Mode,
    PromotionIntent,
    RolloutState,
    Served,
)
from hearth.traffic.state_store import StateStore
from hearth.traffic.stores import has_prediction_log, using_prediction_log, using_state_store

log = logging.getLogger(__name__)

MODES: tuple[Mode, ...] = ("canary", "ab", "shadow")
HISTORY_TAIL = 10


# -- reading ---------------------------------------------------------------------------------
class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServedVersions(_View):
    """What the gateways route to now: versions and the challenger's share of traffic."""

    champion: str | None
    challenger: str | None = None
    mode: Mode | None = None
    challenger_percent: float = 0.0


class LiveCounts(_View):
    """One variant's requests, errors and labels in the prediction log."""

    requests: int
    errors: int
    labelled: int
    frauds: int


class RolloutStatus(_View):
    """Everything an operator looks at (`hearth rollout status`, `GET /admin/rollout`).
    `aliases_error` says why `aliases` is empty when the registry did not answer; `fleet`:
    the serving processes heard from in the last `heartbeat_window_s`, and the quiet ones."""

    rollout: RolloutState | None
    aliases: dict[str, str]
    aliases_error: str | None = None
    served: ServedVersions
    pending_repair: PromotionIntent | None
    history: tuple[HistoryEvent, ...]
    live: dict[str, LiveCounts]
    fleet: FleetStatus | None = None


def served_versions(served: Served) -> ServedVersions:
    """What the gateways route to now, from one read of the rollout state."""
    running = served.running
    if running is None:
        return ServedVersions(champion=served.champion_version)
    return ServedVersions(
        champion=running.champion_version,
        challenger=running.challenger_version,
        mode=running.mode,
        challenger_percent=running.challenger_percent,
    )


def live_counts(settings: Settings, rollout_id: str | None) -> dict[str, LiveCounts]:
    """Requests, errors and labels per variant in the prediction log ({} without a log)."""
    if not has_prediction_log(settings):
        return {}
    with using_prediction_log(settings) as log_:
        counts = log_.counts(rollout_id)
    return {variant: LiveCounts(**c) for variant, c in counts.items()}


def status(
    settings: Settings,
    params: Params,
    store: StateStore | None = None,
    history_limit: int = HISTORY_TAIL,
) -> RolloutStatus:
    """Everything an operator looks at: the rollout state, the MLflow aliases, the versions
    served now, a pending repair, the history tail and live counts of the current rollout.

    The aliases are read without MLflow's client where the registry allows it (fast), and
    a registry that does not answer leaves them empty with `aliases_error` saying why: the
    rest of the status comes from the state store alone."""
    with using_state_store(settings, store) as st:
        served = st.served()
        intent = st.intent()
        events = st.history(limit=history_limit)
        fleet = fleet_status(st, settings.heartbeat_window_s)
    state = served.rollout
    aliases, error = {}, None
    try:
        aliases = registry_reads.read_aliases(settings, params.registry.model_name)
    except Exception as exc:  # any failure of the registry: the status degrades, never fails
        error = f"model registry unavailable: {type(exc).__name__}: {exc}"[:300]
        log.warning("rollout status: %s", error)
    return RolloutStatus(
        rollout=state,
        aliases=aliases,
        aliases_error=error,
        served=served_versions(served),
        pending_repair=intent,
        history=tuple(events),
        live=live_counts(settings, state.rollout_id if state else None),
        fleet=fleet,
    )


def history(
    settings: Settings,
    rollout_id: str | None = None,
    limit: int = 100,
    store: StateStore | None = None,
) -> list[HistoryEvent]:
    """The last `limit` history events (of one rollout, or of all), oldest first."""
    with using_state_store(settings, store) as st:
        return st.history(rollout_id, limit=limit)


# -- changing --------------------------------------------------------------------------------
def start(
    settings: Settings,
    params: Params,
    challenger_version: str | int,
    mode: str | None = None,
    steps: list[float] | tuple[float, ...] | None = None,
    actor: str = "hearth",
    reason: str = "",
    store: StateStore | None = None,
) -> RolloutState:
    """Start a rollout of `challenger_version` against the champion.

    Refuses, changing nothing: a mode other than canary/ab/shadow or bad steps
    (InvalidRollout), an unregistered version (UnknownVersion), a running rollout
    (RolloutConflict). Then writes the state: every model pool loads the challenger from
    the registry when the state (or the first request) names it.
    """
    if mode is not None and mode not in MODES:
        raise InvalidRollout(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return promotion.start_rollout(
        settings, params, challenger_version, mode=cast(Mode | None, mode), steps=steps,
        store=store, actor=actor, reason=reason,
    )  # fmt: skip


def set_weight(
    settings: Settings,
    params: Params,
    challenger_percent: float,
    actor: str = "hearth",
    reason: str = "",
    store: StateStore | None = None,
) -> RolloutState:
    """Send `challenger_percent` % of customers to the challenger (sticky: raising it only
    adds customers). InvalidRollout outside 0-100 or in shadow mode, NoActiveRollout when
    none runs. One state write, like `rollback`: nothing is read from MLflow (`params` is
    kept for the controls' common signature)."""
    percent = float(challenger_percent)
    if not math.isfinite(percent) or not 0 <= percent <= 100:
        raise InvalidRollout(f"challenger_percent must be within 0-100, got {challenger_percent}")
    with using_state_store(settings, store) as st:
        return st.update(
            lambda s: s.with_percent(percent),
            actor=actor,
            action="weight",
            reason=reason or f"challenger weight set to {percent:g} %",
        )


# `promote`, `rollback` and `rollback_to_previous` are `hearth.rollout.promotion`'s
# (imported above): they open the store and write the state before the aliases themselves.
__all__ = ["promote", "rollback", "rollback_to_previous"]


def sync_aliases(
    settings: Settings, params: Params, attempts: int = 8, wait_s: float = 2.0
) -> bool:
    """Finish a pending registry change (`promotion.repair`), retrying while MLflow does not
    answer (`attempts`, `wait_s` doubling up to 60 s); True once nothing is pending."""
    for attempt in range(attempts):
        try:
            promotion.repair(settings, params)
            with using_state_store(settings) as st:
                if st.intent() is None:  # else one was recorded meanwhile: go again
                    return True
            continue
        except Exception as exc:  # MLflow down, or slow: the intent stays recorded
            log.warning("alias repair failed (attempt %d): %s", attempt + 1, exc)
        time.sleep(min(60.0, wait_s * 2**attempt))
    return False


# -- bound to one process: what an admin API calls --------------------------------------------
class Controls:
    """The controls above for one context and actor, answering JSON-ready values: the
    operations a gateway's admin API runs (`hearth.serving.admin.AdminOps`), injected by
    the orchestration layer (``bentos/``)."""

    def __init__(self, settings: Settings, params: Params, actor: str = "admin-api") -> None:
        self.settings, self.params, self.actor = settings, params, actor
        self._syncing = threading.Lock()

    def status(self) -> dict[str, Any]:
        return status(self.settings, self.params).model_dump(mode="json")

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        return [e.model_dump(mode="json") for e in history(self.settings, limit=limit)]

    def start(
        self, challenger_version: str | int, mode: str | None, steps: list[float] | None,
        reason: str,
    ) -> dict[str, Any]:  # fmt: skip
        state = start(
            self.settings, self.params, challenger_version, mode=mode, steps=steps,
            actor=self.actor, reason=reason,
        )  # fmt: skip
        return state.model_dump(mode="json")

    def weight(self, challenger_percent: float, reason: str) -> dict[str, Any]:
        state = set_weight(
            self.settings, self.params, challenger_percent, actor=self.actor, reason=reason
        )
        return state.model_dump(mode="json")

    def promote(self, reason: str) -> dict[str, Any]:
        return promote(self.settings, self.params, Decision(self.actor, reason)).to_dict()

    def rollback(self, reason: str) -> dict[str, Any]:
        """End the running rollout (one state write, no MLflow), then let the aliases follow
        in the background; a no-op (``changed`` false) when none runs."""
        ended = rollback(self.settings, self.params, Decision(self.actor, reason))
        if ended.changed:
            self._sync_in_background()
        return ended.to_dict()

    def rollback_to_previous(self, expect_champion: str, reason: str) -> dict[str, Any]:
        change = rollback_to_previous(
            self.settings, self.params, expect_champion, Decision(self.actor, reason)
        )
        return change.to_dict()

    def _sync_in_background(self) -> None:
        """One thread at a time repairs the aliases until the registry has followed."""
        if not self._syncing.acquire(blocking=False):
            return  # a sync is running; it re-reads the pending intent on each attempt

        def run() -> None:
            try:
                sync_aliases(self.settings, self.params)
            finally:
                self._syncing.release()

        threading.Thread(target=run, name="hearth-alias-sync", daemon=True).start()
