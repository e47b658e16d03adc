"""Model service: the model pool behind adaptively batched lanes (microservices topology)."""

from __future__ import annotations

import time
from http import HTTPStatus

import bentoml
from bentoml.exceptions import BentoMLException, ServiceUnavailable

from bentos.hop import serve_internal_first
from bentos.images import cuda_image
from bentos.openapi30 import openapi30
from bentos.telemetry import service_tracing, start_telemetry
from hearth.observability.prometheus import record_model_call
from hearth.observability.tracing import record_model_spans
from hearth.serving import graph
from hearth.serving.batching import INLINE_MAX_ITEMS, Batcher
from hearth.serving.errors import Unavailable
from hearth.serving.internal import model_app
from hearth.serving.internal_client import PREDICT, PREDICT_CHALLENGER
from hearth.serving.limits import Refused, default_limits, score_items
from hearth.serving.schemas import Score, ScoreItem

# The gateway's hop: /internal/predict, /internal/predict_challenger, /internal/ready.
internal = model_app(
    lambda path: bentoml.get_current_service().lanes[path],
    lambda: bentoml.get_current_service().__is_ready__(),
    lambda: bentoml.get_current_service().loaded_versions(),
)
MAX_BATCH_SIZE = 256
# The challenger lane gives up where the guard rails' latency limit would count a failure.
CHALLENGER_SHED_S = 0.5


# The gateway's hop answers ahead of BentoML's request stack (hearth.serving.internal).
@openapi30  # /docs.json as valid OpenAPI 3.0
@serve_internal_first(internal)
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
        # Concurrent requests are merged into one forward pass (one per variant) by
        # hearth.serving.batching, not BentoML's batchable API: that one is only reachable
        # through BentoML's own (slow) request path. Requests still queued when the gateway
        # gives up (HEARTH_MODEL_TIMEOUT_S) are shed with 503 instead of scored.
        # HEARTH_MODEL_BATCHING=false turns batching off, so `hearth bench` can measure it.
        # The challenger has its own lane (queue and thread): a slow or faulty challenger,
        # drills included, never delays the champion's items. Failures are per item.
        self.lanes = {
            PREDICT: Batcher(
                "champion", self._score, MAX_BATCH_SIZE, ctx.settings.model_timeout_s,
                batching=ctx.settings.model_batching, inline_max_items=INLINE_MAX_ITEMS,
            ),
            PREDICT_CHALLENGER: Batcher(
                "challenger", self._score, MAX_BATCH_SIZE, CHALLENGER_SHED_S
            ),
        }  # fmt: skip

    def __is_ready__(self) -> bool:
        return self.pool.ready and self.pool.get().ready

    def loaded_versions(self) -> list[str]:
        """The model versions this process holds (the gateway routes only to these)."""
        return self.pool.get().loaded_versions() if self.pool.ready else []

    def _score(self, items: list[ScoreItem]) -> list[Score]:
        """Score one (batched) call and record its size and time per variant."""
        started, started_ns = time.perf_counter(), time.time_ns()
        scores: list[Score] = self.pool.get().score(items)
        record_model_call(scores, time.perf_counter() - started)
        record_model_spans(items, scores, started_ns, time.time_ns())
        return scores

    async def _submit(self, lane: str, items: list[ScoreItem]) -> list[Score]:
        try:  # checked as the hop checks them (hearth.serving.limits): 413/422, never a 500
            return await self.lanes[lane].submit(score_items(items, default_limits()))
        except Refused as exc:
            raise BentoMLException(exc.message(), error_code=HTTPStatus(exc.status)) from None
        except Unavailable as exc:
            raise ServiceUnavailable(str(exc)) from exc

    # The lanes as BentoML APIs too, for other clients (and `hearth bench`'s model-service
    # contenders); they batch together with the internal routes' requests.
    @bentoml.api
    async def predict(self, items: list[ScoreItem]) -> list[Score]:
        return await self._submit(PREDICT, items)

    @bentoml.api
    async def predict_challenger(self, items: list[ScoreItem]) -> list[Score]:
        return await self._submit(PREDICT_CHALLENGER, items)

    @bentoml.api
    def ready(self) -> bool:
        return self.__is_ready__()
