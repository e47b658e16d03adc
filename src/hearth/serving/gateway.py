"""The gateway: validate → features → route → model → decision → response with lineage.

`Gateway` holds the logic both topologies share. It talks to features and models through
two small async protocols (`hearth.serving.dependencies`), so the monolith plugs in the
store and the model pool directly and the microservices plug in calls to other processes.
Nothing here imports torch or BentoML: the gateway's image stays small.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence

from hearth.config import CHALLENGER
from hearth.features.online import Transaction
from hearth.observability import tracing
from hearth.serving.dependencies import (
    DEFAULT_TIMEOUT_S,
    Background,
    FeatureClient,
    ModelClient,
    OffLoop,
)
from hearth.serving.errors import Unavailable
from hearth.serving.routing import ChampionRouter, Router
from hearth.serving.schemas import (
    FeedbackIn,
    FeedbackOut,
    PredictionOut,
    ScoreItem,
    TransactionIn,
)
from hearth.serving.scoring import Answer, Attempt, score_routed, try_challenger
from hearth.traffic.assignment import Route
from hearth.traffic.prediction_log import (
    PredictionLog,
    PredictionLogUnavailable,
    PredictionRecord,
)
from hearth.traffic.prediction_log_writer import PredictionLogWriter

log = logging.getLogger(__name__)
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
