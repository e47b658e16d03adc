"""The gateway: validate → features → route → model → decision → response with lineage.

`Gateway` holds the logic both topologies share. It talks to features and models through
two small async protocols, so the monolith plugs in the store and the model pool directly
(`LocalFeatures`, `LocalModel`) and the microservices plug in calls to other processes
(`RemoteFeatures`, `RemoteModel`, over async callables; `hearth.serving.internal_client` has them).
Nothing here imports torch or BentoML: the gateway's image stays small.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, Protocol, TypeVar

from hearth.config import CHALLENGER
from hearth.features.online import InvalidTransaction, Transaction
from hearth.observability import tracing
from hearth.observability.prometheus import record_feature_lookups, record_model_call
from hearth.schema import TIMESTAMP_FORMAT, TRANSACTION_FIELDS
from hearth.serving.errors import FeaturesUnavailable, ModelUnavailable, NotReady, Unavailable
from hearth.serving.routing import ChampionRouter, Router
from hearth.serving.schemas import (
    FeatureRow,
    FeedbackIn,
    FeedbackOut,
    PredictionOut,
    Score,
    ScoreItem,
    TransactionIn,
)
from hearth.serving.scoring import Answer, Attempt, score_routed, try_challenger
from hearth.traffic.assignment import Route
from hearth.traffic.prediction_log import (
    PredictionLog,
    PredictionLogUnavailable,
    PredictionLogWriter,
    PredictionRecord,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
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
    """

    def __init__(self, name: str, build: Callable[[], T]) -> None:
        self.name = name
        self._value: T | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(build,), name=name, daemon=True)
        self._thread.start()

    def _run(self, build: Callable[[], T]) -> None:
        try:
            self._value = build()
        except Exception as exc:  # reported by ready()/get(), never raised in a thread
            log.exception("%s failed to load", self.name)
            self.error = exc

    def get(self) -> T:
        if self._value is None:
            raise NotReady(f"{self.name} is {'unavailable' if self.error else 'loading'}")
        return self._value

    @property
    def ready(self) -> bool:
        return self._value is not None

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)


# -- in-process dependencies (monolith; the features and model services themselves) -----
def observe_rows(store: Any, txns: Sequence[Transaction]) -> list[FeatureRow]:
    """Features of each transaction from its customer's state, updating the state in order."""
    with tracing.span("features.observe") as current:
        rows = []
        for txn in txns:
            features, cold = store.observe(txn)
            rows.append(FeatureRow(features=features, cold_start=cold))
        if current is not None:
            current.set_attribute(tracing.ATTR_ITEMS, len(rows))
            current.set_attribute("hearth.cold_starts", sum(r.cold_start for r in rows))
            current.set_attribute(tracing.ATTR_REQUEST_ID, tracing.baggage_request_id() or "")
    record_feature_lookups(r.cold_start for r in rows)
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
            return await self.calls.run(FeaturesUnavailable, observe_rows, store, txns)
        except (NotReady, StoreError) as exc:
            raise FeaturesUnavailable(str(exc)) from exc

    async def ready(self) -> bool:
        return self.store.ready


class LocalModel:
    """The model pool in this process; a forward pass never runs on the event loop.

    By default items go through a batching lane (`hearth.serving.batching.Batcher`: one
    thread; what queues during a forward pass goes into the next), as in the model service.
    `threaded`: every call in a worker thread of its own instead. The challenger lane is, so
    that a slow challenger (or a drill's injected latency) never holds the champion's lane.
    Either way a call slower than `timeout_s` answers `ModelUnavailable` (→ 503).
    """

    def __init__(
        self, pool: Background[Any], threaded: bool = False, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        from hearth.serving.batching import Batcher  # lazy: only where a pool scores here

        self.pool = pool
        self.threaded = threaded
        self.timeout_s = timeout_s
        self.lane = None if threaded else Batcher("champion", self._score, shed_after_s=timeout_s)

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
async def _call(
    call: Awaitable[Any], timeout_s: float, unavailable: type[Unavailable], what: str
) -> Any:
    """Await a remote call; any failure to answer becomes `unavailable` (→ 503)."""
    try:
        async with asyncio.timeout(timeout_s):  # no extra task per call, unlike wait_for
            return await call
    except (Unavailable, InvalidTransaction):  # the service refused the input: 422, not 503
        raise
    except TimeoutError as exc:
        raise unavailable(f"{what} did not answer within {timeout_s:g}s") from exc
    except Exception as exc:  # connection refused, 5xx, a dying process: all "down"
        # The details are for the log; the client learns only that it should retry.
        log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
        raise unavailable(f"{what} unavailable") from exc


class RemoteFeatures:
    """A features service in another process, called through async callables."""

    def __init__(
        self,
        observe: Callable[[list[dict[str, Any]]], Awaitable[list[FeatureRow]]],
        ready: Callable[[], Awaitable[bool]],
        timeout_s: float,
    ) -> None:
        self._observe, self._ready, self.timeout_s = observe, ready, timeout_s

    async def observe(self, txns: Sequence[Transaction]) -> list[FeatureRow]:
        payload = [transaction_payload(t) for t in txns]
        # The hop's client parses and validates the answer (hearth.serving.internal_client).
        rows: list[FeatureRow] = await _call(
            self._observe(payload), self.timeout_s, FeaturesUnavailable, "features service"
        )
        return rows

    async def ready(self) -> bool:
        return await _ready(self._ready, self.timeout_s)


class RemoteModel:
    """A model service in another process, called through async callables."""

    def __init__(
        self,
        score: Callable[[list[ScoreItem]], Awaitable[list[Score]]],
        ready: Callable[[], Awaitable[bool]],
        timeout_s: float,
    ) -> None:
        self._score, self._ready, self.timeout_s = score, ready, timeout_s

    async def score(self, items: list[ScoreItem]) -> list[Score]:
        items = tracing.stamp_items(items)  # the model service parents its spans by these
        scores: list[Score] = await _call(
            self._score(items), self.timeout_s, ModelUnavailable, "model service"
        )
        return scores

    async def ready(self) -> bool:
        return await _ready(self._ready, self.timeout_s)


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


# -- the gateway --------------------------------------------------------------------------
# Shadow copies wait on the challenger off the response path; past this many in flight, new
# copies are skipped (and counted) so that a slow challenger cannot pile up memory.
MAX_SHADOW_IN_FLIGHT = 256
DEFAULT_CHALLENGER_TIMEOUT_S = 0.5
# A response waits this long at most for its prediction-log entries to be committed (the
# usual commit takes well under a millisecond); a log that fails is never waited for.
LOG_WAIT_S = 0.05


class PredictionLogDown(Unavailable):
    """The prediction log cannot take a label now (feedback answers 503)."""


class Gateway:
    """Scores transactions and records predictions and feedback; one per gateway process.

    `model` answers champion items; `challenger_model` (default: `model`) is the lane for
    challenger items and shadow copies, cut off after `challenger_timeout_s`.
    """

    def __init__(
        self,
        features: FeatureClient,
        model: ModelClient,
        predictions: Background[PredictionLog],
        router: Router | None = None,
        challenger_model: ModelClient | None = None,
        challenger_timeout_s: float = DEFAULT_CHALLENGER_TIMEOUT_S,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.features = features
        self.model = model
        self.challenger_model = challenger_model or model
        self.challenger_timeout_s = challenger_timeout_s
        self.predictions = predictions
        # Scored requests log through the writer: a failing log never fails them.
        self.log_writer = PredictionLogWriter(predictions.get)
        self._log_calls = OffLoop("prediction-log", timeout_s, workers=2)
        self.router = router or ChampionRouter()
        self._shadows: set[asyncio.Task[None]] = set()
        self.shadow_skipped = 0

    async def ready(self) -> bool:
        """Ready when the store, the model and the prediction log are all loaded."""
        if not self.predictions.ready:
            return False
        features, model = await asyncio.gather(self.features.ready(), self.model.ready())
        return features and model

    async def predict(
        self, transactions: Sequence[TransactionIn], request_id: str | None = None
    ) -> list[PredictionOut]:
        """Score transactions in order; the features of each see the ones before it."""
        request_id = request_id or uuid.uuid4().hex
        attributes = {tracing.ATTR_REQUEST_ID: request_id, tracing.ATTR_ITEMS: len(transactions)}
        with (
            tracing.request_scope(request_id),
            tracing.span("gateway.predict", attributes) as current,
        ):
            out = await self._predict(transactions, request_id)
            tracing.set_score_attributes(current, out)
        return out

    async def _predict(
        self, transactions: Sequence[TransactionIn], request_id: str
    ) -> list[PredictionOut]:
        txns = [t.to_transaction() for t in transactions]
        # The store counts a transaction when its features are read (observe is atomic), so
        # a transaction whose scoring then fails still counts: it did happen.
        rows = await self.features.observe(txns)
        routes = [self.router.route(t) for t in txns]
        features = [r.features for r in rows]
        answers = await score_routed(
            routes, features, self.model, self.challenger_model, self.challenger_timeout_s
        )
        out = [
            PredictionOut(
                transaction_id=t.transaction_id,
                fraud_probability=float(a.score.probability or 0.0),
                decision=a.score.decision or "review",
                variant=a.score.variant,
                model_version=a.score.model_version,
                data_version=a.score.data_version,
                request_id=request_id,
                cold_start=r.cold_start,
            )
            for t, r, a in zip(txns, rows, answers, strict=True)
        ]
        await self._log(answer_records(txns, routes, features, answers, request_id))
        self._start_shadows(txns, routes, features, request_id)
        return out

    def _start_shadows(
        self,
        txns: Sequence[Transaction],
        routes: Sequence[Route],
        features: Sequence[dict[str, float | str]],
        request_id: str,
    ) -> None:
        """Score copies of the rows routed to a shadow challenger off the response path, and
        log them; the task never raises."""
        picked = [i for i, r in enumerate(routes) if r.shadow_version]
        if not picked:
            return
        if len(self._shadows) >= MAX_SHADOW_IN_FLIGHT:
            self.shadow_skipped += len(picked)
            return
        picked_txns = [txns[i] for i in picked]
        picked_routes = [routes[i] for i in picked]
        picked_features = [features[i] for i in picked]

        async def shadow() -> None:
            items = [
                ScoreItem(variant=CHALLENGER, model_version=r.shadow_version, features=f)
                for r, f in zip(picked_routes, picked_features, strict=True)
            ]
            try:
                attempts = await try_challenger(
                    self.challenger_model, items, self.challenger_timeout_s
                )
                records = shadow_records(picked_txns, picked_routes, attempts, request_id)
                self.log_writer.submit(records)
            except Exception:  # off the response path: a failure here is only logged
                log.exception("shadow scoring failed")

        task = asyncio.create_task(shadow())
        # The loop keeps only weak references to tasks: hold it until it is done.
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _log(self, records: list[PredictionRecord]) -> None:
        """Hand `records` to the writer and wait (briefly) for the commit, so that what a
        client was answered is in the log when the answer leaves; never raises."""
        future = self.log_writer.submit(records)
        if future is None:
            return
        try:
            async with asyncio.timeout(LOG_WAIT_S):
                await asyncio.wrap_future(future)
        except TimeoutError:
            pass

    async def close(self) -> None:
        """At shutdown: wait for shadow copies, write what the log buffers (a few seconds at
        most; what cannot be written is logged by the writer)."""
        await self.drain_shadows()
        await asyncio.to_thread(self.log_writer.close)

    async def drain_shadows(self) -> None:
        """Wait for the shadow copies in flight, and their log entries (tests, shutdown)."""
        while self._shadows:
            await asyncio.gather(*list(self._shadows), return_exceptions=True)
        await asyncio.to_thread(self.log_writer.flush, 5.0)

    async def feedback(self, fb: FeedbackIn) -> FeedbackOut:
        def store() -> bool:
            self.log_writer.flush(LOG_WAIT_S)  # a prediction just answered is matched
            try:
                return self.predictions.get().feedback(fb.transaction_id, fb.is_fraud)
            except PredictionLogUnavailable as exc:
                raise PredictionLogDown(str(exc)) from exc

        matched = await self._log_calls.run(PredictionLogDown, store)
        return FeedbackOut(
            transaction_id=fb.transaction_id, is_fraud=fb.is_fraud, matched_prediction=matched
        )


def answer_records(
    txns: Sequence[Transaction],
    routes: Sequence[Route],
    features: Sequence[dict[str, float | str]],
    answers: Sequence[Answer],
    request_id: str,
) -> list[PredictionRecord]:
    """Log entries of the answers, and of the challenger attempts that failed before them."""
    records = []
    for t, r, f, a in zip(txns, routes, features, answers, strict=True):
        if a.failure is not None:
            records.append(
                PredictionRecord(
                    transaction_id=t.transaction_id, request_id=request_id,
                    variant=CHALLENGER, model_version=a.failure.model_version, score=None,
                    decision=None, latency_ms=a.failure.latency_ms, ok=False,
                    customer_id=t.customer_id, rollout_id=r.rollout_id,
                )
            )  # fmt: skip
        records.append(
            PredictionRecord(
                transaction_id=t.transaction_id, request_id=request_id,
                variant=a.score.variant, model_version=a.score.model_version,
                score=a.score.probability, decision=a.score.decision, latency_ms=a.latency_ms,
                customer_id=t.customer_id, rollout_id=r.rollout_id, features=f,
            )
        )  # fmt: skip
    return records


def shadow_records(
    txns: Sequence[Transaction],
    routes: Sequence[Route],
    attempts: Sequence[Attempt],
    request_id: str,
) -> list[PredictionRecord]:
    """Log entries of shadow attempts (a version still loading leaves none)."""
    records = []
    for t, r, at in zip(txns, routes, attempts, strict=True):
        if at.score is None and at.failure is None:
            continue
        records.append(
            PredictionRecord(
                transaction_id=t.transaction_id,
                request_id=request_id,
                variant=CHALLENGER,
                model_version=at.score.model_version if at.score else str(r.shadow_version),
                score=at.score.probability if at.score else None,
                decision=at.score.decision if at.score else None,
                latency_ms=at.latency_ms,
                ok=at.score is not None,
                shadow=True,
                customer_id=t.customer_id,
                rollout_id=r.rollout_id,
            )
        )
    return records
