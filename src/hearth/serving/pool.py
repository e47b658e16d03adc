"""Model serving: several model versions held at once, swapped without a restart.

Which registry version serves which variant (``champion``, ``challenger``) is read from the
serving-state file (`ServingState`, under ``HEARTH_HOME/serving``) or, where there is none
(a container), from the labels the models carry in their store (`ModelCatalog.aliases`).
`ModelPool.reload` loads what is missing, drops what no longer serves and swaps the new set
in with one assignment, so a request never sees a half-updated pool. The pool polls the
state file's mtime (at most once a second) so that a rollout's one write takes effect
without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hearth.model.scorer import FraudScorer
from hearth.serving.errors import ModelUnavailable
from hearth.serving.router import CHAMPION
from hearth.serving.schemas import Decision, Score, ScoreItem
from hearth.serving.state import ModelCatalog, ModelRecord, ServingState

log = logging.getLogger(__name__)

_POLL_S = 1.0


def decide(probability: float, review: float, decline: float) -> Decision:
    """decline if p >= decline, review if p >= review, else approve."""
    if probability >= decline:
        return "decline"
    if probability >= review:
        return "review"
    return "approve"


@dataclass(frozen=True)
class LoadedModel:
    record: ModelRecord
    scorer: FraudScorer
    review: float
    decline: float


def best_device() -> str:
    """CUDA when this process sees a GPU, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class ModelPool:
    """The model versions this process serves, by variant."""

    def __init__(
        self, catalog: ModelCatalog, state: ServingState, device: str | None = None
    ) -> None:
        self.catalog = catalog
        self.state = state
        self.device = device or best_device()
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._seen_mtime: float | None = None
        self._next_poll = 0.0

    # -- loading ------------------------------------------------------------------------
    def served(self) -> dict[str, str]:
        """variant → version to serve: the state file, else the store's alias labels."""
        state = self.state.read()
        return state if state is not None else self.catalog.aliases()

    def load(self, version: str) -> LoadedModel:
        """Load registry version `version` onto this pool's device (not yet serving)."""
        record = self.catalog.record(version)
        scorer = FraudScorer.from_dir(record.path, device=self.device)
        if scorer.thresholds is None:
            raise ValueError(f"model version {version} has no thresholds.json")
        t = scorer.thresholds
        return LoadedModel(record, scorer, review=t.review, decline=t.decline)

    def reload(self) -> dict[str, str]:
        """Serve what `served()` says now; versions already loaded are reused."""
        with self._lock:
            self._seen_mtime = self.state.mtime()
            wanted = self.served()
            by_version = {m.record.version: m for m in self._models.values()}
            fresh: dict[str, LoadedModel] = {}
            for variant, version in wanted.items():
                fresh[variant] = by_version.get(version) or self.load(version)
            self._models = fresh  # one assignment: readers see the old or the new set
        log.info("serving %s on %s", self.versions() or "nothing", self.device)
        return self.versions()

    def maybe_reload(self) -> None:
        """Reload when the state file changed; cheap enough for the request path."""
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + _POLL_S
        if self.state.mtime() != self._seen_mtime:
            try:
                self.reload()
            except (KeyError, OSError, ValueError) as exc:
                # A bad state write must not take serving down: keep the loaded set.
                log.error("reload failed, still serving %s: %s", self.versions(), exc)

    def versions(self) -> dict[str, str]:
        return {variant: m.record.version for variant, m in self._models.items()}

    @property
    def ready(self) -> bool:
        return CHAMPION in self._models

    # -- scoring ------------------------------------------------------------------------
    def score(self, items: Sequence[ScoreItem]) -> list[Score]:
        """Score every item with its variant's model, in one call per variant."""
        self.maybe_reload()
        models = self._models
        out: list[Score | None] = [None] * len(items)
        for variant in {item.variant for item in items}:
            model = models.get(variant)
            if model is None:
                raise ModelUnavailable(f"no model loaded for variant {variant!r}")
            idx = [i for i, item in enumerate(items) if item.variant == variant]
            probs = model.scorer.predict_records([items[i].features for i in idx])
            for i, p in zip(idx, probs.tolist(), strict=True):
                out[i] = Score(
                    variant=variant,
                    model_version=model.record.version,
                    data_version=model.record.data_version,
                    probability=p,
                    decision=decide(p, model.review, model.decline),
                )
        return [s for s in out if s is not None]


class DirCatalog:
    """Scorer directories named by version under one root (tests, plain installs)."""

    def __init__(self, root: Path, aliases: dict[str, str], data_version: str = "unknown"):
        self.root = root
        self._aliases = aliases
        self.data_version = data_version

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def record(self, version: str) -> ModelRecord:
        path = self.root / version
        if not path.is_dir():
            raise KeyError(version)
        return ModelRecord(version, path, run_id="", data_version=self.data_version)
