"""What the gateway calls: features and models, in this process or in another one.

Two small async protocols (`FeatureClient`, `ModelClient`): the monolith plugs in the store
and the model pool directly (`LocalFeatures`, `LocalModel`, whose blocking calls run off the
event loop, with timeouts), the microservices plug in calls to other processes
(`RemoteFeatures`, `RemoteModel`, `RemoteVersions`, over the async callables of
`hearth.serving.internal_client`). A dependency that cannot answer in time raises
`Unavailable` (503 with Retry-After). Nothing here imports torch or BentoML.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, Protocol, TypeVar

from hearth.features.online import InvalidTransaction, Transaction
from hearth.observability import tracing
from hearth.observability.prometheus import record_feature_lookups, record_model_call
from hearth.schema import TIMESTAMP_FORMAT, TRANSACTION_FIELDS
from hearth.serving.errors import FeaturesUnavailable, ModelUnavailable, NotReady, Unavailable
from hearth.serving.schemas import (
    FeatureRow,
    Score,
    ScoreItem,
)
from hearth.storage.sqlite import WouldBlock

log = logging.getLogger(__name__)

T = TypeVar("T")
A = TypeVar("A")  # what a remote call takes
R = TypeVar("R")
DEFAULT_TIMEOUT_S = 2.0  # Settings.model_timeout_s's default


class FeatureClient(Protocol):
    async def observe(self, txns: Sequence[Transaction]) -> list[FeatureRow]: ...
    async def ready(self) -> bool: ...


class ModelClient(Protocol):
    async def score(self, items: list[ScoreItem]) -> list[Score]: ...
    async def ready(self) -> bool: ...


class Background(Generic[T]):
    """Build something slow (a store, a model pool) in a thread; `get()` once it is done.

    Services construct their dependencies this way so that the HTTP server is live at once
    and /readyz says when loading has finished (or failed, with the reason in the log).
    Once something is built, the heap is settled (`settle_heap`).
    """

    def __init__(self, name: str, build: Callable[[], T]) -> None:
        self.name = name
        self._value: T | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(build,), name=name, daemon=True)
        self._thread.start()

    def _run(self, build: Callable[[], T]) -> None:
        try:
            value = build()
        except Exception as exc:  # reported by ready()/get(), never raised in a thread
            log.exception("%s failed to load", self.name)
            self.error = exc
            return
        settle_heap()  # before it counts as ready: the collection is paid while loading
        self._value = value

    def get(self) -> T:
        if self._value is None:
            raise NotReady(f"{self.name} is {'unavailable' if self.error else 'loading'}")
        return self._value

    @property
    def ready(self) -> bool:
        return self._value is not None

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


def settle_heap() -> None:
    """Collect once, then move every object alive now out of the garbage collector's reach
    (`gc.freeze`): what a loaded service holds (imported modules, torch, the model, the
    store) lives as long as the process, and no collection should walk it again.

    Why: a full (generation-2) collection walks every tracked object. In the monolith that
    is ~500 000 objects after the imports and the model load, and a full collection held
    the GIL, so every thread and the event loop, for 0.16-2 s on the 2-core machine (traced
    during `hearth soak`; the sustained-load tail of #14). The collector still runs on what
    requests allocate afterwards; its full collections now walk only that.
    """
    gc.collect()
    gc.freeze()


# -- in-process dependencies (monolith; the features and model services themselves) -----
def observe_rows(store: Any, txns: Sequence[Transaction], nowait: bool = False) -> list[FeatureRow]:
    """Features of each transaction from its customer's state, updating the state in order.

    `nowait`: only as far as the store goes without waiting (its ``observe_nowait``, for an
    event loop): the rows of a prefix of `txns`, maybe none (a store without it: none)."""
    observe = getattr(store, "observe_nowait", None) if nowait else store.observe
    if observe is None:
        return []
    with tracing.span("features.observe") as current:
        rows = []
        for txn in txns:
            try:
                features, cold = observe(txn)
            except WouldBlock:
                break
            rows.append(FeatureRow(features=features, cold_start=cold))
        _observed(current, rows)
    return rows


def _observed(span: Any, rows: list[FeatureRow]) -> None:
    if span is not None:
        span.set_attribute(tracing.ATTR_ITEMS, len(rows))
        span.set_attribute("hearth.cold_starts", sum(r.cold_start for r in rows))
        span.set_attribute(tracing.ATTR_REQUEST_ID, tracing.baggage_request_id() or "")
    record_feature_lookups(r.cold_start for r in rows)


async def observe_from_loop(
    calls: OffLoop, unavailable: type[Unavailable], store: Any, txns: Sequence[Transaction]
) -> list[FeatureRow]:
    """`observe_rows` called from an event loop: on the loop as far as the store goes without
    waiting, the rest in `calls`' threads (where a store may wait on a lock or a network).

    Why not always a thread: with the SQLite store, the hand-off to a thread and back cost
    more than the observe itself. One monolith worker under wrk at c=32 (2 cores): 931 req/s
    at 1.18 ms of CPU per request through the thread pool, 2 157-2 224 req/s at 0.45 ms on
    the loop; the GIL passed between the loop's core and the thread's at every request.

    A store with ``observe_async`` (Redis: a network round trip, never a lock) is awaited
    on the loop instead, for `calls`' timeout at most."""
    if (observe := getattr(store, "observe_async", None)) is not None:
        return await _observe_async(observe, txns, unavailable, calls)
    rows = observe_rows(store, txns, nowait=True)
    if len(rows) < len(txns):
        rows += await calls.run(unavailable, observe_rows, store, txns[len(rows) :])
    return rows


async def _observe_async(
    observe: Callable[[Transaction], Awaitable[tuple[dict[str, Any], bool]]],
    txns: Sequence[Transaction],
    unavailable: type[Unavailable],
    calls: OffLoop,
) -> list[FeatureRow]:
    with tracing.span("features.observe") as current:
        rows = []
        try:
            async with asyncio.timeout(calls.timeout_s):
                for txn in txns:
                    features, cold = await observe(txn)
                    rows.append(FeatureRow(features=features, cold_start=cold))
        except TimeoutError as exc:
            raise unavailable(f"{calls.name} did not answer within {calls.timeout_s:g}s") from exc
        _observed(current, rows)
    return rows


class OffLoop:
    """Blocking calls (a store, a log) in a small thread pool of their own, each bounded by
    a timeout, so that the event loop never waits on SQLite's busy timeout or a slow Redis.

    A call that does not answer within `timeout_s` raises the caller's `Unavailable` type
    (→ 503 + Retry-After); its thread finishes on its own. A call still queued behind
    stalled ones when its deadline passes is not started at all: its caller has given up,
    and running it later would only lengthen the backlog.
    """

    def __init__(self, name: str, timeout_s: float = DEFAULT_TIMEOUT_S, workers: int = 8) -> None:
        self.name, self.timeout_s = name, timeout_s
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix=name)

    async def run(self, unavailable: type[Unavailable], fn: Callable[..., T], *args: Any) -> T:
        deadline = time.monotonic() + self.timeout_s
        context = contextvars.copy_context()  # spans, baggage and the request id follow

        def call() -> T:
            if time.monotonic() > deadline:
                raise unavailable(f"{self.name}: not started, its caller gave up")
            return context.run(fn, *args)

        future = asyncio.get_running_loop().run_in_executor(self._pool, call)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await future
        except TimeoutError as exc:
            raise unavailable(f"{self.name} did not answer within {self.timeout_s:g}s") from exc

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class LocalFeatures:
    """The online store in this process, called off the event loop (`OffLoop`)."""

    def __init__(self, store: Background[Any], timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.store = store
        self.calls = OffLoop("feature-store", timeout_s)

    async def observe(self, txns: Sequence[Transaction]) -> list[FeatureRow]:
        from hearth.features.store import StoreError  # lazy: pandas; a remote store needs none

        try:
            store = self.store.get()
            return await observe_from_loop(self.calls, FeaturesUnavailable, store, txns)
        except (NotReady, StoreError) as exc:
            raise FeaturesUnavailable(str(exc)) from exc

    async def ready(self) -> bool:
        return self.store.ready


class LocalModel:
    """The model pool in this process; a forward pass never runs on the event loop.

    By default items go through a batching lane (`hearth.serving.batching.Batcher`: one
    thread; what queues during a forward pass goes into the next; a batch of at most
    `INLINE_MAX_ITEMS` scored on the loop), as in the model service.
    `threaded`: every call in a worker thread of its own instead. The challenger lane is, so
    that a slow challenger (or a drill's injected latency) never holds the champion's lane.
    Either way a call slower than `timeout_s` answers `ModelUnavailable` (→ 503).
    """

    def __init__(
        self, pool: Background[Any], threaded: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        # lazy: only where a pool scores here
        from hearth.serving.batching import INLINE_MAX_ITEMS, Batcher

        self.pool = pool
        self.threaded = threaded
        self.timeout_s = timeout_s
        self.lane = (
            None
            if threaded
            else Batcher(
                "champion", self._score, shed_after_s=timeout_s, inline_max_items=INLINE_MAX_ITEMS
            )
        )

    def _score(self, items: list[ScoreItem]) -> list[Score]:
        scores: list[Score] = self.pool.get().score(items)
        return scores

    async def score(self, items: list[ScoreItem]) -> list[Score]:
        if not self.pool.ready:
            try:
                self.pool.get()
            except NotReady as exc:
                raise ModelUnavailable(str(exc)) from exc
        started = time.perf_counter()
        with tracing.span("model.score", {tracing.ATTR_ITEMS: len(items)}) as current:
            try:
                async with asyncio.timeout(self.timeout_s):
                    if self.lane is not None:
                        result = await self.lane.submit(items)
                    else:
                        result = await asyncio.to_thread(self._score, items)
            except TimeoutError as exc:
                raise ModelUnavailable(f"model did not answer within {self.timeout_s:g}s") from exc
            tracing.set_score_attributes(current, result)
        record_model_call(result, time.perf_counter() - started)
        return result

    async def ready(self) -> bool:
        return self.pool.ready and bool(self.pool.get().ready)


# -- other processes (microservices) ------------------------------------------------------
class _RemoteService(Generic[A, R]):
    """A service in another process, reached through async callables (`call`: its one
    operation, `ready`): every call is bounded by `timeout_s`, and any failure to answer
    becomes `unavailable` (→ 503)."""

    unavailable: type[Unavailable]
    what: str

    def __init__(
        self,
        call: Callable[[A], Awaitable[R]],
        ready: Callable[[], Awaitable[bool]],
        timeout_s: float,
    ) -> None:
        self._remote, self._ready, self.timeout_s = call, ready, timeout_s

    async def _call(self, payload: A) -> R:
        try:
            async with asyncio.timeout(self.timeout_s):  # no extra task, unlike wait_for
                return await self._remote(payload)
        except (Unavailable, InvalidTransaction):  # the service refused the input: 422
            raise
        except TimeoutError as exc:
            raise self.unavailable(
                f"{self.what} did not answer within {self.timeout_s:g}s"
            ) from exc
        except Exception as exc:  # connection refused, 5xx, a dying process: all "down"
            # The details are for the log; the client learns only that it should retry.
            log.warning("%s failed: %s: %s", self.what, type(exc).__name__, exc)
            raise self.unavailable(f"{self.what} unavailable") from exc

    async def ready(self) -> bool:
        return await _ready(self._ready, self.timeout_s)


class RemoteFeatures(_RemoteService[list[dict[str, Any]], list[FeatureRow]]):
    """A features service in another process: `call` is its observe."""

    unavailable, what = FeaturesUnavailable, "features service"

    async def observe(self, txns: Sequence[Transaction]) -> list[FeatureRow]:
        # The hop's client parses and validates the answer (hearth.serving.internal_client).
        return await self._call([transaction_payload(t) for t in txns])


class RemoteModel(_RemoteService[list[ScoreItem], list[Score]]):
    """A model service in another process: `call` is its score."""

    unavailable, what = ModelUnavailable, "model service"

    async def score(self, items: list[ScoreItem]) -> list[Score]:
        items = tracing.stamp_items(items)  # the model service parents its spans by these
        return await self._call(items)


class RemoteVersions:
    """The model versions a model service has loaded, polled every `interval_s` on the
    serving loop: the microservices gateway's `RolloutRouter(loaded=...)`.

    `has` answers from memory: no version counts as loaded until the service has said so.
    A service that cannot say (one from before this route) has every version count as
    loaded, as before; when a poll fails, the last answer stays in force.
    """

    def __init__(
        self,
        fetch: Callable[[], Awaitable[list[str] | None]],
        interval_s: float = 0.5,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._fetch, self.interval_s, self.timeout_s = fetch, interval_s, timeout_s
        self._loaded: frozenset[str] = frozenset()
        self._supported = True
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def has(self, version: str) -> bool:
        self._ensure_polling()
        return version in self._loaded or not self._supported

    def _ensure_polling(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop (a tool): nothing to poll from
            return
        if self._task is None or self._task.done() or self._loop is not loop:
            self._loop = loop
            self._task = loop.create_task(self._poll(), name="model-versions")

    async def _poll(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.timeout_s):
                    versions = await self._fetch()
                self._supported = versions is not None
                self._loaded = frozenset(versions or ())
            except Exception as exc:  # the service is down or busy: keep the last answer
                log.debug("model versions unknown: %s", exc)
            await asyncio.sleep(self.interval_s)


async def _ready(ready: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    try:
        return bool(await asyncio.wait_for(ready(), timeout_s))
    except Exception:  # a service that cannot say it is ready is not
        return False


def transaction_payload(txn: Transaction) -> dict[str, Any]:
    """A Transaction as the JSON-able raw fields (the inverse of Transaction.from_mapping)."""
    payload = {name: getattr(txn, name) for name in TRANSACTION_FIELDS}
    payload["timestamp"] = txn.timestamp.strftime(TIMESTAMP_FORMAT)
    return payload
