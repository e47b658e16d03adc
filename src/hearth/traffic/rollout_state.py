"""Rollout state and its history: the models and their errors.

One `RolloutState` (the latest rollout, running or ended), the append-only `HistoryEvent`s
(who changed what, when and why, with the analysis numbers), a `PromotionIntent` recorded
before a change of what serves, and `Served`: one consistent read of the champion and the
latest rollout. Every gateway replica reads the same state, so all route identically, and a
rollback is one write. Invalid requests raise a `RolloutError` subclass (an admin API maps
them to 4xx) before anything is written. The store that holds all this, and its two
backends, are `hearth.traffic.state_store`, `state_sqlite` and `state_redis`.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hearth.params import RolloutParams

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


class RegistryError(RuntimeError):
    """A call to the model registry's REST API failed: no answer, or an error answer
    (`status`, MLflow's `error_code`). A service answers 503; the alias writes wait."""

    def __init__(self, message: str, status: int | None = None, error_code: str | None = None):
        super().__init__(message)
        self.status, self.error_code = status, error_code


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


@dataclass(frozen=True)
class Decision:
    """Who decided a change of what serves, and why: the actor, a reason, and the test and
    numbers that justified it (an analysis verdict's). A promotion or rollback carries one;
    its history event and its `PromotionIntent` are built from it."""

    actor: str = "hearth"
    reason: str = ""
    test: str | None = None
    numbers: Mapping[str, Scalar] = field(default_factory=dict)

    def because(self, reason: str) -> Decision:
        """This decision, with `reason` when it gave none."""
        return self if self.reason else Decision(self.actor, reason, self.test, self.numbers)

    def fields(self) -> dict[str, Any]:
        """actor, reason, test and numbers as keyword arguments (`StateStore.update`, the
        models below)."""
        return {
            "actor": self.actor,
            "reason": self.reason,
            "test": self.test,
            "numbers": dict(self.numbers),
        }


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
    """The registry half of a change of what serves, still to be made.

    It is stored in the same write as the state change it follows (`StateStore.update` /
    `set_champion` with ``intent=``), so what serves changes at once and the MLflow aliases
    follow when the registry answers (`hearth.rollout.promotion.repair`). State: `rollout_id`
    names the rollout the change ended (as `rollout_status`; ``promoted`` also moved the
    champion), or `champion` is the champion it set outside a rollout (in place of
    `expected_champion`). Aliases: `after` lists the alias writes in the order they are made
    (a version, or None to delete the alias); `only_if` keeps an alias write only while the
    alias still names that version (a rollback drops ``challenger`` only if it still names
    the rolled-back version); `before` the aliases as they were, for an undo ({} when they
    were not read). The decision (who, why, on which numbers) goes into the history.
    """

    action: Literal["promote", "rollback"]
    model_name: str
    before: dict[str, str | None]
    after: dict[str, str | None]
    only_if: dict[str, str] = Field(default_factory=dict)
    rollout_id: str | None = None
    rollout_status: Status | None = None
    champion: str | None = None
    expected_champion: str | None = None
    actor: str = "hearth"
    reason: str = ""
    test: str | None = None
    numbers: dict[str, Scalar] = Field(default_factory=dict)
    at: datetime = Field(default_factory=utcnow)

    @property
    def decision(self) -> Decision:
        return Decision(self.actor, self.reason, self.test, self.numbers)

    def after_pending(self, pending: PromotionIntent | None) -> PromotionIntent:
        """This intent recorded over a `pending` one whose aliases were never written: one
        intent that makes both's alias writes, the newer last (`before` stays the older's)."""
        if pending is None:
            return self
        after = {k: v for k, v in pending.after.items() if k not in self.after}
        only_if = {k: v for k, v in pending.only_if.items() if k not in self.after}
        return self.model_copy(
            update={
                "before": pending.before or self.before,
                "after": after | self.after,
                "only_if": only_if | self.only_if,
            }
        )


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
