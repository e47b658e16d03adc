"""ModelPool: several versions at once, hot swaps when the shared state changes, decisions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from hearth.config import RolloutParams
from hearth.features.definitions import FEATURES
from hearth.model.evaluate import Thresholds
from hearth.model.experiment import TrainConfig
from hearth.model.feature_spec import FeatureSpec
from hearth.model.scorer import FraudScorer
from hearth.serving.catalog import DirCatalog
from hearth.serving.errors import ModelUnavailable
from hearth.serving.pool import ModelPool, decide
from hearth.serving.schemas import ScoreItem
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
