"""Rollout state and its history: the model, its errors, and the store protocol.

One `RolloutState` (the latest rollout, running or ended) and an append-only list of
`HistoryEvent`s (who changed what, when and why, with the analysis numbers). Every gateway
replica reads the same state, so all route identically, and a rollback is one write.

Two backends implement `StateStore` (`hearth.traffic.state_sqlite`,
`hearth.traffic.state_redis`); `hearth.traffic.stores.open_state_store` picks one by
`Settings.store_backend` (the same switch as the online feature store).

Writes are compare-and-set: `update` reads the state, applies a pure mutator, and writes the
new state *and* its history event in one transaction, so concurrent writers lose nothing
and the history never disagrees with the state. Invalid requests raise a `RolloutError`
subclass (an admin API maps them to 4xx) before anything is written. The planning functions
below (`plan_start`, `plan_update`) are that shared logic; the backends only run them inside
their own transactions.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, Self

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
    """A registry change about to be made, recorded first so that a crash can be repaired.

    `after` lists the alias writes in the order they are made (a version, or None to delete
    the alias); `before` the aliases as they were, for an undo. `rollout_id` names the
    running rollout the change ends (as `rollout_status`), with the reason, test and numbers
    for its history.
    """

    action: Literal["promote", "rollback"]
    model_name: str
    before: dict[str, str | None]
    after: dict[str, str | None]
    rollout_id: str | None = None
    rollout_status: Status | None = None
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


# -- the protocol ----------------------------------------------------------------------------
Mutator = Callable[[RolloutState], RolloutState]


class StateStore(Protocol):
    """The shared rollout state; every method is safe to call from several threads."""

    backend: str  # "sqlite" | "redis"

    def current(self) -> RolloutState | None:
        """The latest rollout (running or ended), or None if there never was one."""
        ...

    def revision(self) -> int:
        """A counter bumped by every state write: a cheap way to notice a change."""
        ...

    def start(self, state: RolloutState, actor: str, reason: str = "") -> RolloutState:
        """Make `state` the current rollout; RolloutConflict while another one runs."""
        ...

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
        mutator propagates and nothing is written.
        """
        ...

    def history(
        self, rollout_id: str | None = None, limit: int = HISTORY_LIMIT
    ) -> list[HistoryEvent]:
        """The last `limit` events (of one rollout, if given), oldest first."""
        ...

    def intent(self) -> PromotionIntent | None:
        """The registry change in progress, if one was started and not finished."""
        ...

    def set_intent(self, intent: PromotionIntent | None) -> None:
        """Record (or, with None, clear) the registry change in progress."""
        ...

    def ping(self) -> bool:
        """True when the backend answers; never raises."""
        ...

    def close(self) -> None: ...


# -- shared transaction logic ----------------------------------------------------------------
def stamp(state: RolloutState, revision: int) -> RolloutState:
    # Bookkeeping fields are set here, never by callers, so they cannot be forged or stale.
    return RolloutState.model_validate(
        {**state.model_dump(), "revision": revision, "updated_at": utcnow()}
    )


def plan_start(
    current: RolloutState | None, state: RolloutState, revision: int, actor: str, reason: str
) -> tuple[RolloutState, HistoryEvent]:
    """(state to write, event to append) for a start — or a RolloutError."""
    if current is not None and current.running:
        raise RolloutConflict(
            f"rollout {current.rollout_id} (v{current.challenger_version} at "
            f"{current.challenger_percent:g} %) is still running; end it first"
        )
    if not state.running:
        raise InvalidRollout(f"a new rollout must be running, not {state.status}")
    new = stamp(state, revision + 1)
    event = HistoryEvent(
        rollout_id=new.rollout_id,
        actor=actor,
        action="start",
        changes=diff(None, new),
        reason=reason,
    )
    return new, event


def plan_update(
    current: RolloutState | None,
    revision: int,
    mutator: Mutator,
    rollout_id: str | None,
    event: dict[str, Any],
) -> tuple[RolloutState | None, HistoryEvent]:
    """(state to write or None when unchanged, event to append) — or a RolloutError."""
    if current is None or not current.running:
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
    return (stamp(after, revision + 1) if changes else None), history


def events_json(events: list[HistoryEvent]) -> str:
    """The events as a JSON array (for `hearth rollout status --json` and reports)."""
    return json.dumps([e.model_dump(mode="json") for e in events], indent=2)
