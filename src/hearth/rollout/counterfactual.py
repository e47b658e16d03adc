"""Counterfactual scores for the paired quality test (params rollout.quality_test: paired).

A canary splits customers between the two models, so each model is judged on traffic the
other never saw, and the difference between two disjoint samples carries both samples'
luck: on the main job's traffic, ~0.06 PR-AUC of standard error after a minute, far more
than the 0.02 tolerance a verdict needs. But every answered request is logged with the
feature row the model scored (`PredictionLog`), so the rollout flow can ask the *other*
model what it would have answered: each labelled request then has both models' scores,
and the two are compared on the same requests (`statistics.sequential_differences`,
``paired=True``), where what makes a customer's frauds hard cancels out (measured on two
main-job canaries: the standard error fell from 0.055 to 0.012 at one minute). The scores
served are untouched: guard rails, error rates, latency and the score distribution still
judge the challenger's own answers.

`annotate` adds ``counterfactual`` to the analysis rows. It keeps one `Counterfactual`
per process (the running rollout's), which loads both versions once and scores each new
request once. Anything that fails here (MLflow unreachable, a version without a scorer)
is logged and leaves the rows as they were: the paired test then falls back to the
unpaired sequential one, and the rollout goes on.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hearth.config import CHALLENGER, CHAMPION, Settings
from hearth.traffic.rollout_state import RolloutState
from hearth.traffic.stores import using_prediction_log

log = logging.getLogger(__name__)

# Rows logged this many seconds before the newest one already seen are fetched again: a
# writer's batch may land with timestamps slightly older than one read before it.
_OVERLAP_S = 5.0


def _load_scorer(settings: Settings, model_name: str, version: str) -> Any:
    """The version's `FraudScorer`, downloaded from the registry."""
    # lazy: mlflow and torch load only where the paired test runs
    import mlflow

    from hearth import registry
    from hearth.model.scorer import FraudScorer

    registry.configure(settings)
    with tempfile.TemporaryDirectory(prefix="hearth-counterfactual-") as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version}", dst_path=tmp)
        )
        return FraudScorer.from_dir(local / "artifacts" / "scorer")


class Counterfactual:
    """One rollout's counterfactual scores, by transaction: the score the model that did
    not serve a request gives its logged features."""

    def __init__(self, settings: Settings, model_name: str, state: RolloutState) -> None:
        self.settings = settings
        self.rollout_id = state.rollout_id
        self.versions = {CHAMPION: state.champion_version, CHALLENGER: state.challenger_version}
        self.model_name = model_name
        self.scores: dict[str, float] = {}
        self._scorers: dict[str, Any] = {}
        self._newest = 0.0

    def _scorer(self, variant: str) -> Any:
        if variant not in self._scorers:
            version = self.versions[variant]
            self._scorers[variant] = _load_scorer(self.settings, self.model_name, version)
        return self._scorers[variant]

    def update(self) -> int:
        """Score the requests logged since the last update; how many were new."""
        with using_prediction_log(self.settings) as predictions:
            logged = predictions.rollout_features(self.rollout_id, self._newest - _OVERLAP_S)
        new: dict[str, list[tuple[str, dict[str, Any]]]] = {CHAMPION: [], CHALLENGER: []}
        for transaction, variant, features, at in logged:
            self._newest = max(self._newest, at)
            if transaction in self.scores or variant not in new:
                continue
            new[variant].append((transaction, json.loads(features)))
        for variant, rows in new.items():
            if rows:
                other = CHALLENGER if variant == CHAMPION else CHAMPION
                scores = self._scorer(other).predict_records([f for _, f in rows])
                self.scores.update(zip((t for t, _ in rows), map(float, scores), strict=True))
        return sum(len(rows) for rows in new.values())

    def annotate(self, rows: Sequence[dict[str, Any]]) -> int:
        """Add ``counterfactual`` to the rows that have one; how many got it."""
        done = 0
        for row in rows:
            score = self.scores.get(str(row.get("transaction_id")))
            if score is not None and not row.get("shadow"):
                row["counterfactual"] = score
                done += 1
        return done


_current: list[Counterfactual] = []  # the running rollout's, at most one per process


def annotate(
    settings: Settings, model_name: str, state: RolloutState, rows: Sequence[dict[str, Any]]
) -> int:
    """Give `rows` (the analysis rows of `state`'s rollout) their counterfactual scores, in
    place; how many got one (those scored so far when this round's scoring failed: see the
    module doc)."""
    if not _current or _current[0].rollout_id != state.rollout_id:
        _current[:] = [Counterfactual(settings, model_name, state)]
    counterfactual = _current[0]
    try:
        counterfactual.update()
    except Exception as exc:  # the rollout goes on; what is not scored is left out
        first_line = (str(exc).splitlines() or [""])[0][:300]
        log.warning(
            "rollout %s: no new counterfactual scores this round (%s: %s); requests "
            "without one are left out of the paired test",
            state.rollout_id,
            type(exc).__name__,
            first_line,
        )
    return counterfactual.annotate(rows)
