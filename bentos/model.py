"""Model service: the model pool behind an adaptively batched API (microservices topology)."""

from __future__ import annotations

import time

import bentoml

from bentos.images import cuda_image
from bentos.telemetry import service_tracing, start_telemetry
from hearth.config import Settings
from hearth.observability.metrics import record_model_call
from hearth.observability.tracing import record_model_spans
from hearth.serving import graph
from hearth.serving.schemas import Score, ScoreItem

# The batch queue sheds (503) what it predicts would wait longer than the gateway waits.
_SHED_MS = int(1000 * Settings().model_timeout_s)


@bentoml.service(
    image=cuda_image(),
    resources={"gpu": 1},
    traffic={"timeout": 30},
    logging={"access": {"enabled": False}},  # internal: the gateway logs every request
    tracing=service_tracing(),
)
class Model:
    """Champion and challenger in one process, on CUDA when there is one."""

    def __init__(self) -> None:
        ctx = graph.context()
        start_telemetry(ctx.settings, "model")
        self.pool = graph.model_pool(ctx)

    def __is_ready__(self) -> bool:
        return self.pool.ready and self.pool.get().ready

    def _score(self, items: list[ScoreItem]) -> list[Score]:
        """Score one (batched) call and record its size and time per variant."""
        started, started_ns = time.perf_counter(), time.time_ns()
        scores: list[Score] = self.pool.get().score(items)
        record_model_call(scores, time.perf_counter() - started)
        record_model_spans(items, scores, started_ns, time.time_ns())
        return scores

    # Concurrent requests are merged into one forward pass (one per variant). BentoML sheds
    # (503) requests it predicts would wait past max_latency_ms; at 20 ms a busy 2-core box
    # shed half of c=32 traffic, so it is a generous bound, not the batching window.
    # HEARTH_MODEL_BATCHING=false turns batching off, so `hearth bench` can measure what it buys.
    # Shedding starts where the gateway gives up anyway (HEARTH_MODEL_TIMEOUT_S): at 500 ms
    # the queue shed ~3% of c=32 microservices traffic while the gateway would have waited.
    @bentoml.api(batchable=Settings().model_batching, max_batch_size=256, max_latency_ms=_SHED_MS)
    def predict(self, items: list[ScoreItem]) -> list[Score]:
        return self._score(items)

    # The challenger's own lane (and batch queue): a slow or faulty challenger, drills
    # included, must not delay the champion items batched with it. Failures are per item.
    @bentoml.api(batchable=True, max_batch_size=256, max_latency_ms=500)
    def predict_challenger(self, items: list[ScoreItem]) -> list[Score]:
        return self._score(items)

    @bentoml.api
    def ready(self) -> bool:
        return self.__is_ready__()
