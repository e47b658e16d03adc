"""The rollout state store: the writes every backend shares, and the protocol it implements.

`StateStore` is the base of the backends (`hearth.traffic.state_sqlite`,
`hearth.traffic.state_postgres`, both on `hearth.traffic.state_sql`, and
`hearth.traffic.state_redis`; `hearth.traffic.stores.open_state_store` picks one). Writes
are compare-and-set: `update` reads the state, applies a pure mutator, and writes the new
state *and* its history event in one transaction, so concurrent writers lose nothing and the
history never disagrees with the state. The planning functions below (`plan_start`,
`plan_update`, `plan_set_champion`) are that shared logic, and `StateStore`'s writes run
them; a backend only supplies the transaction they run in and stores JSON documents, which
this base decodes (the models are `hearth.traffic.rollout_state`'s).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from hearth.traffic.heartbeat import Heartbeat
from hearth.traffic.rollout_state import (
    HISTORY_LIMIT,
    HistoryEvent,
    InvalidRollout,
    NoActiveRollout,
    PromotionIntent,
    RolloutConflict,
    RolloutState,
    Scalar,
    Served,
    diff,
    utcnow,
)


# -- compare-and-set on the champion ---------------------------------------------------------
class Unchecked(Enum):
    """The type of `UNCHECKED` (a sentinel: None already means "no champion")."""

    UNCHECKED = "unchecked"


UNCHECKED = Unchecked.UNCHECKED
"""`set_champion(expected=UNCHECKED)`: replace whatever champion there is."""


# -- shared transaction logic ----------------------------------------------------------------
Mutator = Callable[[RolloutState], RolloutState]


@dataclass(frozen=True)
class Write:
    """What one store write stores, planned on a consistent read (`Served`).

    `rollout`/`champion`: the new values to store (None: unchanged); `event`: the history
    event to append (None: nothing at all is written); `revision`: the store's revision
    after the write, which every written value carries; `intent`: the registry change to
    record with it (None: the pending one, if any, is left as it is).
    """

    rollout: RolloutState | None
    champion: str | None
    event: HistoryEvent | None
    revision: int
    intent: PromotionIntent | None = None

    def applied_to(self, served: Served) -> Served:
        """What serves once this write is stored."""
        if self.event is None:
            return served
        return Served(
            champion_version=self.champion or served.champion_version,
            rollout=self.rollout or served.rollout,
            revision=self.revision,
        )


Plan = Callable[[Served, PromotionIntent | None], Write]
"""Plans a write on a consistent read: what serves and the pending intent."""


def decode_intent(document: str | bytes | None) -> PromotionIntent | None:
    """The stored intent document as its model (None: none is pending)."""
    return PromotionIntent.model_validate_json(document) if document is not None else None


def check_pending(
    pending: PromotionIntent | None, expected: PromotionIntent | Unchecked | None
) -> None:
    """RolloutConflict unless the `pending` intent is the `expected` one (`set_intent`)."""
    if expected is not UNCHECKED and pending != expected:
        what = f"a {pending.action} of {pending.at:%H:%M:%S}" if pending else "none"
        raise RolloutConflict(f"the pending registry change is {what}: it changed meanwhile")


def stamp(state: RolloutState, revision: int) -> RolloutState:
    # Bookkeeping fields are set here, never by callers, so they cannot be forged or stale.
    return RolloutState.model_validate(
        {**state.model_dump(), "revision": revision, "updated_at": utcnow()}
    )


def plan_start(served: Served, state: RolloutState, actor: str, reason: str) -> Write:
    """The write that starts `state` — or a RolloutError."""
    current = served.running
    if current is not None:
        raise RolloutConflict(
            f"rollout {current.rollout_id} (v{current.challenger_version} at "
            f"{current.challenger_percent:g} %) is still running; end it first"
        )
    if not state.running:
        raise InvalidRollout(f"a new rollout must be running, not {state.status}")
    champion = served.champion_version
    if champion is not None and champion != state.champion_version:
        raise RolloutConflict(
            f"the rollout compares v{state.challenger_version} with v{state.champion_version}, "
            f"but v{champion} is the champion"
        )
    revision = served.revision + 1
    new = stamp(state, revision)
    event = HistoryEvent(
        rollout_id=new.rollout_id,
        actor=actor,
        action="start",
        changes=diff(None, new),
        reason=reason,
    )
    return Write(new, new.champion_version if champion is None else None, event, revision)


def plan_update(
    served: Served,
    mutator: Mutator,
    rollout_id: str | None,
    event: dict[str, Any],
    intent: PromotionIntent | None = None,
    pending: PromotionIntent | None = None,
) -> Write:
    """The write of a change to the running rollout — or a RolloutError. With `intent`, the
    registry change that follows it is recorded in the same write (over the `pending` one,
    see `PromotionIntent.after_pending`)."""
    current = served.running
    if current is None:
        raise NoActiveRollout("no rollout is running")
    if rollout_id is not None and rollout_id != current.rollout_id:
        raise RolloutConflict(f"rollout {rollout_id} is not the running one ({current.rollout_id})")
    after = mutator(current)
    fixed = ("rollout_id", "salt", "champion_version", "challenger_version", "mode")
    if any(getattr(after, f) != getattr(current, f) for f in fixed):
        # A new salt would reshuffle every customer mid-rollout, a new id would hide the
        # history, new versions or mode would judge a different experiment: start a new one.
        raise InvalidRollout(
            "an update may not change the rollout's id, salt, versions or mode; end it and "
            "start a new rollout"
        )
    changes = diff(current, after)
    history = HistoryEvent(rollout_id=current.rollout_id, changes=changes, **event)
    if not changes:
        return Write(None, None, history, served.revision)
    revision = served.revision + 1
    # A promotion's end and the new champion are one write: no reader sees one without the other.
    champion = after.challenger_version if after.status == "promoted" else None
    recorded = intent.after_pending(pending) if intent is not None else None
    return Write(stamp(after, revision), champion, history, revision, recorded)


def plan_set_champion(
    served: Served,
    version: str,
    actor: str,
    action: str,
    reason: str,
    expected: str | Unchecked | None,
    intent: PromotionIntent | None = None,
    pending: PromotionIntent | None = None,
) -> Write:
    """The write that makes `version` the champion — or a RolloutError (with `intent`, as
    `plan_update`)."""
    version = str(version)
    if not version:
        raise InvalidRollout("a champion version must not be empty")
    running = served.running
    if running is not None:
        raise RolloutConflict(
            f"rollout {running.rollout_id} (v{running.challenger_version}) is running: promote "
            "it or roll it back before changing the champion"
        )
    current = served.champion_version
    if expected is not UNCHECKED and expected != current:
        raise RolloutConflict(
            f"the champion is {_version(current)}, not {_version(expected)}: it changed meanwhile"
        )
    if version == current:
        return Write(None, None, None, served.revision)
    event = HistoryEvent(
        rollout_id="",
        actor=actor,
        action=action,
        changes={"champion_version": (current, version)},
        reason=reason,
    )
    recorded = intent.after_pending(pending) if intent is not None else None
    return Write(None, version, event, served.revision + 1, recorded)


def _version(version: str | Unchecked | None) -> str:
    return "none" if version is None else f"v{version}"


@dataclass(frozen=True)
class StoredServed:
    """What a backend stores for `Served`: the champion, the rollout's JSON document (None
    before the first rollout) and the store's revision, as read."""

    champion: str | bytes | None
    rollout: str | bytes | None
    revision: int | str | bytes | None

    def decoded(self) -> Served:
        champion = self.champion.decode() if isinstance(self.champion, bytes) else self.champion
        rollout = self.rollout
        return Served(
            champion_version=champion,
            rollout=RolloutState.model_validate_json(rollout) if rollout is not None else None,
            revision=int(self.revision or 0),
        )


# -- the store -------------------------------------------------------------------------------
class StateStore(ABC):
    """The shared rollout state; every method is safe to call from several threads.

    A backend implements the reads, the intent, `ping`, `close` and `_transact`; the writes
    (`start`, `update`, `set_champion`) are the planning functions above, run in `_transact`,
    the same on every backend. The serving processes' heartbeats (`beat`, `heartbeats`) are
    kept beside the state: a backend implements `_write_heartbeat` and `_read_heartbeats`.
    """

    backend: str  # "sqlite" | "redis" | "postgres"

    # Reads: a backend returns what it stored (the JSON documents below) and this base
    # decodes it, so both backends store the same documents and decode them alike.
    @abstractmethod
    def _read_served(self) -> StoredServed:
        """The stored champion, rollout document and revision, in one consistent read."""

    def served(self) -> Served:
        """The champion, the latest rollout and the revision, in one consistent read."""
        return self._read_served().decoded()

    def current(self) -> RolloutState | None:
        """The latest rollout (running or ended), or None if there never was one."""
        return self.served().rollout

    @abstractmethod
    def revision(self) -> int:
        """A counter bumped by every state write: a cheap way to notice a change."""

    @abstractmethod
    def _transact(self, plan: Plan) -> tuple[Served, Write]:
        """Run `plan` on a consistent read (what serves, the pending intent: see
        `decode_intent`) and store its `Write` (nothing when it has no event; its intent
        document when it has one) in the same transaction; the read and the write."""

    def start(self, state: RolloutState, actor: str, reason: str = "") -> RolloutState:
        """Make `state` the current rollout; RolloutConflict while another one runs, or when
        its champion is not the store's champion. With no champion yet, the rollout's
        champion becomes the store's (in the same write)."""
        _, write = self._transact(lambda served, _: plan_start(served, state, actor, reason))
        assert write.rollout is not None  # a start always writes its rollout
        return write.rollout

    def update(
        self,
        mutator: Mutator,
        actor: str,
        action: str,
        reason: str = "",
        numbers: dict[str, Scalar] | None = None,
        test: str | None = None,
        rollout_id: str | None = None,
        intent: PromotionIntent | None = None,
    ) -> RolloutState:
        """Compare-and-set on the running rollout: state and history in one transaction.

        `mutator` gets the current state and returns the new one (or the same one: then only
        the history event is written). NoActiveRollout when none runs; RolloutConflict when
        `rollout_id` is given and is not the running one. A RolloutError raised by the
        mutator propagates and nothing is written. Ending the rollout as ``promoted`` makes
        its challenger the champion in the same transaction. `intent` (a promotion's or
        rollback's alias writes) is recorded in that transaction too.
        """
        event = {
            "actor": actor,
            "action": action,
            "reason": reason,
            "numbers": numbers or {},
            "test": test,
        }
        served, write = self._transact(
            lambda served, pending: plan_update(served, mutator, rollout_id, event, intent, pending)
        )
        result = write.rollout or served.rollout
        assert result is not None  # plan_update refuses a missing rollout
        return result

    def set_champion(
        self,
        version: str,
        actor: str,
        action: str,
        reason: str = "",
        expected: str | Unchecked | None = UNCHECKED,
        intent: PromotionIntent | None = None,
    ) -> Served:
        """Compare-and-set on the champion, with a history event (rollout id ``""``).

        RolloutConflict while a rollout runs (promote or roll it back instead), or when
        `expected` is given and is not the champion now (None: "no champion yet"). Setting
        the champion it already is writes nothing. Returns what serves afterwards. `intent`
        is recorded in the same write, as in `update`.
        """
        served, write = self._transact(
            lambda served, pending: plan_set_champion(
                served, version, actor, action, reason, expected, intent, pending
            )
        )
        return write.applied_to(served)

    @abstractmethod
    def _read_history(self, rollout_id: str | None, limit: int) -> list[str | bytes]:
        """History event documents, oldest first; a backend may return more than asked
        (all of them, or of other rollouts): `history` filters and keeps the last `limit`."""

    def history(
        self, rollout_id: str | None = None, limit: int = HISTORY_LIMIT
    ) -> list[HistoryEvent]:
        """The last `limit` events (of one rollout, if given), oldest first."""
        events = [
            HistoryEvent.model_validate_json(d) for d in self._read_history(rollout_id, limit)
        ]
        if rollout_id is not None:
            events = [e for e in events if e.rollout_id == rollout_id]
        return events[-limit:] if limit else []

    @abstractmethod
    def _read_intent(self) -> str | bytes | None:
        """The stored intent document, if any."""

    @abstractmethod
    def _write_intent(
        self, document: str | None, check: Callable[[str | bytes | None], None]
    ) -> None:
        """Store (or, with None, delete) the intent document, in one transaction with a read
        of the stored one that `check` gets first (it raises to write nothing)."""

    def intent(self) -> PromotionIntent | None:
        """The registry change in progress, if one was started and not finished."""
        return decode_intent(self._read_intent())

    def set_intent(
        self,
        intent: PromotionIntent | None,
        expected: PromotionIntent | Unchecked | None = UNCHECKED,
    ) -> None:
        """Record (or, with None, clear) the registry change in progress. Compare-and-set
        with `expected` (None: "none is pending"): RolloutConflict when the pending intent is
        another one, so a repair never clears (or a writer never overwrites) an intent that
        was recorded after it read."""
        self._write_intent(
            intent.model_dump_json() if intent is not None else None,
            lambda stored: check_pending(decode_intent(stored), expected),
        )

    # Heartbeats of the serving processes (`hearth.traffic.heartbeat`): one document per
    # process, replaced by its next beat; not part of the rollout's transactions.
    def _write_heartbeat(
        self, process: str, document: str, seen_at: float, forget_before: float
    ) -> None:
        """Store `document` as `process`'s heartbeat (seen at `seen_at`, epoch seconds) over
        its previous one, and drop the heartbeats last seen before `forget_before`."""
        raise NotImplementedError(f"the {self.backend} rollout state keeps no heartbeats yet")

    def _read_heartbeats(self) -> list[str | bytes]:
        """Every stored heartbeat document, in any order."""
        raise NotImplementedError(f"the {self.backend} rollout state keeps no heartbeats yet")

    def beat(self, heartbeat: Heartbeat, forget_before: datetime) -> None:
        """Record `heartbeat` (over the process's previous one); forget every process last
        seen before `forget_before`. StateUnavailable when the backend does not answer."""
        self._write_heartbeat(
            heartbeat.process,
            heartbeat.model_dump_json(),
            heartbeat.seen_at.timestamp(),
            forget_before.timestamp(),
        )

    def heartbeats(self) -> list[Heartbeat]:
        """The last heartbeat of every process that reported (and is not forgotten yet),
        most recently seen first."""
        beats = [Heartbeat.model_validate_json(d) for d in self._read_heartbeats()]
        return sorted(beats, key=lambda b: (b.seen_at, b.process), reverse=True)

    @abstractmethod
    def ping(self) -> bool:
        """True when the backend answers; never raises."""

    @abstractmethod
    def close(self) -> None: ...
