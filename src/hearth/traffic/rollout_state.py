"""Rollout state and its history: the model, its errors, and the store protocol.

One `RolloutState` (the latest rollout, running or ended) and an append-only list of
`HistoryEvent`s (who changed what, when and why, with the analysis numbers). Every gateway
replica reads the same state, so all route identically, and a rollback is one write.

Two backends subclass `StateStore` (`hearth.traffic.state_sqlite`,
`hearth.traffic.state_redis`); `hearth.traffic.stores.open_state_store` picks one by
`Settings.store_backend` (the same switch as the online feature store).

Writes are compare-and-set: `update` reads the state, applies a pure mutator, and writes the
new state *and* its history event in one transaction, so concurrent writers lose nothing
and the history never disagrees with the state. Invalid requests raise a `RolloutError`
subclass (an admin API maps them to 4xx) before anything is written. The planning functions
below (`plan_start`, `plan_update`, `plan_set_champion`) are that shared logic, and
`StateStore`'s writes run them; a backend only supplies the transaction they run in.
"""

from __future__ import annotations

import json
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hearth.config import RolloutParams

Mode = Literal["canary", "ab", "shadow"]
Status = Literal["running", "promoted", "rolled_back", "aborted"]
Scalar = float | int | str | bool | None

HISTORY_LIMIT = 1000


# -- errors ----------------------------------------------------------------------------------
class RolloutError(ValueError):
    """A request the rollout cannot honour; nothing was changed (an API answers 4xx)."""

    http_status = 400


class InvalidRollout(RolloutError):
    """Bad values: a percent outside 0-100, steps out of order, champion == challenger…"""

    http_status = 422


class UnknownVersion(RolloutError):
    """The model version is not registered."""

    http_status = 404


class RolloutConflict(RolloutError):
    """A rollout is already running, or the one addressed is not the current one."""

    http_status = 409


class NoActiveRollout(RolloutError):
    """The change needs a running rollout and there is none."""

    http_status = 409


class StateUnavailable(RuntimeError):
    """The state backend cannot be reached or is locked for too long (a service answers 503)."""


# -- models ----------------------------------------------------------------------------------
def utcnow() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RolloutState(_Model):
    """One rollout: which versions, how much traffic, where in its steps, how it ended."""

    rollout_id: str = Field(min_length=1)
    champion_version: str = Field(min_length=1)
    challenger_version: str = Field(min_length=1)
    mode: Mode = "canary"
    challenger_percent: float = Field(ge=0, le=100)
    steps: tuple[float, ...] = (5.0, 25.0, 50.0, 100.0)
    step_index: int = Field(0, ge=0)
    salt: str = Field(min_length=1)
    status: Status = "running"
    started_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    revision: int = Field(0, ge=0, description="Store-wide write counter, set by the store.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.champion_version == self.challenger_version:
            raise ValueError(
                f"challenger and champion are the same version {self.champion_version}"
            )
        steps = self.steps
        if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(set(steps)):
            raise ValueError(f"steps must ascend strictly within (0, 100], got {list(steps)}")
        if self.step_index >= len(steps):
            raise ValueError(f"step_index {self.step_index} is beyond the {len(steps)} steps")
        if self.mode == "shadow" and self.challenger_percent != 0:
            raise ValueError("shadow mode sends no live traffic: challenger_percent must be 0")
        return self

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def last_step(self) -> bool:
        return self.step_index == len(self.steps) - 1

    def evolve(self, **changes: Any) -> RolloutState:
        """A validated copy with `changes` (pydantic's model_copy would skip validation)."""
        try:
            return RolloutState.model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            raise InvalidRollout(_first_error(exc)) from exc

    def with_percent(self, percent: float) -> RolloutState:
        """This rollout at `percent` % challenger traffic; InvalidRollout outside 0-100."""
        if not 0 <= percent <= 100:
            raise InvalidRollout(f"challenger_percent must be within 0-100, got {percent}")
        return self.evolve(challenger_percent=float(percent))

    def next_step(self) -> RolloutState:
        """The rollout moved to its next step (and that step's percent)."""
        if self.last_step:
            raise InvalidRollout(f"rollout {self.rollout_id} is already at its last step")
        index = self.step_index + 1
        return self.evolve(step_index=index, challenger_percent=self.steps[index])

    def ended(self, status: Status) -> RolloutState:
        """This rollout ended as `status`; the challenger gets no more traffic."""
        if status == "running":
            raise InvalidRollout("an ended rollout cannot be set running again")
        return self.evolve(status=status, challenger_percent=0.0)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "rollout"
    return f"{where}: {err['msg']}"


def new_rollout(
    champion_version: str | int,
    challenger_version: str | int,
    params: RolloutParams,
    mode: Mode | None = None,
    steps: tuple[float, ...] | list[float] | None = None,
) -> RolloutState:
    """A fresh running rollout (new id and salt) at its first step; InvalidRollout if bad.

    Canary starts at ``steps[0]``; A/B holds ``params.ab_split_percent`` in a single step;
    shadow sends no live traffic (0 %) and has a single step.
    """
    mode = mode or params.mode
    steps = tuple(float(s) for s in (steps if steps is not None else params.steps))
    if mode == "ab":
        steps = (params.ab_split_percent,)
    elif mode == "shadow":
        steps = (100.0,)
    try:
        return RolloutState(
            rollout_id=f"r{utcnow():%Y%m%d%H%M%S}-{secrets.token_hex(3)}",
            champion_version=str(champion_version),
            challenger_version=str(challenger_version),
            mode=mode,
            challenger_percent=0.0 if mode == "shadow" else (steps[0] if steps else 0.0),
            steps=steps,
            salt=secrets.token_hex(8),
        )
    except ValidationError as exc:
        raise InvalidRollout(_first_error(exc)) from exc


class HistoryEvent(_Model):
    """One entry of a rollout's history: who did what, when, why, and on which numbers."""

    rollout_id: str
    at: datetime = Field(default_factory=utcnow)
    actor: str
    action: str
    changes: dict[str, tuple[Any, Any]] = Field(
        default_factory=dict, description="field → (before, after) for every changed field"
    )
    reason: str = ""
    test: str | None = None
    numbers: dict[str, Scalar] = Field(default_factory=dict)


class PromotionIntent(_Model):
    """A change of what serves, recorded first so that a crash can be repaired.

    The state is written first, then the registry's aliases. State: `rollout_id` names the
    running rollout the change ends (as `rollout_status`; ``promoted`` also moves the
    champion), or `champion` is the champion to set outside a rollout (compare-and-set on
    `expected_champion`). Aliases: `after` lists the alias writes in the order they are made
    (a version, or None to delete the alias); `before` the aliases as they were, for an undo.
    The reason, test and numbers go into the history.
    """

    action: Literal["promote", "rollback"]
    model_name: str
    before: dict[str, str | None]
    after: dict[str, str | None]
    rollout_id: str | None = None
    rollout_status: Status | None = None
    champion: str | None = None
    expected_champion: str | None = None
    actor: str = "hearth"
    reason: str = ""
    test: str | None = None
    numbers: dict[str, Scalar] = Field(default_factory=dict)
    at: datetime = Field(default_factory=utcnow)


_UNTRACKED = {"revision", "updated_at"}


def diff(before: RolloutState | None, after: RolloutState) -> dict[str, tuple[Any, Any]]:
    """field → (before, after) for the fields a write changed (bookkeeping left out)."""
    new = after.model_dump(mode="json")
    old = before.model_dump(mode="json") if before is not None else {}
    return {k: (old.get(k), v) for k, v in new.items() if k not in _UNTRACKED and old.get(k) != v}


# -- what serves ------------------------------------------------------------------------------
class Served(_Model):
    """One consistent read of what serves: the champion and the latest rollout.

    `champion_version` is None only before the first champion is adopted (see
    `hearth.rollout.promotion.repair`). While a rollout runs, its champion is the
    store's champion (`StateStore.start` checks it).
    """

    champion_version: str | None = None
    rollout: RolloutState | None = None
    revision: int = Field(0, ge=0, description="The store's write counter at this read.")

    @property
    def running(self) -> RolloutState | None:
        """The running rollout, or None."""
        rollout = self.rollout
        return rollout if rollout is not None and rollout.running else None

    @property
    def champion(self) -> str | None:
        """The version that answers every request no rollout sends to a challenger."""
        running = self.running
        return running.champion_version if running is not None else self.champion_version

    def versions(self) -> dict[str, str]:
        """variant → version of every version that serves now (a running rollout's
        challenger included, in shadow mode too: it scores copies)."""
        out: dict[str, str] = {}
        if self.champion is not None:
            out["champion"] = self.champion
        if self.running is not None:
            out["challenger"] = self.running.challenger_version
        return out


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
    after the write, which every written value carries.
    """

    rollout: RolloutState | None
    champion: str | None
    event: HistoryEvent | None
    revision: int

    def applied_to(self, served: Served) -> Served:
        """What serves once this write is stored."""
        if self.event is None:
            return served
        return Served(
            champion_version=self.champion or served.champion_version,
            rollout=self.rollout or served.rollout,
            revision=self.revision,
        )


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
    served: Served, mutator: Mutator, rollout_id: str | None, event: dict[str, Any]
) -> Write:
    """The write of a change to the running rollout — or a RolloutError."""
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
    return Write(stamp(after, revision), champion, history, revision)


def plan_set_champion(
    served: Served,
    version: str,
    actor: str,
    action: str,
    reason: str,
    expected: str | Unchecked | None,
) -> Write:
    """The write that makes `version` the champion — or a RolloutError."""
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
    return Write(None, version, event, served.revision + 1)


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
    the same on every backend.
    """

    backend: str  # "sqlite" | "redis"

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
    def _transact(self, plan: Callable[[Served], Write]) -> tuple[Served, Write]:
        """Run `plan` on a consistent read and store its `Write` (nothing when it has no
        event) in the same transaction; the read and the write."""

    def start(self, state: RolloutState, actor: str, reason: str = "") -> RolloutState:
        """Make `state` the current rollout; RolloutConflict while another one runs, or when
        its champion is not the store's champion. With no champion yet, the rollout's
        champion becomes the store's (in the same write)."""
        _, write = self._transact(lambda served: plan_start(served, state, actor, reason))
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
    ) -> RolloutState:
        """Compare-and-set on the running rollout: state and history in one transaction.

        `mutator` gets the current state and returns the new one (or the same one: then only
        the history event is written). NoActiveRollout when none runs; RolloutConflict when
        `rollout_id` is given and is not the running one. A RolloutError raised by the
        mutator propagates and nothing is written. Ending the rollout as ``promoted`` makes
        its challenger the champion in the same transaction.
        """
        event = {
            "actor": actor,
            "action": action,
            "reason": reason,
            "numbers": numbers or {},
            "test": test,
        }
        served, write = self._transact(
            lambda served: plan_update(served, mutator, rollout_id, event)
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
    ) -> Served:
        """Compare-and-set on the champion, with a history event (rollout id ``""``).

        RolloutConflict while a rollout runs (promote or roll it back instead), or when
        `expected` is given and is not the champion now (None: "no champion yet"). Setting
        the champion it already is writes nothing. Returns what serves afterwards.
        """
        served, write = self._transact(
            lambda served: plan_set_champion(served, version, actor, action, reason, expected)
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
    def _write_intent(self, document: str | None) -> None:
        """Store (or, with None, delete) the intent document."""

    def intent(self) -> PromotionIntent | None:
        """The registry change in progress, if one was started and not finished."""
        document = self._read_intent()
        return PromotionIntent.model_validate_json(document) if document is not None else None

    def set_intent(self, intent: PromotionIntent | None) -> None:
        """Record (or, with None, clear) the registry change in progress."""
        self._write_intent(intent.model_dump_json() if intent is not None else None)

    @abstractmethod
    def ping(self) -> bool:
        """True when the backend answers; never raises."""

    @abstractmethod
    def close(self) -> None: ...


def events_json(events: list[HistoryEvent]) -> str:
    """The events as a JSON array (for `hearth rollout status --json` and reports)."""
    return json.dumps([e.model_dump(mode="json") for e in events], indent=2)
