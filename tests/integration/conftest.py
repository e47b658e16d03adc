"""Integration fixtures: a real Prefect server (prefect_test_harness) and a tiny project dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hearth.config import Params

TINY_EXPERIMENT = {
    "name": "tiny",
    "description": "A few epochs: enough to beat chance on the tiny data set.",
    "train": {"seed": 1, "epochs": 6, "batch_size": 256, "learning_rate": 0.003, "patience": 3},
}


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """One real, temporary Prefect API server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_project(root: Path, params: Params, experiment: dict | None = None) -> None:
    """params.yaml and one experiment file in `root`, as a user's checkout would have."""
    exp_path = root / "experiments" / "tiny.yaml"
    exp_path.parent.mkdir(parents=True, exist_ok=True)
    exp_path.write_text(yaml.safe_dump(experiment or TINY_EXPERIMENT))
    payload = params.model_dump(mode="json")
    payload["train"]["experiment"] = "experiments/tiny.yaml"
    (root / "params.yaml").write_text(yaml.safe_dump(payload))
