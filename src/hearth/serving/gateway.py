"""The gateway: validate → features → route → model → decision → response with lineage.

`Gateway` holds the logic both topologies share. It talks to features and models through
two small async protocols, so the monolith plugs in the store and the model pool directly
(`LocalFeatures`, `LocalModel`) and the microservices plug in calls to other processes
(`RemoteFeatures`, `RemoteModel`, over whatever async callables BentoML or httpx provide).
Nothing here imports torch or BentoML: the gateway's image stays small.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

from hearth.features.online import Transaction
from hearth.serving.errors import FeaturesUnavailable, ModelUnavailable, NotReady, Unavailable
from hearth.serving.feedback import PredictionLog
from hearth.serving.router import ChampionRouter, Router
from hearth.serving.schemas import (
    FeatureRow,
    FeedbackIn,
    FeedbackOut,
    PredictionOut,
    Score,
    ScoreItem,
    TransactionIn,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    rows = []
    for txn in txns:
        features, cold = store.observe(txn)
        rows.append(FeatureRow(features=features, cold_start=cold))
    return rows


class LocalFeatures:
    """The online store in this process."""

    def __init__(self, store: Background[Any]) -> None:
        self.store = store

    async def observe(self, txns: Sequence[Transaction]) -> list[FeatureRow]:
        from hearth.features.store import StoreError

        try:
            return observe_rows(self.store.get(), txns)
        except (NotReady, StoreError) as exc:
            raise FeaturesUnavailable(str(exc)) from exc

    async def ready(self) -> bool:
        return self.store.ready


class LocalModel:
    """The model pool in this process."""

    def __init__(self, pool: Background[Any]) -> None:
        self.pool = pool

    async def score(self, items: list[ScoreItem]) -> list[Score]:
        try:
            pool = self.pool.get()
        except NotReady as exc:
            raise ModelUnavailable(str(exc)) from exc
        result: list[Score] = pool.score(items)
        return result

    async def ready(self) -> bool:
        return self.pool.ready and bool(self.pool.get().ready)


# -- other processes (microservices) ------------------------------------------------------
async def _call(
    call: Awaitable[Any], timeout_s: float, unavailable: type[Unavailable], what: str
) -> Any:
    """Await a remote call; any failure to answer becomes `unavailable` (→ 503)."""
    try:
        return await asyncio.wait_for(call, timeout_s)
    except Unavailable:
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
        observe: Callable[[list[dict[str, Any]]], Awaitable[list[Any]]],
        ready: Callable[[], Awaitable[bool]],
        timeout_s: float,
    ) -> None:
        self._observe, self._ready, self.timeout_s = observe, ready, timeout_s

    async def observe(self, txns: Sequence[Transaction]) -> list[FeatureRow]:
        payload = [transaction_payload(t) for t in txns]
        rows = await _call(
            self._observe(payload), self.timeout_s, FeaturesUnavailable, "features service"
        )
        return [FeatureRow.model_validate(r) for r in rows]

    async def ready(self) -> bool:
        return await _ready(self._ready, self.timeout_s)


class RemoteModel:
    """A model service in another process, called through async callables."""

    def __init__(
        self,
        score: Callable[[list[ScoreItem]], Awaitable[list[Any]]],
        ready: Callable[[], Awaitable[bool]],
        timeout_s: float,
    ) -> None:
        self._score, self._ready, self.timeout_s = score, ready, timeout_s

    async def score(self, items: list[ScoreItem]) -> list[Score]:
        scores = await _call(self._score(items), self.timeout_s, ModelUnavailable, "model service")
        return [Score.model_validate(s) for s in scores]

    async def ready(self) -> bool:
        return await _ready(self._ready, self.timeout_s)


async def _ready(ready: Callable[[], Awaitable[bool]], timeout_s: float) -> bool:
    try:
        return bool(await asyncio.wait_for(ready(), timeout_s))
    except Exception:  # a service that cannot say it is ready is not
        return False


def transaction_payload(txn: Transaction) -> dict[str, Any]:
    """A Transaction as the JSON-able raw fields (the inverse of Transaction.from_mapping)."""
    from hearth.data.schema import TIMESTAMP_FORMAT, TRANSACTION_FIELDS

    payload = {name: getattr(txn, name) for name in TRANSACTION_FIELDS}
    payload["timestamp"] = txn.timestamp.strftime(TIMESTAMP_FORMAT)
    return payload


# -- the gateway --------------------------------------------------------------------------
class Gateway:
    """Scores transactions and records predictions and feedback; one per gateway process."""

    def __init__(
        self,
        features: FeatureClient,
        model: ModelClient,
        predictions: Background[PredictionLog],
        router: Router | None = None,
    ) -> None:
        self.features = features
        self.model = model
        self.predictions = predictions
        self.router = router or ChampionRouter()

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
        txns = [t.to_transaction() for t in transactions]
        # The store counts a transaction when its features are read (observe is atomic), so
        # a transaction whose scoring then fails still counts: it did happen.
        rows = await self.features.observe(txns)
        variants = [self.router.route(t) for t in txns]
        items = [
            ScoreItem(variant=v, features=r.features) for v, r in zip(variants, rows, strict=True)
        ]
        scores = await self.model.score(items)
        out = [
            PredictionOut(
                transaction_id=t.transaction_id,
                fraud_probability=s.probability,
                decision=s.decision,
                variant=s.variant,
                model_version=s.model_version,
                data_version=s.data_version,
                request_id=request_id,
                cold_start=r.cold_start,
            )
            for t, r, s in zip(txns, rows, scores, strict=True)
        ]
        self.predictions.get().record(out)
        return out

    async def feedback(self, fb: FeedbackIn) -> FeedbackOut:
        matched = self.predictions.get().feedback(fb.transaction_id, fb.is_fraud)
        return FeedbackOut(
            transaction_id=fb.transaction_id, is_fraud=fb.is_fraud, matched_prediction=matched
        )
