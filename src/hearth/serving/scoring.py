"""Scoring routed transactions: the champion always answers, a challenger never fails a client.

Champion items and challenger items go to the model service in two calls made side by side
(the challenger's on its own lane, so that a slow challenger cannot hold up the champion's
batch). A challenger item that errors, times out (`challenger_timeout_s`) or whose call
fails is scored again by the champion, and the failed attempt is kept (`Failure`) so that
the prediction log and the guard rails see it. A challenger version that is still loading
answers "unavailable": the champion answers then too, and nothing is held against the
challenger. Shadow copies use the challenger lane with the same timeout.

Latency is recorded the same way for both variants: the model call's own time
(`Score.model_ms`, timed where the model runs) whenever the model reports it, and the
lane's wall time only where it cannot (a challenger that timed out, a model service that
does not time its calls). The lanes differ on purpose — the challenger's is isolated, in
the monolith a worker thread — and their hand-off and queueing are not the model's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hearth.config import CHALLENGER, CHAMPION
from hearth.serving.errors import ModelUnavailable
from hearth.serving.schemas import Score, ScoreItem
from hearth.traffic.assignment import Route

log = logging.getLogger(__name__)


class ScoreClient(Protocol):
    async def score(self, items: list[ScoreItem]) -> list[Score]: ...


@dataclass(frozen=True)
class Failure:
    """A challenger attempt that did not answer: which version, how long it took, why."""

    model_version: str
    latency_ms: float
    reason: str


@dataclass(frozen=True)
class Answer:
    """The score returned to the client, the latency of the model call that made it (see
    the module docstring), and the challenger attempt that failed before it (if any)."""

    score: Score
    latency_ms: float
    failure: Failure | None = None


@dataclass(frozen=True)
class Attempt:
    """One item's outcome on the challenger lane: a score, a failure, or neither (loading)."""

    score: Score | None
    latency_ms: float
    failure: Failure | None


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000


def _latency(score: Score, lane_ms: float) -> float:
    """The model call's own time when the model reported it, else the lane's wall time."""
    return lane_ms if score.model_ms is None else score.model_ms


async def score_main(model: ScoreClient, items: list[ScoreItem]) -> tuple[list[Score], float]:
    """The champion lane: every item must be answered, else the request is a 503."""
    if not items:
        return [], 0.0
    started = time.perf_counter()
    scores: list[Score] = await model.score(items)
    latency = _ms(started)
    bad = next((s for s in scores if not s.ok), None)
    if bad is not None:
        raise ModelUnavailable(f"model version {bad.model_version} failed: {bad.error}")
    return scores, latency


async def try_challenger(
    model: ScoreClient, items: list[ScoreItem], timeout_s: float
) -> list[Attempt]:
    """The challenger lane: never raises; failures become `Attempt.failure`."""
    if not items:
        return []
    started = time.perf_counter()
    try:
        scores: list[Score] = await asyncio.wait_for(model.score(items), timeout_s)
    except Exception as exc:  # a timeout, a dead service, a bug: all the challenger's fault
        latency = _ms(started)
        reason = (
            f"no answer within {timeout_s:g}s"
            if isinstance(exc, TimeoutError)
            else f"{type(exc).__name__}: {exc}"
        )
        log.warning("challenger call failed (%s) for %d items", reason, len(items))
        return [
            Attempt(None, latency, Failure(str(i.model_version), latency, reason)) for i in items
        ]
    latency = _ms(started)
    attempts = []
    for _item, s in zip(items, scores, strict=True):
        took = _latency(s, latency)
        if s.ok:
            attempts.append(Attempt(s, took, None))
        elif s.status == "unavailable":
            attempts.append(Attempt(None, took, None))
        else:
            failure = Failure(s.model_version, took, s.error or "error")
            attempts.append(Attempt(None, took, failure))
    return attempts


async def score_routed(
    routes: Sequence[Route],
    features: Sequence[dict[str, float | str]],
    main: ScoreClient,
    challenger: ScoreClient,
    challenger_timeout_s: float,
) -> list[Answer]:
    """One `Answer` per transaction, in order; raises only when the champion cannot answer."""
    items = [
        ScoreItem(variant=r.variant, model_version=r.model_version, features=f)
        for r, f in zip(routes, features, strict=True)
    ]
    main_idx = [i for i, r in enumerate(routes) if r.variant != CHALLENGER]
    chal_idx = [i for i, r in enumerate(routes) if r.variant == CHALLENGER]
    (main_scores, main_ms), attempts = await asyncio.gather(
        score_main(main, [items[i] for i in main_idx]),
        try_challenger(challenger, [items[i] for i in chal_idx], challenger_timeout_s),
    )
    answers: list[Answer | None] = [None] * len(items)
    for i, s in zip(main_idx, main_scores, strict=True):
        answers[i] = Answer(s, _latency(s, main_ms))
    retry: list[tuple[int, Failure | None]] = []
    for i, attempt in zip(chal_idx, attempts, strict=True):
        if attempt.score is not None:
            answers[i] = Answer(attempt.score, attempt.latency_ms)
        else:
            retry.append((i, attempt.failure))
    if retry:
        fallback = [
            ScoreItem(
                variant=CHAMPION, model_version=routes[i].fallback_version, features=features[i]
            )
            for i, _ in retry
        ]
        scores, ms = await score_main(main, fallback)
        for (i, failure), s in zip(retry, scores, strict=True):
            answers[i] = Answer(s, _latency(s, ms), failure)
    return [a for a in answers if a is not None]
