"""Tiny trained projects, and the environments of real `hearth serve` processes on them.

A project is a directory a user could have checked out: params.yaml, an experiment, data
made by the generator, and a `.hearth` home whose MLflow registry holds a champion. Servers
get a fresh home each (their own BentoML store, online store and serving state) but read
the project's registry and data.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from hearth.config import MLFLOW_SERVER_ENV, NO_TELEMETRY_ENV, HearthContext, Settings
from hearth.launch.hearth_server import ServerProcess
from hearth.launch.launcher import Launched, launched
from hearth.params import Params
from tests.helpers import serving_topologies, write_project

if TYPE_CHECKING:
    from hearth.registry import RegistrationDecision
    from hearth.steps import TrainedRun

REPO = Path(__file__).resolve().parents[1]
API_KEY = "integration-key"  # the key of servers started with `server_env`
SMALL_DATA: dict[str, Any] = {
    "data": {"days": 12, "customers": 300, "seed": 11, "tx_per_customer_day": 2.0},
    "split": {"valid_days": 2, "test_days": 2},
}


# -- building a project ---------------------------------------------------------------------
def project_settings(root: Path, **overrides: Any) -> Settings:
    """Settings of the project in `root`: home `root/.hearth`, its data, reports and params."""
    fields: dict[str, Any] = {
        "home": root / ".hearth",
        "data_dir": root / "data",
        "reports_dir": root / "reports",
        "params_file": root / "params.yaml",
    }
    return Settings(**(fields | overrides))


@contextmanager
def in_project(root: Path, settings: Settings, **env: str) -> Iterator[HearthContext]:
    """cwd in `root` and `settings` (then `env`) exported, as the CLI does; undone after."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for key, value in {**settings.environment(), **env}.items():
            mp.setenv(key, value)
        yield HearthContext(settings)


def train(ctx: HearthContext, experiment: Path | None = None, seed_offset: int = 0) -> TrainedRun:
    """The first run of the experiment (the project's own by default), trained and logged.

    With `seed_offset`, the run's seed is moved by that much and its name says which seed.
    """
    from hearth import steps

    plan = steps.plan_training(ctx, experiment)
    lineage = steps.lineage_for(ctx, plan.experiment_file, "not validated")
    name, config = plan.runs[0]
    if seed_offset:
        name = f"{name}-seed{1 + seed_offset}"
        config = config.model_copy(update={"seed": config.seed + seed_offset})
    return steps.train_run(ctx, name, config, plan.experiment.name, lineage)


def train_and_register(ctx: HearthContext, experiment: Path | None = None) -> RegistrationDecision:
    """Train as `train` does and register the model through the champion/challenger gate."""
    from hearth import steps

    return steps.register(ctx, train(ctx, experiment))


def register_champion_again(project: Path, **settings: Any) -> str:
    """A second registered version of the project's model: the champion's model registered
    again (a challenger that loads like the champion), in the registry of the project's
    settings (`settings` override them: another home, a tracking server); its version."""
    import mlflow
    from mlflow.tracking import MlflowClient

    name = Params().registry.model_name
    with in_project(project, project_settings(project, **settings)):
        source = MlflowClient().get_model_version(name, "1").source
        return str(mlflow.register_model(source, name).version)


def build_tiny_data(root: Path, params: dict[str, Any] = SMALL_DATA) -> Path:
    """A project with its data generated and through ETL, nothing trained (the pipeline's
    own steps)."""
    from hearth import steps

    write_project(root, Params.model_validate(params))
    with in_project(root, project_settings(root)) as ctx:
        steps.generate_data(ctx)
        steps.etl(ctx)
    return root


def build_tiny_project(root: Path, data: Path | None = None) -> Path:
    """generate → ETL → train → register a champion, with the pipeline's own steps (~20 s);
    with `data` (a `build_tiny_data` project), on a copy of that data instead of new."""
    if data is None:
        build_tiny_data(root)
    else:
        copy_project(data, root)
    with in_project(root, project_settings(root)) as ctx:
        assert train_and_register(ctx).alias == "champion"
    return root


def copy_project(source: Path, root: Path) -> Path:
    """A copy in `root` of the project built in `source` (its data, and its registry if it
    has one), for a test that may change it: the absolute paths the build recorded (MLflow's
    artifact locations, the MLmodel file, the ETL report) are moved to `root`, so nothing the
    copy writes or reads lands in `source`."""
    shutil.copytree(source, root, dirs_exist_ok=True)
    old, new = str(source), str(root)
    for f in root.rglob("*"):
        if f.is_file() and f.suffix != ".db" and old.encode() in (data := f.read_bytes()):
            # A binary file would be corrupted by a replacement of another length.
            assert b"\0" not in data, f"{f} holds the source's path: copy_project cannot move it"
            f.write_bytes(data.replace(old.encode(), new.encode()))
    if not (registry := root / ".hearth" / "mlflow.db").exists():
        return root
    with sqlite3.connect(registry) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for column in [r[1] for r in db.execute(f'PRAGMA table_info("{table}")')]:
                db.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                    f'WHERE typeof("{column}") = \'text\' AND instr("{column}", ?) > 0',
                    (old, new, old),
                )
    db.close()
    return root


def trained_copy(source: Path, root: Path) -> Path:
    """`copy_project` of a trained project, with this process's MLflow pointed at the copy,
    as building the project in `root` would have left it: a test that registers a version
    through `mlflow`'s process-wide URIs writes into its copy, never into `source`."""
    from hearth import registry

    copy_project(source, root)
    registry.configure(project_settings(root))
    return root


def registry_versions(project: Path) -> list[str]:
    """The registered versions of the project's model, in its own registry."""
    from mlflow.tracking import MlflowClient

    uri = registry_uri(project)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    found = client.search_model_versions(f"name='{Params().registry.model_name}'")
    return sorted(str(v.version) for v in found)


# -- environments of processes on a project -------------------------------------------------
def registry_uri(project: Path) -> str:
    """The project's MLflow tracking and registry store."""
    return f"sqlite:///{project / '.hearth' / 'mlflow.db'}"


def clean_environ(*prefixes: str) -> dict[str, str]:
    """This process's environment without variables starting with `prefixes`, no telemetry."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(NO_TELEMETRY_ENV)
    return env


def project_paths(project: Path, home: Path | None = None) -> dict[str, str]:
    """HEARTH_* paths of the project: `home` (its own by default), data, reports, params."""
    return {
        "HEARTH_HOME": str(home or project / ".hearth"),
        "HEARTH_DATA_DIR": str(project / "data"),
        "HEARTH_REPORTS_DIR": str(project / "reports"),
        "HEARTH_PARAMS_FILE": str(project / "params.yaml"),
    }


def server_env(project: Path, home: Path, **extra: str) -> dict[str, str]:
    """The environment of a server: its own home, the project's registry and data."""
    env = clean_environ("HEARTH_", "BENTOML_")
    env.update(project_paths(project, home))
    env.update(
        HEARTH_MLFLOW_TRACKING_URI=registry_uri(project),
        HEARTH_API_KEY=API_KEY,
        HEARTH_MODEL_TIMEOUT_S="2",
    )
    env.update(extra)
    return env


@contextmanager
def project_servers(
    project: Path,
    tmp_path_factory: pytest.TempPathFactory,
    homes: str,
    topologies: tuple[str, ...],
    **extra_env: str,
) -> Iterator[dict[str, ServerProcess]]:
    """Each topology serving the project's champion on a fresh home (`{homes}-{topology}`),
    with `server_env` plus `extra_env`; started side by side, stopped after."""
    with serving_topologies(
        topologies,
        lambda topology: tmp_path_factory.mktemp(f"{homes}-{topology}"),
        lambda home: server_env(project, home, **extra_env),
        REPO,
    ) as started:
        yield started


@contextmanager
def mlflow_server(project: Path, port: int, log: Path) -> Iterator[Launched]:
    """A real MLflow tracking server over the project's registry on loopback `port`; stopped
    (its whole process group) when the block ends, if it is still running."""
    settings = project_settings(project)
    cmd = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", registry_uri(project),
        "--default-artifact-root", str(settings.mlflow_artifact_root),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = clean_environ("HEARTH_", "MLFLOW_") | MLFLOW_SERVER_ENV
    ready = f"http://127.0.0.1:{port}/health"
    with launched("MLflow", cmd, env, project, log, ready, timeout_s=120, append=True) as mlflow:
        yield mlflow
