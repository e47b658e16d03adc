"""Packaging: MLflow registry → BentoML model store → bentos (images: `hearth.containers`).

This is the one module of `hearth.serving` that talks to BentoML, and only inside its
functions: importing it (or any other serving module) never imports BentoML, so the
gateway's logic stays framework-free. BentoML reads ``BENTOML_HOME`` when it first needs
its store, so call `Settings.apply()` before anything here.

The BentoML store is only for building bentos (`hearth build`): a model version enters it
once, as ``fraud-detector:<generated>``, with its lineage in labels (``registry_version``,
``mlflow_run``, ``data_version``, ``alias``) and its thresholds in metadata; its files are
the FraudScorer directory. Which version serves is the rollout state's business, and the
serving processes load versions from the registry (`hearth.serving.model_cache`).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hearth.config import CHAMPION, Settings
from hearth.serving.bentoml_internals import bento_env
from hearth.serving.faults import FAULT_METADATA, FAULT_TAG, Fault
from hearth.serving.model_cache import DATA_VERSION_TAG

log = logging.getLogger(__name__)

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
    "src/hearth/data/*.csv",
    "src/hearth/py.typed",
    "params.yaml",
]
# Inside a container the bento's files sit under /home/bentoml/bento/src; hearth is not
# installed there (its pipeline dependencies would bloat every image), only put on the path.
BENTO_PYTHONPATH = "/home/bentoml/bento/src/src"
# Baked into every image. A container serves on all its interfaces, so it runs in production
# mode: it refuses to start on a development default secret, or a short or shared one (pass
# HEARTH_API_KEY, HEARTH_ADMIN_TOKEN, HEARTH_INTERNAL_TOKEN; or HEARTH_ENV=development).
BENTO_ENV = {"PYTHONPATH": BENTO_PYTHONPATH, "HEARTH_ENV": "production"}


class NoChampion(LookupError):
    """Nothing serves yet: no champion in the registry or the rollout state."""


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
    settings: Settings, model_name: str, versions: dict[str, str]
) -> list[ImportedModel]:
    """Import the versions that serve (variant → registry version, from the rollout state)
    into the BentoML store, for `build_bentos`; NoChampion without a champion."""
    from mlflow.tracking import MlflowClient  # lazy: mlflow, for `hearth build` only

    from hearth import registry

    if CHAMPION not in versions:
        raise NoChampion(f"nothing serves {model_name} yet: no {CHAMPION} in the rollout state")
    registry.configure(settings)
    client = MlflowClient()
    return [
        import_version(model_name, alias, client.get_model_version(model_name, version))
        for alias, version in versions.items()
    ]


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
            envs=[bento_env(name, value) for name, value in BENTO_ENV.items()],
        )
        built[name] = str(bento.tag)
    return built


def dockerfile(tag: str) -> str:
    """The Dockerfile BentoML generated for bento `tag` (env/docker/Dockerfile)."""
    import bentoml

    bento = bentoml.get(tag)
    return (Path(bento.path) / "env" / "docker" / "Dockerfile").read_text()
