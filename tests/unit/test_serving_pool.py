"""ModelPool: several versions at once, hot swaps when the shared state changes, decisions."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from hearth.config import CHALLENGER, CHAMPION
from hearth.features.definitions import FEATURES
from hearth.features.online import Transaction
from hearth.model.evaluate import Thresholds
from hearth.model.experiment import TrainConfig
from hearth.model.feature_spec import FeatureSpec
from hearth.model.scorer import FraudScorer
from hearth.params import RolloutParams
from hearth.serving.catalog import DirCatalog, ModelRecord
from hearth.serving.errors import ModelUnavailable
from hearth.serving.pool import ModelPool, decide
from hearth.serving.routing import RolloutRouter
from hearth.serving.schemas import ScoreItem
from hearth.traffic.assignment import assign
from hearth.traffic.rollout_state import Served, new_rollout
from tests.helpers import synthetic_features


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two untrained scorers (different seeds, different scores) as versions 1 and 2."""
    root = tmp_path_factory.mktemp("models")
    spec = FeatureSpec.fit(synthetic_features(500, 1))
    for version, seed in (("1", 1), ("2", 2)):
        torch.manual_seed(seed)
        scorer = FraudScorer.build(spec, TrainConfig(seed=seed))
        scorer.thresholds = Thresholds(review=0.3, decline=0.7)
        scorer.save(root / version)
    return root


@pytest.fixture
def rows() -> list[dict]:
    frame = synthetic_features(4, 9).loc[:, list(FEATURES)]
    return frame.to_dict("records")


class StateSource:
    """What the shared state says serves, set by the test (a Follower in a service)."""

    def __init__(self, served: Served) -> None:
        self.now = served

    def served(self) -> Served:
        return self.now


def _served(champion: str | None, challenger: str | None = None, revision: int = 1) -> Served:
    rollout = new_rollout(champion, challenger, RolloutParams()) if challenger else None
    return Served(champion_version=champion, rollout=rollout, revision=revision)


def _pool(models_root: Path, served: Served) -> ModelPool:
    return ModelPool(DirCatalog(models_root, "dv"), StateSource(served), device="cpu")


def _settle(pool: ModelPool) -> None:
    """Let a background reload finish (a state change loads off the request path)."""
    deadline = time.monotonic() + 30
    while pool._reloading and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.parametrize(
    ("p", "decision"),
    [(0.0, "approve"), (0.29, "approve"), (0.3, "review"), (0.69, "review"), (0.7, "decline")],
)
def test_decide_follows_the_thresholds(p: float, decision: str) -> None:
    assert decide(p, review=0.3, decline=0.7) == decision


def test_the_pool_preloads_the_states_champion(models_root: Path) -> None:
    pool = _pool(models_root, _served("1"))
    assert pool.reload() == {"champion": "1"}
    assert pool.ready


def test_before_the_first_champion_nothing_is_ready(models_root: Path) -> None:
    pool = _pool(models_root, Served())
    assert pool.reload() == {}
    assert not pool.ready


def test_champion_and_challenger_score_side_by_side(models_root: Path, rows: list[dict]) -> None:
    pool = _pool(models_root, _served("1", "2"))
    assert pool.reload() == {"champion": "1", "challenger": "2"}
    variants = ["champion", "challenger", "champion", "challenger"]
    items = [ScoreItem(variant=v, features=r) for v, r in zip(variants, rows, strict=True)]
    scores = pool.score(items)
    assert [s.model_version for s in scores] == ["1", "2", "1", "2"]
    assert all(s.data_version == "dv" for s in scores)
    for s in scores:
        assert s.decision == decide(s.probability, 0.3, 0.7)
    alone = pool.load("1").scorer.predict_records([rows[0]])[0]
    # float32 kernels differ with the batch size in the last bits only.
    assert scores[0].probability == pytest.approx(alone, abs=1e-6)


def test_items_are_scored_by_the_version_they_name(models_root: Path, rows: list[dict]) -> None:
    pool = _pool(models_root, _served("1"))
    pool.reload()
    named = [ScoreItem(variant="champion", model_version="2", features=rows[0])]
    # Not loaded yet: the pool's champion answers while v2 loads in the background.
    assert pool.score(named)[0].model_version == "1"
    assert pool.wait_loaded("2")
    assert pool.score(named)[0].model_version == "2"
    assert pool.versions() == {"champion": "1"}  # the state still names v1


def test_a_state_change_swaps_versions_without_restart(models_root: Path, rows: list[dict]) -> None:
    pool = _pool(models_root, _served("1"))
    pool.reload()
    item = [ScoreItem(variant="champion", features=rows[0])]
    assert pool.score(item)[0].model_version == "1"
    pool.source.now = _served("2", revision=2)  # type: ignore[attr-defined]
    pool._next_poll = 0.0
    started = time.perf_counter()
    pool.score(item)  # sees the change; v2 loads in the background, not in this call
    assert pool.wait_reloaded()
    assert pool.score(item)[0].model_version == "2"
    assert pool.versions() == {"champion": "2"} and time.perf_counter() - started < 30
    assert "1" in pool.loaded_versions()  # kept until no route has named it for idle_s


def test_a_bad_state_keeps_serving_the_loaded_models(models_root: Path) -> None:
    pool = _pool(models_root, _served("1"))
    pool.reload()
    pool.source.now = _served("99", revision=2)  # type: ignore[attr-defined]
    pool._next_poll = 0.0
    pool.maybe_reload()
    _settle(pool)
    assert pool.versions() == {"champion": "1"} and pool.ready


def test_an_unserved_variant_is_unavailable(models_root: Path, rows: list[dict]) -> None:
    pool = _pool(models_root, _served("1"))
    pool.reload()
    with pytest.raises(ModelUnavailable):
        pool.score([ScoreItem(variant="challenger", features=rows[0])])


# -- a rollout takes effect in a process once that process has loaded its challenger ------
class GatedCatalog(DirCatalog):
    """Loading `gated` waits until the test opens the gate (a slow download, a big model)."""

    def __init__(self, root: Path, gated: str) -> None:
        super().__init__(root, "dv")
        self.gated, self.gate = gated, threading.Event()

    def record(self, version: str) -> ModelRecord:
        if version == self.gated:
            assert self.gate.wait(30), "the test never opened the gate"
        return super().record(version)


class Snapshot:
    """A follower's face for `RolloutRouter`: the state the test sets, in memory."""

    buckets = 10_000

    def __init__(self, served: Served) -> None:
        self.now = served

    def served(self) -> Served:
        return self.now


def _ready_gauge(variant: str, version: str) -> float | None:
    return REGISTRY.get_sample_value("hearth_model_ready", {"variant": variant, "version": version})


def test_a_challenger_takes_customers_only_once_this_process_has_loaded_it(
    models_root: Path, rows: list[dict]
) -> None:
    catalog = GatedCatalog(models_root, gated="2")
    state = Snapshot(_served("1"))
    pool = ModelPool(catalog, state, device="cpu")
    pool.reload()
    router = RolloutRouter(state, loaded=pool.has)  # type: ignore[arg-type]
    rollout = new_rollout("1", "2", RolloutParams()).with_percent(50)
    state.now = Served(champion_version="1", rollout=rollout, revision=2)
    txns = [_txn(f"c{i}") for i in range(40)]
    bucketed = [c for c in txns if assign(rollout.salt, c.customer_id, 50) == CHALLENGER]
    assert bucketed, "some customers fall in the challenger's half"

    pool._next_poll = 0.0
    pool.maybe_reload()  # the state names version 2: it starts loading in the background
    # While it loads, this process routes everyone to the champion, as if the rollout had
    # not started here yet; the readiness gauge says so.
    for txn in txns:
        route = router.route(txn)
        assert (route.variant, route.model_version) == (CHAMPION, "1")
        assert route.rollout_id == rollout.rollout_id  # logged as the rollout's champion
    assert _ready_gauge("challenger", "2") == 0
    assert _ready_gauge("champion", "1") == 1
    assert pool.readiness() == {"champion": True, "challenger": False}
    # The admin API's status shows the same for the process that answers it.
    versions = router.readiness()["versions"]
    assert versions == {
        "champion": {"version": "1", "loaded": True},
        "challenger": {"version": "2", "loaded": False},
    }

    catalog.gate.set()
    _settle(pool)
    assert pool.readiness() == {"champion": True, "challenger": True}
    assert router.readiness()["versions"]["challenger"] == {"version": "2", "loaded": True}
    assert _ready_gauge("challenger", "2") == 1
    # From now on the split is the rollout's, and each customer keeps its variant.
    for txn in txns:
        route = router.route(txn)
        expected = CHALLENGER if txn in bucketed else CHAMPION
        assert route.variant == expected
        assert route.model_version == ("2" if expected == CHALLENGER else "1")
    items = [ScoreItem(variant=CHALLENGER, model_version="2", features=rows[0])]
    assert pool.score(items)[0].model_version == "2"


def test_a_state_that_names_no_champion_never_unloads_the_serving_one(models_root: Path) -> None:
    state = StateSource(_served("1"))
    pool = ModelPool(DirCatalog(models_root, "dv"), state, device="cpu")
    pool.reload()
    state.now = Served(revision=7)  # e.g. Redis restarted without its data
    pool._next_poll = 0.0
    pool.maybe_reload()
    assert pool.versions() == {"champion": "1"} and pool.ready


def _txn(customer_id: str) -> Transaction:
    return Transaction(
        transaction_id=f"t-{customer_id}", timestamp=datetime(2026, 2, 1, 12),
        customer_id=customer_id, merchant_id="m1", merchant_category="grocery", amount=10.0,
        currency="EUR", channel="pos", device_id="d1", latitude=48.1, longitude=11.6,
    )  # fmt: skip


class FlakyCatalog(DirCatalog):
    """The registry does not answer the first time `flaky` is asked for."""

    def __init__(self, root: Path, flaky: str) -> None:
        super().__init__(root, "dv")
        self.flaky, self.asked = flaky, 0

    def record(self, version: str) -> ModelRecord:
        if version == self.flaky:
            self.asked += 1
            if self.asked == 1:
                raise ConnectionError("registry did not answer")
        return super().record(version)


def test_a_challenger_that_failed_to_load_is_retried(
    models_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hearth.serving.pool._RETRY_LOAD_S", 0.05)
    state = StateSource(_served("1"))
    catalog = FlakyCatalog(models_root, flaky="2")
    pool = ModelPool(catalog, state, device="cpu")
    pool.reload()
    state.now = _served("1", "2", revision=2)
    assert pool.wait_reloaded(30), "the challenger was never loaded"
    assert catalog.asked == 2 and pool.has("2")
