"""What a stored model version is, and where versions are stored (a catalog).

Kept apart from `hearth.serving.pool` so that code that only finds model versions (the
registry cache, tests) does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hearth.serving.faults import FAULT_FILE, Fault


@dataclass(frozen=True)
class ModelRecord:
    """A model version as stored for serving: its scorer directory and its lineage."""

    version: str
    path: Path
    run_id: str
    data_version: str
    fault: Fault | None = None  # a drill: see hearth.serving.faults


class ModelCatalog(Protocol):
    """Where model versions are stored, by registry version."""

    def record(self, version: str) -> ModelRecord:
        """The stored model of registry version `version`; KeyError if there is none."""
        ...


class DirCatalog:
    """Scorer directories named by version under one root (tests, plain installs)."""

    def __init__(self, root: Path, data_version: str = "unknown") -> None:
        self.root = root
        self.data_version = data_version

    def record(self, version: str) -> ModelRecord:
        path = self.root / version
        if not path.is_dir():
            raise KeyError(version)
        fault_file = path / FAULT_FILE
        fault = Fault.parse(fault_file.read_text()) if fault_file.exists() else None
        return ModelRecord(version, path, run_id="", data_version=self.data_version, fault=fault)
