"""ModelPool: several versions at once, hot swaps from the state file, decisions."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from hearth.features.definitions import FEATURES
from hearth.model.evaluate import Thresholds
from hearth.model.experiment import TrainConfig
from hearth.model.feature_spec import FeatureSpec
from hearth.model.scorer import FraudScorer
from hearth.serving.errors import ModelUnavailable
from hearth.serving.pool import DirCatalog, ModelPool, decide
from hearth.serving.schemas import ScoreItem
from hearth.serving.state import ServingState
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


def _pool(models_root: Path, tmp_path: Path, state: dict[str, str] | None) -> ModelPool:
    serving = ServingState(tmp_path / "state.json")
    if state is not None:
        serving.write(state)
    return ModelPool(DirCatalog(models_root, {"champion": "1"}, "dv"), serving, device="cpu")


@pytest.mark.parametrize(
    ("p", "decision"),
    [(0.0, "approve"), (0.29, "approve"), (0.3, "review"), (0.69, "review"), (0.7, "decline")],
)
def test_decide_follows_the_thresholds(p: float, decision: str) -> None:
    assert decide(p, review=0.3, decline=0.7) == decision


def test_without_state_file_the_store_aliases_decide(models_root: Path, tmp_path: Path) -> None:
    pool = _pool(models_root, tmp_path, None)
    assert pool.reload() == {"champion": "1"}
    assert pool.ready


def test_champion_and_challenger_score_side_by_side(
    models_root: Path, tmp_path: Path, rows: list[dict]
) -> None:
    pool = _pool(models_root, tmp_path, {"champion": "1", "challenger": "2"})
    pool.reload()
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


def test_a_state_write_swaps_versions_without_restart(
    models_root: Path, tmp_path: Path, rows: list[dict]
) -> None:
    pool = _pool(models_root, tmp_path, {"champion": "1"})
    pool.reload()
    item = [ScoreItem(variant="champion", features=rows[0])]
    assert pool.score(item)[0].model_version == "1"
    pool.state.write({"champion": "2"})
    # mtime resolution can be coarse: make the change visible, then let the poll run.
    os.utime(pool.state.path, (time.time() + 5, time.time() + 5))
    pool._next_poll = 0.0
    assert pool.score(item)[0].model_version == "2"


def test_a_bad_state_keeps_serving_the_loaded_models(models_root: Path, tmp_path: Path) -> None:
    pool = _pool(models_root, tmp_path, {"champion": "1"})
    pool.reload()
    pool.state.write({"champion": "99"})
    os.utime(pool.state.path, (time.time() + 5, time.time() + 5))
    pool._next_poll = 0.0
    pool.maybe_reload()
    assert pool.versions() == {"champion": "1"}


def test_an_unserved_variant_is_unavailable(
    models_root: Path, tmp_path: Path, rows: list[dict]
) -> None:
    pool = _pool(models_root, tmp_path, {"champion": "1"})
    pool.reload()
    with pytest.raises(ModelUnavailable):
        pool.score([ScoreItem(variant="challenger", features=rows[0])])
