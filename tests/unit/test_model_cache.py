"""RegistryCatalog: model versions by number from a real (tmp_path SQLite) MLflow registry."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from hearth import registry
from hearth.config import Settings
from hearth.features.definitions import FEATURES
from hearth.model.evaluate import Thresholds
from hearth.model.experiment import TrainConfig
from hearth.model.feature_spec import FeatureSpec
from hearth.model.scorer import FraudScorer
from hearth.params import Params
from hearth.serving.faults import FAULT_TAG, Fault
from hearth.serving.model_cache import RECORD_FILE, RegistryCatalog, cache_root
from hearth.serving.pool import ModelPool
from hearth.serving.schemas import ScoreItem
from hearth.traffic.rollout_state import Served
from tests.helpers import synthetic_features

NAME = Params().registry.model_name


@pytest.fixture
def versions(settings: Settings, tmp_path: Path) -> list[str]:
    """Two registered versions laid out as the pipeline logs them (``artifacts/scorer``);
    v2 carries a drill fault tag."""
    registry.configure(settings)
    client = MlflowClient()
    client.create_registered_model(NAME)
    spec = FeatureSpec.fit(synthetic_features(300, 1))
    made = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        scorer = FraudScorer.build(spec, TrainConfig(seed=seed))
        scorer.thresholds = Thresholds(review=0.3, decline=0.7)
        source = tmp_path / f"logged-{seed}"
        scorer.save(source / "artifacts" / "scorer")
        tags = {FAULT_TAG: json.dumps({"error_rate": 1.0})} if seed == 2 else {}
        made.append(str(client.create_model_version(NAME, str(source), tags=tags).version))
    return made


def test_a_version_is_downloaded_once_with_its_lineage_and_fault(
    settings: Settings, versions: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = RegistryCatalog(settings, NAME)
    one, two = catalog.record("1"), catalog.record("2")
    assert one.path == cache_root(settings, NAME) / "1" and (one.path / "model.pt").exists()
    assert (one.fault, two.fault) == (None, Fault(error_rate=1.0))
    assert (one.run_id, one.data_version) == ("", "unknown")  # no run behind these sources

    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cached version must not be downloaded again")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_network)
    again = RegistryCatalog(settings, NAME).record("1")  # another process: the same cache
    assert again == one
    assert sorted(p.name for p in cache_root(settings, NAME).iterdir()) == ["1", "2"]


def test_unknown_versions_are_key_errors(settings: Settings, versions: list[str]) -> None:
    catalog = RegistryCatalog(settings, NAME)
    for version in ("7", "v1", ""):
        with pytest.raises(KeyError):
            catalog.record(version)
    assert not (cache_root(settings, NAME) / "7").exists()


def test_racing_downloads_leave_one_complete_copy(settings: Settings, versions: list[str]) -> None:
    catalogs = [RegistryCatalog(settings, NAME) for _ in range(4)]  # as four processes would
    records: list[Any] = []
    threads = [threading.Thread(target=lambda c=c: records.append(c.record("1"))) for c in catalogs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(records) == 4 and len({r.path for r in records}) == 1
    root = cache_root(settings, NAME)
    assert [p.name for p in root.iterdir()] == ["1"]  # no temporary copy left behind
    assert json.loads((root / "1" / RECORD_FILE).read_text())["version"] == "1"


class Fixed:
    def __init__(self, served: Served) -> None:
        self.now = served

    def served(self) -> Served:
        return self.now


def test_the_pool_loads_by_version_from_the_registry(
    settings: Settings, versions: list[str]
) -> None:
    pool = ModelPool(RegistryCatalog(settings, NAME), Fixed(Served(champion_version="1")), "cpu")
    assert pool.reload() == {"champion": "1"}
    row = synthetic_features(1, 5).loc[:, list(FEATURES)].to_dict("records")[0]
    champion = pool.score([ScoreItem(variant="champion", features=row)])[0]
    assert (champion.model_version, champion.status) == ("1", "ok")
    assert pool.wait_loaded("2")
    drilled = pool.score([ScoreItem(variant="challenger", model_version="2", features=row)])[0]
    assert (drilled.model_version, drilled.status) == ("2", "error")  # its fault tag, honoured
