"""The rollout state in Redis: keys under ``hearth:rollout:``.

Writes are ``WATCH``/``MULTI`` transactions retried on conflict.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from hearth.traffic.rollout_state import (
    HISTORY_LIMIT,
    HistoryEvent,
    Mutator,
    PromotionIntent,
    RolloutState,
    Scalar,
    StateUnavailable,
    plan_start,
    plan_update,
)

REDIS_PREFIX = "hearth:rollout:"


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
        _, new = self._transact(lambda cur, rev: plan_start(cur, state, rev, actor, reason))
        assert new is not None  # plan_start always writes
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
            lambda cur, rev: plan_update(cur, rev, mutator, rollout_id, event)
        )
        result = new or before
        assert result is not None  # plan_update refuses a missing rollout
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
