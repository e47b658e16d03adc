"""Model serving: several model versions held at once, swapped without a restart.

A pool is a cache of model versions, by registry version number (`ModelCatalog`: the
registry's local cache in a service, plain directories in tests). It preloads what the
shared state says serves (`Served.versions()`: the champion and a running rollout's
challenger, read through a `hearth.traffic.follower.Follower`), and scores each item with
the version the item names. When the state changes (at most every `_POLL_S`), versions not
yet loaded load in the background and the new set is swapped in with one assignment, so a
request never sees a half-updated pool and never waits for a load.

During a rollout the gateway names the version of each item (`ScoreItem.model_version`).
A named version that is not loaded is loaded in the background: meanwhile a champion item
is scored by the pool's champion and a challenger item answers ``unavailable`` (the
gateway then lets the champion answer), so loading never fails or stalls a request. An
item that names no version (unit tests) gets the pool's model of its variant. A version no
request has named for `idle_s` seconds, and that the state does not name, is dropped: the
old model stays loaded as long as any route still points at it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from hearth.config import CHAMPION
from hearth.model.scorer import FraudScorer
from hearth.observability.prometheus import set_model_ready
from hearth.serving.catalog import ModelCatalog, ModelRecord
from hearth.serving.errors import ModelUnavailable
from hearth.serving.schemas import Decision, Score, ScoreItem
from hearth.traffic.rollout_state import Served

log = logging.getLogger(__name__)

_POLL_S = 0.5  # with the followers' 0.5 s, a state write is seen within a second
# Long enough for every gateway to have re-read the rollout state (<= 1 s) and for requests
# routed before that to finish (model timeout): only then does no route point at a version.
IDLE_S = 30.0
_RETRY_LOAD_S = 5.0  # a version that failed to load is not retried more often than this


def decide(probability: float, review: float, decline: float) -> Decision:
    """decline if p >= decline, review if p >= review, else approve.

    A probability that is not a finite number in [0, 1] (NaN from a faulty model: every
    comparison with it is False) is an error, never an "approve".
    """
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"model returned probability {probability!r}, not a number in [0, 1]")
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


class ServedSource(Protocol):
    """Where the pool reads what serves (a `hearth.traffic.follower.Follower`)."""

    def served(self) -> Served: ...


def best_device() -> str:
    """CUDA when this process sees a GPU, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def serve_on_one_cpu_thread() -> None:
    """One intra-op thread for torch on the CPU, unless OMP_NUM_THREADS says otherwise.

    A serving process scores small batches in a lane thread while its event loop runs: with
    torch's default pool (one thread per core) the idle OpenMP workers spin after every
    forward pass and take the loop's CPU. Measured on the monolith at c=32 (2 cores, in
    process): 2.0 ms of CPU per request with the default pool, 1.0 ms with one thread.
    """
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


class ModelPool:
    """The model versions this process serves: by variant (the state) and by version."""

    def __init__(
        self,
        catalog: ModelCatalog,
        source: ServedSource,
        device: str | None = None,
        idle_s: float = IDLE_S,
    ) -> None:
        self.catalog = catalog
        self.source = source
        self.device = device or best_device()
        if self.device == "cpu":
            serve_on_one_cpu_thread()
        self.idle_s = idle_s
        self._models: dict[str, LoadedModel] = {}  # variant → model, from the state
        self._extra: dict[str, LoadedModel] = {}  # version → model, named by requests
        self._used: dict[str, float] = {}  # version → when a request last named it
        self._loading: set[str] = set()
        self._failed: dict[str, float] = {}  # version → when its load last failed
        self._lock = threading.Lock()
        self._reloading = False
        self._reload_failed_at: float | None = None
        self._seen_revision: int | None = None
        self._next_poll = 0.0
        self._rng = random.Random()

    # -- loading ------------------------------------------------------------------------
    def served(self) -> dict[str, str]:
        """variant → version that the shared state says serves now."""
        return self.source.served().versions()

    def load(self, version: str) -> LoadedModel:
        """Load registry version `version` onto this pool's device (not yet serving)."""
        record = self.catalog.record(version)
        scorer = FraudScorer.from_dir(record.path, device=self.device)
        if scorer.thresholds is None:
            raise ValueError(f"model version {version} has no thresholds.json")
        t = scorer.thresholds
        if record.fault is not None:
            log.warning("version %s carries a drill fault: %s", version, record.fault)
        return LoadedModel(record, scorer, review=t.review, decline=t.decline)

    def _by_version(self) -> dict[str, LoadedModel]:
        return {**self._extra, **{m.record.version: m for m in self._models.values()}}

    def reload(self) -> dict[str, str]:
        """Serve what the state says now, loading what is missing (blocking); versions
        already loaded are reused."""
        served = self.source.served()
        self._seen_revision = served.revision
        wanted = served.versions()
        by_version = self._by_version()
        fresh = {v: by_version.get(version) or self.load(version) for v, version in wanted.items()}
        self._swap(fresh)
        log.info("serving %s on %s", self.versions() or "nothing", self.device)
        return self.versions()

    def _swap(self, fresh: dict[str, LoadedModel]) -> None:
        current = self._models.get(CHAMPION)
        if CHAMPION not in fresh and current is not None:
            # A state that names no champion (a Redis restarted without its data) never
            # unloads the one serving: answering with it beats answering nothing.
            log.warning(
                "the rollout state names no champion; still serving version %s",
                current.record.version,
            )
            fresh = {**fresh, CHAMPION: current}
        with self._lock:
            # Versions leaving the state stay as extras until idle: a gateway whose
            # snapshot is a moment old may still name them.
            now = time.monotonic()
            kept = {m.record.version for m in fresh.values()}
            for model in self._models.values():
                version = model.record.version
                if version not in kept:
                    self._extra.setdefault(version, model)
                    self._used.setdefault(version, now)
            self._models = fresh  # one assignment: readers see the old or the new set
        self._publish_readiness()

    def maybe_reload(self) -> None:
        """Follow a state change; cheap enough for the request path (it never loads here)."""
        now = time.monotonic()
        if now < self._next_poll:
            return
        self._next_poll = now + _POLL_S
        self._drop_idle(now)
        served = self.source.served()  # the follower's snapshot: in memory
        if served.revision == self._seen_revision:
            return
        by_version = self._by_version()
        wanted = served.versions()
        if all(version in by_version for version in wanted.values()):
            self._seen_revision = served.revision
            self._swap({v: by_version[version] for v, version in wanted.items()})
            return
        self._publish_readiness(wanted)
        failed = self._reload_failed_at
        if failed is not None and now - failed < _RETRY_LOAD_S:
            return  # retried later: routes keep the versions already loaded meanwhile
        self._reload_in_background()

    def _reload_in_background(self) -> None:
        with self._lock:
            if self._reloading:
                return
            self._reloading = True

        def run() -> None:
            try:
                self.reload()
                self._reload_failed_at = None
            except Exception as exc:  # a bad state must not take serving down
                log.error(
                    "reload failed, still serving %s (retried in %gs): %s",
                    self.versions(), _RETRY_LOAD_S, exc,
                )  # fmt: skip
                # Retried: a challenger that failed to load once (a registry that did not
                # answer) must not stay unserved for the rest of its rollout.
                self._seen_revision = None
                self._reload_failed_at = time.monotonic()
            finally:
                self._reloading = False

        threading.Thread(target=run, name="pool-reload", daemon=True).start()

    def wait_reloaded(self, timeout_s: float = 30.0) -> bool:
        """Block until the pool serves what the state says (tests, warm-ups)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._next_poll = 0.0
            self.maybe_reload()
            if not self._reloading and self.versions() == self.served():
                return True
            time.sleep(0.02)
        return False

    def _drop_idle(self, now: float) -> None:
        with self._lock:
            for version, used in list(self._used.items()):
                if now - used > self.idle_s:
                    self._used.pop(version, None)
                    if self._extra.pop(version, None) is not None:
                        log.info(
                            "dropped version %s: no request named it for %gs", version, self.idle_s
                        )

    def _load_in_background(self, version: str) -> None:
        """Start loading `version` unless it is loading or recently failed to load."""
        with self._lock:
            failed = self._failed.get(version)
            if version in self._loading or (
                failed is not None and time.monotonic() - failed < _RETRY_LOAD_S
            ):
                return
            self._loading.add(version)
        threading.Thread(
            target=self._load_extra, args=(version,), name=f"load-{version}", daemon=True
        ).start()

    def _load_extra(self, version: str) -> None:
        try:
            model = self.load(version)
        except Exception as exc:  # reported in the log; requests keep falling back
            log.error("cannot load model version %s: %s", version, exc)
            with self._lock:
                self._failed[version] = time.monotonic()
                self._loading.discard(version)
            return
        with self._lock:
            self._extra = {**self._extra, version: model}
            self._used[version] = time.monotonic()
            self._failed.pop(version, None)
            self._loading.discard(version)
        log.info("loaded version %s on request", version)
        self._publish_readiness()

    def wait_loaded(self, version: str, timeout_s: float = 30.0) -> bool:
        """Block until `version` is loaded (tests, warm-ups); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if version in self._by_version():
                return True
            self._load_in_background(version)
            time.sleep(0.02)
        return False

    def versions(self) -> dict[str, str]:
        return {variant: m.record.version for variant, m in self._models.items()}

    def has(self, version: str) -> bool:
        """Whether `version` is loaded here (cheap: the request path asks it)."""
        if version in self._extra:
            return True
        return any(m.record.version == version for m in self._models.values())

    def readiness(self, wanted: dict[str, str] | None = None) -> dict[str, bool]:
        """variant → whether this process has loaded the version the state names for it."""
        if wanted is None:
            wanted = self.source.served().versions()
        return {variant: self.has(version) for variant, version in wanted.items()}

    def _publish_readiness(self, wanted: dict[str, str] | None = None) -> None:
        """`hearth_model_ready{variant, version}` of this process (its pid in BentoML)."""
        try:
            if wanted is None:
                wanted = self.source.served().versions()
            set_model_ready({(v, version): self.has(version) for v, version in wanted.items()})
        except Exception:  # metrics must never break loading or scoring
            log.debug("cannot publish model readiness", exc_info=True)

    def loaded_versions(self) -> list[str]:
        """Every version held now, by the state or by requests."""
        return sorted(self._by_version())

    @property
    def ready(self) -> bool:
        self.maybe_reload()  # a readiness probe follows the state too (nothing scores yet)
        return CHAMPION in self._models

    # -- scoring ------------------------------------------------------------------------
    def _model_for(self, item: ScoreItem, by_version: dict[str, LoadedModel]) -> LoadedModel | None:
        """The model that scores `item`; None when its version is still loading."""
        version = item.model_version
        if version is None:
            model = self._models.get(item.variant)
            if model is None:
                raise ModelUnavailable(f"no model loaded for variant {item.variant!r}")
            return model
        model = by_version.get(version)
        if model is not None:
            self._used[version] = time.monotonic()
            return model
        self._load_in_background(version)
        if item.variant == CHAMPION:
            # The champion must answer: the pool's own champion does until `version` is in.
            fallback = self._models.get(CHAMPION)
            if fallback is None:
                raise ModelUnavailable(f"no champion loaded (version {version} is loading)")
            return fallback
        return None

    def score(self, items: Sequence[ScoreItem]) -> list[Score]:
        """Score every item with its model, in one call per model version."""
        self.maybe_reload()
        by_version = self._by_version()
        out: list[Score | None] = [None] * len(items)
        groups: dict[str, tuple[LoadedModel, list[int]]] = {}
        for i, item in enumerate(items):
            model = self._model_for(item, by_version)
            if model is None:
                out[i] = Score(
                    variant=item.variant,
                    model_version=str(item.model_version),
                    data_version="unknown",
                    status="unavailable",
                    error=f"model version {item.model_version} is loading",
                )
                continue
            groups.setdefault(model.record.version, (model, []))[1].append(i)
        for model, idx in groups.values():
            for i, score in zip(
                idx, self._score_group(model, [items[i] for i in idx]), strict=True
            ):
                out[i] = score
        return [s for s in out if s is not None]

    def _score_group(self, model: LoadedModel, items: list[ScoreItem]) -> list[Score]:
        """Scores of items that one model version scores; failures are per item."""
        record, fault = model.record, model.record.fault

        started = time.perf_counter()

        def failed(item: ScoreItem, why: str) -> Score:
            return Score(
                variant=item.variant,
                model_version=record.version,
                data_version=record.data_version,
                status="error",
                error=why,
                model_ms=(time.perf_counter() - started) * 1000,
            )

        try:
            if fault is not None:
                fault.delay()  # inside the timed call: a drill's slow model must look slow
            probs = model.scorer.predict_records([item.features for item in items]).tolist()
        except Exception as exc:  # a broken model fails its items, never the whole batch
            log.exception("version %s failed to score %d items", record.version, len(items))
            return [failed(item, f"{type(exc).__name__}: {exc}") for item in items]
        model_ms = (time.perf_counter() - started) * 1000
        scores = []
        for item, p in zip(items, probs, strict=True):
            if fault is not None and fault.fails(self._rng):
                scores.append(failed(item, "drill fault: injected error"))
                continue
            try:
                decision = decide(p, model.review, model.decline)
            except ValueError as exc:  # NaN or out of [0, 1]: this item failed
                scores.append(failed(item, str(exc)))
                continue
            scores.append(
                Score(
                    variant=item.variant,
                    model_version=record.version,
                    data_version=record.data_version,
                    probability=p,
                    decision=decision,
                    model_ms=model_ms,
                )
            )
        return scores
