"""A rollout round judged as the rollout flow judges one, for the pages that show it."""

from __future__ import annotations

import math

import numpy as np

from hearth.params import RolloutParams
from hearth.rollout.flow_steps import RoundResult
from hearth.rollout.statistics import RequestRecord
from hearth.rollout.verdict import analyse
from hearth.traffic.rollout_state import new_rollout


def requests(variant: str, quality: float, seed: int, n: int = 4000) -> list[RequestRecord]:
    """`n` labelled requests of a model whose separation of fraud grows with `quality`."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.05).astype(int)
    scores = 1 / (1 + np.exp(-(-4.0 + 4.0 * quality * y + rng.normal(0, 1.2, n))))
    latency = rng.lognormal(math.log(5.0), 0.3, n)
    return [
        RequestRecord(variant, True, float(latency[i]), float(scores[i]), int(y[i]))
        for i in range(n)
    ]


def last_round() -> RoundResult:
    """The last round of a canary whose challenger is clearly better: judged as the rollout
    flow judges it (`analyse`), the state it leaves."""
    params = RolloutParams()
    state = new_rollout("1", "2", params)
    rows = requests("champion", 1.0, 1) + requests("challenger", 1.6, 2)
    verdict = analyse(rows, params, 0.5, last_step=True)
    ended = state.ended("promoted") if verdict.decision == "promote" else state
    return RoundResult(3, verdict, verdict.decision, ended, len(rows), 0.5, 50.0)
