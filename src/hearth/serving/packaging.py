"""Packaging: MLflow registry → BentoML model store → bentos → container images.

This is the one module of `hearth.serving` that talks to BentoML, and only inside its
functions: importing it (or any other serving module) never imports BentoML, so the
gateway's logic stays framework-free. BentoML reads ``BENTOML_HOME`` when it first needs
its store, so call `Settings.apply()` before anything here.

A model version enters the BentoML store once, as ``fraud-detector:<generated>``, with its
lineage in labels (``registry_version``, ``mlflow_run``, ``data_version``, ``alias``) and
its thresholds in metadata; its files are the FraudScorer directory. Which version serves
which variant is then the serving-state file's business (`hearth.serving.pool`).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.config import Settings
from hearth.serving.bentoml_internals import bento_env
from hearth.serving.faults import FAULT_METADATA, FAULT_TAG, Fault
from hearth.serving.routing import CHALLENGER, CHAMPION
from hearth.serving.state import STATE_FILE, ModelRecord, ServingState

log = logging.getLogger(__name__)

ALIASES = (CHAMPION, CHALLENGER)
DATA_VERSION_TAG = "hearth.data_version"
# Bento name → service import string, relative to the repository root.
BENTOS: dict[str, str] = {
    "hearth-monolith": "bentos.monolith:Monolith",
    "hearth-gateway": "bentos.gateway:Gateway",
    "hearth-features": "bentos.features:Features",
    "hearth-model": "bentos.model:Model",
}
# Bentos that score with torch (and so carry the model and a CUDA image).
MODEL_BENTOS = frozenset({"hearth-monolith", "hearth-model"})
BENTO_INCLUDE = [
    "bentos/*.py",
    "src/hearth/**/*.py",
    "src/hearth/expectations/*.json",
    "src/hearth/py.typed",
    "params.yaml",
]
# Inside a container the bento's files sit under /home/bentoml/bento/src; hearth is not
# installed there (its pipeline dependencies would bloat every image), only put on the path.
BENTO_PYTHONPATH = "/home/bentoml/bento/src/src"


class NoChampion(LookupError):
    """The registry has no champion: nothing to serve yet."""


@dataclass(frozen=True)
class ImportedModel:
    alias: str
    version: str
    tag: str
    run_id: str
    data_version: str
    created: bool

    def labels(self) -> dict[str, str]:
        return {
            "alias": self.alias,
            "registry_version": self.version,
            "mlflow_run": self.run_id,
            "data_version": self.data_version,
        }


# -- the BentoML model store ----------------------------------------------------------------
def _stored(model_name: str) -> list[Any]:
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        models = bentoml.models.list(model_name)
    except NotFound:
        return []
    return sorted(models, key=lambda m: m.info.creation_time, reverse=True)


class BentoCatalog:
    """The model versions in the BentoML store, found by their labels (newest first)."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def aliases(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for model in _stored(self.model_name):
            labels = model.info.labels
            alias, version = labels.get("alias"), labels.get("registry_version")
            if alias in ALIASES and version and alias not in found:
                found[alias] = version
        return found

    def record(self, version: str) -> ModelRecord:
        for model in _stored(self.model_name):
            labels = model.info.labels
            if labels.get("registry_version") == version:
                return ModelRecord(
                    version=version,
                    path=Path(model.path),
                    run_id=labels.get("mlflow_run", ""),
                    data_version=labels.get("data_version", "unknown"),
                    fault=Fault.parse(model.info.metadata.get(FAULT_METADATA)),
                )
        raise KeyError(f"{self.model_name} version {version} is not in the BentoML store")


def registered_aliases(settings: Settings, model_name: str) -> dict[str, Any]:
    """alias → MLflow ModelVersion for the champion and the challenger (when set)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from hearth import registry

    registry.configure(settings)
    client = MlflowClient()
    found = {}
    for alias in ALIASES:
        try:
            found[alias] = client.get_model_version_by_alias(model_name, alias)
        except MlflowException:
            continue
    if CHAMPION not in found:
        raise NoChampion(f"no {model_name}@{CHAMPION} in the MLflow registry")
    return found


def import_version(model_name: str, alias: str, version: Any) -> ImportedModel:
    """Copy one registered version's scorer into the BentoML store (once per version)."""
    import bentoml
    import mlflow
    from mlflow.tracking import MlflowClient

    run_id = str(version.run_id)
    data_version = MlflowClient().get_run(run_id).data.tags.get(DATA_VERSION_TAG, "unknown")
    for model in _stored(model_name):
        if model.info.labels.get("registry_version") == str(version.version):
            return ImportedModel(
                alias, str(version.version), str(model.tag), run_id, data_version, False
            )
    with tempfile.TemporaryDirectory(prefix="hearth-import-") as tmp:
        local = Path(
            mlflow.artifacts.download_artifacts(
                f"models:/{model_name}/{version.version}", dst_path=tmp
            )
        )
        scorer_dir = local / "artifacts" / "scorer"
        if not (scorer_dir / "model.pt").exists():
            raise FileNotFoundError(f"{model_name} v{version.version} holds no scorer directory")
        imported = ImportedModel(alias, str(version.version), "", run_id, data_version, True)
        metadata = {"thresholds": (scorer_dir / "thresholds.json").read_text()}
        # A drill fault tagged on the registry version travels with the stored model.
        fault = Fault.parse((getattr(version, "tags", None) or {}).get(FAULT_TAG))
        if fault is not None:
            metadata[FAULT_METADATA] = fault.to_json()
        with bentoml.models.create(
            model_name, labels=imported.labels(), metadata=metadata
        ) as stored:
            shutil.copytree(scorer_dir, stored.path, dirs_exist_ok=True)
    log.info("imported %s v%s (%s) as %s", model_name, version.version, alias, stored.tag)
    return ImportedModel(alias, str(version.version), str(stored.tag), run_id, data_version, True)


def import_models(
    settings: Settings, model_name: str, write_state: bool = True
) -> list[ImportedModel]:
    """Import the champion (and the challenger, if any) and, by default, serve them."""
    versions = registered_aliases(settings, model_name)
    imported = [import_version(model_name, alias, v) for alias, v in versions.items()]
    if write_state:
        serving_state(settings).write(
            {m.alias: m.version for m in imported}, rollout_revision=rollout_revision(settings)
        )
    return imported


def rollout_revision(settings: Settings) -> int:
    """The rollout store's revision now (0 when it cannot be read): the serving-state file
    written from the registry's aliases is newer than every rollout state written so far."""
    from hearth.traffic.rollout_state import StateUnavailable
    from hearth.traffic.stores import open_state_store

    try:
        store = open_state_store(settings)
        try:
            return store.revision()
        finally:
            store.close()
    except (StateUnavailable, OSError) as exc:
        log.warning("rollout state unreadable (%s): the serving state file may be overruled", exc)
        return 0


def serving_state(settings: Settings) -> ServingState:
    return ServingState(settings.serving_dir / STATE_FILE)


def needs_import(settings: Settings, model_name: str) -> bool:
    """True when no state file exists or its champion is not in the BentoML store."""
    served = serving_state(settings).read()
    if not served or CHAMPION not in served:
        return True
    try:
        BentoCatalog(model_name).record(served[CHAMPION])
    except KeyError:
        return True
    return False


# -- bentos ---------------------------------------------------------------------------------
def build_bentos(
    imported: list[ImportedModel],
    project_root: Path,
    names: Iterable[str] = tuple(BENTOS),
    progress: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Build the named bentos from `project_root`; bento name → tag.

    Model-serving bentos carry the imported models and their lineage in labels.
    """
    import bentoml

    champion = next(m for m in imported if m.alias == CHAMPION)
    built: dict[str, str] = {}
    for name in names:
        if progress:
            progress(name)
        with_model = name in MODEL_BENTOS
        labels = {"hearth.topology": "monolith" if name == "hearth-monolith" else "microservices"}
        if with_model:
            labels |= {f"{m.alias}_{k}": v for m in imported for k, v in m.labels().items()}
            labels["data_version"] = champion.data_version
            labels["mlflow_run"] = champion.run_id
        bento = bentoml.bentos.build(
            BENTOS[name],
            name=name,
            build_ctx=str(project_root),
            include=BENTO_INCLUDE,
            labels=labels,
            models=[m.tag for m in imported] if with_model else None,
            envs=[bento_env("PYTHONPATH", BENTO_PYTHONPATH)],
        )
        built[name] = str(bento.tag)
    return built


def dockerfile(tag: str) -> str:
    """The Dockerfile BentoML generated for bento `tag` (env/docker/Dockerfile)."""
    import bentoml

    bento = bentoml.get(tag)
    return (Path(bento.path) / "env" / "docker" / "Dockerfile").read_text()


# -- containers -----------------------------------------------------------------------------
def container_engine(engine: str = "docker") -> str | None:
    """None when `engine info` answers; otherwise why not, for the user."""
    if shutil.which(engine) is None:
        return f"{engine} is not installed"
    try:
        done = subprocess.run([engine, "info"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`{engine} info` failed: {exc}"
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"`{engine} info` failed: {last[0]}"
    return None


def containerize(tag: str, engine: str = "docker") -> int:
    """`bentoml containerize` one bento in the foreground; its exit code."""
    import sys

    cmd = [sys.executable, "-m", "bentoml", "containerize", tag, "--backend", engine]
    return subprocess.call(cmd)
