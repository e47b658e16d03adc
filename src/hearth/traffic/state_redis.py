"""The rollout state in Redis: keys under ``hearth:rollout:``.

Writes are compare-and-set transactions (`hearth.storage.redis.compare_and_set`): WATCH the
state, champion and revision keys, plan the write on what was read, then MULTI/EXEC the
rollout, the champion, the revision and the history event together; a concurrent write
aborts the EXEC and the attempt is planned again on the new state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from redis.client import Pipeline

from hearth.storage.redis import Update, compare_and_set, connect, translate_errors
from hearth.storage.redis import ping as redis_ping
from hearth.traffic.heartbeat import Heartbeat
from hearth.traffic.rollout_state import Served, StateUnavailable
from hearth.traffic.state_store import Plan, StateStore, StoredServed, Write, decode_intent

T = TypeVar("T")
REDIS_PREFIX = "hearth:rollout:"
_WHERE = "rollout state on Redis"


class RedisStateStore(StateStore):
    """The state under ``<prefix>state``/``champion``/``revision``/``history``/``intent``;
    the serving processes' heartbeats in the hash ``<prefix>heartbeats`` (process → JSON)."""

    backend = "redis"

    def __init__(
        self, url: str, prefix: str = REDIS_PREFIX, timeout_s: float = 1.0, max_attempts: int = 200
    ) -> None:
        self.url = url
        self.max_attempts = max_attempts
        names = ("state", "champion", "revision", "history", "intent", "heartbeats")
        self._keys = {k: prefix + k for k in names}
        self._client = connect(url, timeout_s=timeout_s)

    def _stored(self, client: Any) -> StoredServed:
        rollout, champion, revision = client.mget(
            self._keys["state"], self._keys["champion"], self._keys["revision"]
        )
        return StoredServed(champion, rollout, revision)

    def _read_served(self) -> StoredServed:
        with translate_errors(StateUnavailable, _WHERE):
            return self._stored(self._client)

    def revision(self) -> int:
        with translate_errors(StateUnavailable, _WHERE):
            return int(self._client.get(self._keys["revision"]) or 0)

    def _queue(self, pipe: Pipeline, write: Write) -> None:
        if write.rollout is not None:
            pipe.set(self._keys["state"], write.rollout.model_dump_json())
        if write.champion is not None:
            pipe.set(self._keys["champion"], write.champion)
        pipe.set(self._keys["revision"], write.revision)
        assert write.event is not None  # a write without an event is not queued
        pipe.rpush(self._keys["history"], write.event.model_dump_json())
        if write.intent is not None:
            pipe.set(self._keys["intent"], write.intent.model_dump_json())

    def _cas(self, watched: tuple[str, ...], compute: Callable[[Pipeline], Update[T]]) -> T:
        return compare_and_set(
            self._client,
            [self._keys[k] for k in watched],
            compute,
            error=StateUnavailable,
            where=_WHERE,
            max_attempts=self.max_attempts,
            backoff_base_s=0.0005,
            backoff_cap_s=0.02,
        )

    def _transact(self, plan: Plan) -> tuple[Served, Write]:
        def compute(pipe: Pipeline) -> Update[tuple[Served, Write]]:
            served = self._stored(pipe).decoded()
            write = plan(served, decode_intent(pipe.get(self._keys["intent"])))
            if write.event is None:
                return Update((served, write))
            return Update((served, write), lambda p: self._queue(p, write))

        return self._cas(("state", "champion", "revision", "intent"), compute)

    def _read_history(self, rollout_id: str | None, limit: int) -> list[str | bytes]:
        # Histories are small (tens of events per rollout): one list, filtered by the base.
        with translate_errors(StateUnavailable, _WHERE):
            return list(self._client.lrange(self._keys["history"], 0, -1))

    def _read_intent(self) -> str | bytes | None:
        with translate_errors(StateUnavailable, _WHERE):
            document: str | bytes | None = self._client.get(self._keys["intent"])
            return document

    def _write_intent(
        self, document: str | None, check: Callable[[str | bytes | None], None]
    ) -> None:
        key = self._keys["intent"]

        def compute(pipe: Pipeline) -> Update[None]:
            check(pipe.get(key))
            if document is None:
                return Update(None, lambda p: p.delete(key))
            return Update(None, lambda p: p.set(key, document))

        self._cas(("intent",), compute)

    def _write_heartbeat(
        self, process: str, document: str, seen_at: float, forget_before: float
    ) -> None:
        key = self._keys["heartbeats"]
        with translate_errors(StateUnavailable, _WHERE):
            self._client.hset(key, process, document)
            # A handful of processes: finding the forgotten ones by reading them all is cheap.
            stale = [
                name
                for name, stored in self._client.hgetall(key).items()
                if Heartbeat.model_validate_json(stored).seen_at.timestamp() < forget_before
            ]
            if stale:
                self._client.hdel(key, *stale)

    def _read_heartbeats(self) -> list[str | bytes]:
        with translate_errors(StateUnavailable, _WHERE):
            return list(self._client.hvals(self._keys["heartbeats"]))

    def ping(self) -> bool:
        return redis_ping(self._client)

    def close(self) -> None:
        self._client.close()
