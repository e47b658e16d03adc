"""Which model version serves which variant, and what a stored model version is.

Kept apart from `hearth.serving.pool` so that packaging and the CLI read and write serving
state without importing torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from hearth.serving.faults import Fault

STATE_FILE = "state.json"


@dataclass(frozen=True)
class ModelRecord:
    """A model version as stored for serving: its scorer directory and its lineage."""

    version: str
    path: Path
    run_id: str
    data_version: str
    fault: Fault | None = None  # a drill: see hearth.serving.faults


class ModelCatalog(Protocol):
    """Where model versions are stored (the BentoML model store, or plain directories)."""

    def aliases(self) -> dict[str, str]:
        """variant → registry version, as recorded with the stored models."""
        ...

    def record(self, version: str) -> ModelRecord:
        """The stored model of registry version `version`; KeyError if absent."""
        ...


class ServingState:
    """The small JSON file saying which registry version serves which variant.

    `rollout_revision` is the rollout store's revision when the file was written: a rollout
    state written later (a promotion made by a flow, say) takes precedence over the file's
    champion, an older one does not (see `hearth.serving.routing.champion_version`).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, str] | None:
        """variant → version, or None when there is no state file."""
        try:
            payload = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        return {str(k): str(v) for k, v in payload.get("variants", {}).items() if v is not None}

    def read_all(self) -> tuple[dict[str, str] | None, int]:
        """(variants or None, rollout_revision); revision 0 when absent."""
        try:
            payload: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None, 0
        variants = {str(k): str(v) for k, v in payload.get("variants", {}).items() if v is not None}
        return variants, int(payload.get("rollout_revision", 0))

    def write(self, variants: dict[str, str], rollout_revision: int = 0) -> None:
        """Replace the state atomically (write, then rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A unique temporary name: two writers (an admin call, a CLI) never share one.
        tmp = self.path.with_suffix(f".{os.getpid()}.{id(variants)}.tmp")
        payload = {"variants": variants, "rollout_revision": rollout_revision}
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.path)

    def mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            return None
