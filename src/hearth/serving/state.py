"""Which model version serves which variant, and what a stored model version is.

Kept apart from `hearth.serving.pool` so that packaging and the CLI read and write serving
state without importing torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

STATE_FILE = "state.json"


@dataclass(frozen=True)
class ModelRecord:
    """A model version as stored for serving: its scorer directory and its lineage."""

    version: str
    path: Path
    run_id: str
    data_version: str


class ModelCatalog(Protocol):
    """Where model versions are stored (the BentoML model store, or plain directories)."""

    def aliases(self) -> dict[str, str]:
        """variant → registry version, as recorded with the stored models."""
        ...

    def record(self, version: str) -> ModelRecord:
        """The stored model of registry version `version`; KeyError if absent."""
        ...


class ServingState:
    """The small JSON file saying which registry version serves which variant."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, str] | None:
        """variant → version, or None when there is no state file."""
        try:
            payload = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        return {str(k): str(v) for k, v in payload.get("variants", {}).items() if v is not None}

    def write(self, variants: dict[str, str]) -> None:
        """Replace the state atomically (write, then rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"variants": variants}, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return None
