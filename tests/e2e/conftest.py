"""E2E fixtures: a tiny project with a registered champion, and the environment of a user."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hearth.config import NO_TELEMETRY_ENV, HearthContext, Params, Settings
from tests.helpers import free_port, write_project

API_KEY = "e2e-key"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """generate → ETL → train → register, with the pipeline's own steps (~20 s)."""
    from hearth import steps

    root = tmp_path_factory.mktemp("project")
    params = Params.model_validate(
        {
            "data": {"days": 12, "customers": 300, "seed": 11, "tx_per_customer_day": 2.0},
            "split": {"valid_days": 2, "test_days": 2},
        }
    )
    write_project(root, params)
    settings = Settings(
        home=root / ".hearth", data_dir=root / "data", reports_dir=root / "reports",
        params_file=root / "params.yaml",
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for key, value in settings.environment().items():
            mp.setenv(key, value)
        ctx = HearthContext(settings)
        steps.generate_data(ctx)
        steps.etl(ctx)
        plan = steps.plan_training(ctx)
        lineage = steps.lineage_for(ctx, plan.experiment_file, "not validated")
        name, config = plan.runs[0]
        run = steps.train_run(ctx, name, config, plan.experiment.name, lineage)
        assert steps.register(ctx, run).alias == "champion"
    return root


def user_env(project: Path) -> dict[str, str]:
    """A user's shell in `project`: absolute HEARTH_* paths, free loopback ports."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HEARTH_", "BENTOML_", "PREFECT_", "MLFLOW_"))}  # fmt: skip
    env.update(NO_TELEMETRY_ENV)
    env.update(
        HEARTH_HOME=str(project / ".hearth"),
        HEARTH_DATA_DIR=str(project / "data"),
        HEARTH_REPORTS_DIR=str(project / "reports"),
        HEARTH_PARAMS_FILE=str(project / "params.yaml"),
        HEARTH_API_KEY=API_KEY,
        HEARTH_PREFECT_PORT=str(free_port()),
        HEARTH_MLFLOW_PORT=str(free_port()),
        HEARTH_SERVING_PORT=str(free_port()),
    )
    return env
