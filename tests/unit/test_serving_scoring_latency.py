"""Both variants' latency is the model call's own time, however different their lanes."""

from __future__ import annotations

import asyncio

from hearth.config import CHALLENGER, CHAMPION
from hearth.serving.schemas import Score, ScoreItem
from hearth.serving.scoring import score_routed
from hearth.traffic.assignment import Route

MODEL_MS = 3.0


class Lane:
    """A model client whose lane waits `queue_s` before a model call that takes MODEL_MS."""

    def __init__(self, queue_s: float, model_ms: float | None = MODEL_MS) -> None:
        self.queue_s, self.model_ms = queue_s, model_ms

    async def score(self, items: list[ScoreItem]) -> list[Score]:
        await asyncio.sleep(self.queue_s)  # thread hand-off, queueing: not the model's time
        return [
            Score(variant=i.variant, model_version="v", data_version="d", probability=0.1,
                  decision="approve", model_ms=self.model_ms)
            for i in items
        ]  # fmt: skip


def _answers(champion: Lane, challenger: Lane, timeout_s: float = 1.0) -> list[float]:
    routes = [Route(CHAMPION), Route(CHALLENGER, model_version="v2")]
    answers = asyncio.run(
        score_routed(routes, [{"x": 1.0}, {"x": 2.0}], champion, challenger, timeout_s)
    )
    return [a.latency_ms for a in answers]


def test_lane_wait_does_not_count_against_the_challenger() -> None:
    # Before: the challenger's 80 ms in its lane was its latency, the champion's 3 ms its.
    assert _answers(Lane(0.0), Lane(0.08)) == [MODEL_MS, MODEL_MS]


def test_without_a_model_time_the_lane_time_is_used_and_a_timeout_is_a_slow_failure() -> None:
    champion_ms, challenger_ms = _answers(Lane(0.0, None), Lane(0.02, None))
    assert challenger_ms >= 20 and champion_ms < 20
    routes = [Route(CHALLENGER, model_version="v2")]
    (answer,) = asyncio.run(score_routed(routes, [{"x": 1.0}], Lane(0.0), Lane(1.0), 0.05))
    assert answer.failure is not None and answer.failure.latency_ms >= 50
    assert answer.latency_ms == MODEL_MS  # the champion's answer, timed as usual
