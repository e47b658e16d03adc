"""Model versions by number, from the MLflow registry into a local cache.

The model pools serve what the rollout state names (`hearth.traffic.Served`): a version
number. `RegistryCatalog.record` finds version N in ``HEARTH_HOME/model-cache/<name>/<N>/``
or, the first time, downloads ``models:/<name>/<N>``'s scorer directory there, with its
lineage (the run, the run's data version) and a drill fault tagged on the registry version
(`hearth.serving.faults.FAULT_TAG`) in ``record.json``. A download goes to a temporary
directory beside the cache and is renamed into place, so two processes that race for the
same version never see half a model: one rename wins, the other's copy is dropped.

Versions never change once registered, so a cached version is never fetched again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

from hearth.config import Settings
from hearth.serving.catalog import ModelRecord
from hearth.serving.faults import FAULT_TAG, Fault

log = logging.getLogger(__name__)

CACHE_DIR = "model-cache"
RECORD_FILE = "record.json"
DATA_VERSION_TAG = "hearth.data_version"  # on the training run (see hearth.lineage)


def cache_root(settings: Settings, model_name: str) -> Path:
    """Where the versions of `model_name` are cached."""
    return settings.home_abs / CACHE_DIR / model_name


class RegistryCatalog:
    """Registered versions of one model, downloaded once into the local cache."""

    def __init__(self, settings: Settings, model_name: str) -> None:
        self.settings = settings
        self.model_name = model_name
        self.root = cache_root(settings, model_name)
        self._lock = threading.Lock()  # one download per process at a time

    def record(self, version: str) -> ModelRecord:
        """Registry version `version`, downloaded first if it is not cached; KeyError if the
        registry has no such version."""
        version = str(version)
        if not version.isdigit():
            raise KeyError(f"{self.model_name} has no version {version!r}")
        path = self.root / version
        if not (path / RECORD_FILE).exists():
            with self._lock:
                if not (path / RECORD_FILE).exists():
                    self._download(version, path)
        meta = json.loads((path / RECORD_FILE).read_text())
        return ModelRecord(
            version=version,
            path=path,
            run_id=str(meta["run_id"]),
            data_version=str(meta["data_version"]),
            fault=Fault.parse(meta.get("fault")),
        )

    def _download(self, version: str, path: Path) -> None:
        # lazy: mlflow only where a version is fetched (a cached one needs none of it)
        import mlflow
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        from hearth import registry

        registry.configure(self.settings)
        client = MlflowClient()
        try:
            registered = client.get_model_version(self.model_name, version)
        except MlflowException as exc:
            if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
                raise KeyError(f"{self.model_name} has no version {version}") from exc
            raise
        run_id = str(registered.run_id or "")
        data_version = "unknown"
        if run_id:
            data_version = client.get_run(run_id).data.tags.get(DATA_VERSION_TAG, "unknown")
        fault = Fault.parse((registered.tags or {}).get(FAULT_TAG))
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=self.root))
        try:
            local = Path(
                mlflow.artifacts.download_artifacts(
                    f"models:/{self.model_name}/{version}", dst_path=str(tmp / "download")
                )
            )
            scorer_dir = local / "artifacts" / "scorer"
            if not (scorer_dir / "model.pt").exists():
                raise FileNotFoundError(f"{self.model_name} v{version} holds no scorer directory")
            staged = tmp / "scorer"
            shutil.move(scorer_dir, staged)
            record = {
                "model_name": self.model_name,
                "version": version,
                "run_id": run_id,
                "data_version": data_version,
                "fault": fault.to_json() if fault is not None else None,
            }
            # Written last: a directory with its record is a complete version.
            (staged / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
            try:
                os.rename(staged, path)
            except OSError:
                if not (path / RECORD_FILE).exists():
                    raise
                # Another process cached it first: its copy is as good as ours.
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("cached %s v%s in %s", self.model_name, version, path)
