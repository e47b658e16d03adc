"""Rollout state and its history, kept outside the serving processes.

One `RolloutState` (the latest rollout, running or ended) and an append-only list of
`HistoryEvent`s (who changed what, when and why, with the analysis numbers). Every gateway
replica reads the same state, so all route identically, and a rollback is one write.

Two backends behind the `StateStore` protocol, chosen by `Settings.store_backend` (the same
switch as the online feature store):

- ``sqlite`` (default): one file, ``<home>/rollout.sqlite``, WAL mode; writes run in
  ``BEGIN IMMEDIATE`` transactions, so a read-modify-write across processes is atomic;
- ``redis``: keys under ``hearth:rollout:``; writes are ``WATCH``/``MULTI`` transactions
  retried on conflict.

Writes are compare-and-set: `update` reads the state, applies a pure mutator, and writes the
new state *and* its history event in one transaction, so concurrent writers lose nothing
and the history never disagrees with the state. Invalid requests raise a `RolloutError`
subclass (an admin API maps them to 4xx) before anything is written.
"""

from __future__ import annotations

import json
import random
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hearth.config import RolloutParams, Settings

Mode = Literal["canary", "ab", "shadow"]
Status = Literal["running", "promoted", "rolled_back", "aborted"]
Scalar = float | int | str | bool | None

REDIS_PREFIX = "hearth:rollout:"
STATE_FILE = "rollout.sqlite"
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
def _stamp(state: RolloutState, revision: int) -> RolloutState:
    # Bookkeeping fields are set here, never by callers, so they cannot be forged or stale.
    return RolloutState.model_validate(
        {**state.model_dump(), "revision": revision, "updated_at": utcnow()}
    )


def _plan_start(
    current: RolloutState | None, state: RolloutState, revision: int, actor: str, reason: str
) -> tuple[RolloutState, HistoryEvent]:
    if current is not None and current.running:
        raise RolloutConflict(
            f"rollout {current.rollout_id} (v{current.challenger_version} at "
            f"{current.challenger_percent:g} %) is still running; end it first"
        )
    if not state.running:
        raise InvalidRollout(f"a new rollout must be running, not {state.status}")
    new = _stamp(state, revision + 1)
    event = HistoryEvent(
        rollout_id=new.rollout_id,
        actor=actor,
        action="start",
        changes=diff(None, new),
        reason=reason,
    )
    return new, event


def _plan_update(
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
    return (_stamp(after, revision + 1) if changes else None), history


# -- SQLite ----------------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollout_state (
    id INTEGER PRIMARY KEY CHECK (id = 1), revision INTEGER NOT NULL, state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, rollout_id TEXT NOT NULL, event TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rollout_history_id ON rollout_history (rollout_id, seq);
CREATE TABLE IF NOT EXISTS rollout_intent (
    id INTEGER PRIMARY KEY CHECK (id = 1), intent TEXT NOT NULL
);
"""


class SQLiteStateStore:
    """The state in one SQLite file (WAL); one connection per object, serialised by a lock.

    Within a process the lock orders calls; across processes ``BEGIN IMMEDIATE`` takes the
    write lock before the read, so two writers can never both read the old state.
    """

    backend = "sqlite"

    def __init__(self, path: Path, timeout_s: float = 5.0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: no implicit transactions; BEGIN IMMEDIATE is ours to issue.
        self._conn: sqlite3.Connection | None = sqlite3.connect(
            str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False
        )
        with self._locked() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
            # FULL: a rollback or promotion must survive a power cut, and writes are rare.
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StateUnavailable(f"rollout state {self.path} is closed")
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StateUnavailable(f"rollout state {self.path}: {exc}") from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._locked() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _read(conn: sqlite3.Connection) -> tuple[RolloutState | None, int]:
        row = conn.execute("SELECT state, revision FROM rollout_state WHERE id = 1").fetchone()
        if row is None:
            return None, 0
        return RolloutState.model_validate_json(row[0]), int(row[1])

    @staticmethod
    def _save(conn: sqlite3.Connection, state: RolloutState | None, event: HistoryEvent) -> None:
        if state is not None:
            conn.execute(
                "INSERT OR REPLACE INTO rollout_state (id, revision, state) VALUES (1, ?, ?)",
                (state.revision, state.model_dump_json()),
            )
        conn.execute(
            "INSERT INTO rollout_history (rollout_id, event) VALUES (?, ?)",
            (event.rollout_id, event.model_dump_json()),
        )

    def current(self) -> RolloutState | None:
        with self._locked() as conn:
            return self._read(conn)[0]

    def revision(self) -> int:
        with self._locked() as conn:
            row = conn.execute("SELECT revision FROM rollout_state WHERE id = 1").fetchone()
        return int(row[0]) if row else 0

    def start(self, state: RolloutState, actor: str, reason: str = "") -> RolloutState:
        with self._write() as conn:
            current, revision = self._read(conn)
            new, event = _plan_start(current, state, revision, actor, reason)
            self._save(conn, new, event)
        return new

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
        event = {
            "actor": actor,
            "action": action,
            "reason": reason,
            "numbers": numbers or {},
            "test": test,
        }
        with self._write() as conn:
            current, revision = self._read(conn)
            new, history = _plan_update(current, revision, mutator, rollout_id, event)
            self._save(conn, new, history)
        result = new or current
        assert result is not None  # _plan_update refuses a missing rollout
        return result

    def history(
        self, rollout_id: str | None = None, limit: int = HISTORY_LIMIT
    ) -> list[HistoryEvent]:
        where, args = ("WHERE rollout_id = ?", (rollout_id,)) if rollout_id else ("", ())
        with self._locked() as conn:
            rows = conn.execute(
                f"SELECT event FROM rollout_history {where} ORDER BY seq DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [HistoryEvent.model_validate_json(r[0]) for r in reversed(rows)]

    def intent(self) -> PromotionIntent | None:
        with self._locked() as conn:
            row = conn.execute("SELECT intent FROM rollout_intent WHERE id = 1").fetchone()
        return PromotionIntent.model_validate_json(row[0]) if row else None

    def set_intent(self, intent: PromotionIntent | None) -> None:
        with self._write() as conn:
            if intent is None:
                conn.execute("DELETE FROM rollout_intent")
            else:
                conn.execute(
                    "INSERT OR REPLACE INTO rollout_intent (id, intent) VALUES (1, ?)",
                    (intent.model_dump_json(),),
                )

    def ping(self) -> bool:
        try:
            with self._locked() as conn:
                conn.execute("SELECT 1").fetchone()
        except StateUnavailable:
            return False
        return True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# -- Redis -----------------------------------------------------------------------------------
class RedisStateStore:
    """The state under ``<prefix>state``/``revision``/``history``/``intent`` in Redis.

    Writes WATCH the state and revision keys, compute the new state, then MULTI/EXEC the
    state, the revision and the history event together; a concurrent write aborts the EXEC
    and the attempt is recomputed from the new state.
    """

    backend = "redis"

    def __init__(
        self, url: str, prefix: str = REDIS_PREFIX, timeout_s: float = 2.0, max_attempts: int = 200
    ) -> None:
        # Imported here: SQLite users (the default) never load redis-py.
        import redis

        self._redis = redis
        self.url = url
        self.max_attempts = max_attempts
        self._keys = {k: prefix + k for k in ("state", "revision", "history", "intent")}
        self._client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )

    @contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except self._redis.RedisError as exc:
            raise StateUnavailable(f"rollout state on Redis: {exc}") from exc

    def _read(self, client: Any) -> tuple[RolloutState | None, int]:
        raw, rev = client.mget(self._keys["state"], self._keys["revision"])
        state = RolloutState.model_validate_json(raw) if raw is not None else None
        return state, int(rev or 0)

    def current(self) -> RolloutState | None:
        with self._translate():
            return self._read(self._client)[0]

    def revision(self) -> int:
        with self._translate():
            return int(self._client.get(self._keys["revision"]) or 0)

    def _transact(
        self, plan: Callable[[RolloutState | None, int], tuple[RolloutState | None, HistoryEvent]]
    ) -> tuple[RolloutState | None, RolloutState | None]:
        """Run `plan` on a consistent read and write its result atomically; (before, after)."""
        with self._translate():
            for attempt in range(self.max_attempts):
                with self._client.pipeline(transaction=True) as pipe:
                    try:
                        pipe.watch(self._keys["state"], self._keys["revision"])
                        current, revision = self._read(pipe)
                        new, event = plan(current, revision)
                        pipe.multi()
                        if new is not None:
                            pipe.set(self._keys["state"], new.model_dump_json())
                            pipe.set(self._keys["revision"], new.revision)
                        pipe.rpush(self._keys["history"], event.model_dump_json())
                        pipe.execute()
                        return current, new
                    except self._redis.WatchError:
                        pass
                # Jittered backoff spreads contending writers out.
                time.sleep(random.uniform(0, min(0.02, 0.0005 * 2**attempt)))
        raise StateUnavailable(f"gave up after {self.max_attempts} conflicting writes in a row")

    def start(self, state: RolloutState, actor: str, reason: str = "") -> RolloutState:
        _, new = self._transact(lambda cur, rev: _plan_start(cur, state, rev, actor, reason))
        assert new is not None  # _plan_start always writes
        return new

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
        event = {
            "actor": actor,
            "action": action,
            "reason": reason,
            "numbers": numbers or {},
            "test": test,
        }
        before, new = self._transact(
            lambda cur, rev: _plan_update(cur, rev, mutator, rollout_id, event)
        )
        result = new or before
        assert result is not None  # _plan_update refuses a missing rollout
        return result

    def history(
        self, rollout_id: str | None = None, limit: int = HISTORY_LIMIT
    ) -> list[HistoryEvent]:
        with self._translate():
            # Histories are small (tens of events per rollout); filtering here keeps one key.
            raw = self._client.lrange(self._keys["history"], 0, -1)
        events = [HistoryEvent.model_validate_json(r) for r in raw]
        if rollout_id is not None:
            events = [e for e in events if e.rollout_id == rollout_id]
        return events[-limit:] if limit else []

    def intent(self) -> PromotionIntent | None:
        with self._translate():
            raw = self._client.get(self._keys["intent"])
        return PromotionIntent.model_validate_json(raw) if raw is not None else None

    def set_intent(self, intent: PromotionIntent | None) -> None:
        with self._translate():
            if intent is None:
                self._client.delete(self._keys["intent"])
            else:
                self._client.set(self._keys["intent"], intent.model_dump_json())

    def ping(self) -> bool:
        try:
            return bool(self._client.ping())
        except (self._redis.RedisError, OSError):
            return False

    def close(self) -> None:
        self._client.close()


# -- opening ---------------------------------------------------------------------------------
def state_path(settings: Settings) -> Path:
    """Where the SQLite backend keeps the rollout state."""
    return settings.home_abs / STATE_FILE


def open_state_store(settings: Settings) -> StateStore:
    """The rollout state store chosen by `settings.store_backend`; close it when done."""
    if settings.store_backend == "redis":
        return RedisStateStore(settings.redis_url)
    return SQLiteStateStore(state_path(settings))


def events_json(events: list[HistoryEvent]) -> str:
    """The events as a JSON array (for `hearth rollout status --json` and reports)."""
    return json.dumps([e.model_dump(mode="json") for e in events], indent=2)
