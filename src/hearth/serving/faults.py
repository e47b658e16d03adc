"""Deliberate faults for drills: a model version that errors or answers slowly on purpose.

A rollout's guard rails are only trusted once they have been seen to act. To drill them,
tag a registered version in MLflow with ``hearth.fault`` (JSON), e.g.
``{"error_rate": 0.5}`` (half of its items fail) or ``{"extra_latency_ms": 300}`` (every
call to it waits 300 ms first), then start a rollout of it. `hearth.serving.packaging`
copies the tag into the BentoML model's metadata on import and the model pool honours it
for that version only; a plain scorer directory takes a ``fault.json`` with the same keys.
A version without the tag is never affected.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from typing import Any

FAULT_TAG = "hearth.fault"  # on the MLflow model version
FAULT_METADATA = "fault"  # in the BentoML model's metadata
FAULT_FILE = "fault.json"  # in a plain scorer directory (DirCatalog)


class FaultError(ValueError):
    """A fault specification that is not a JSON object of known, valid keys."""


@dataclass(frozen=True)
class Fault:
    """How a model version misbehaves: a share of failed items and/or extra latency."""

    error_rate: float = 0.0
    extra_latency_ms: float = 0.0

    @classmethod
    def parse(cls, raw: str | dict[str, Any] | None) -> Fault | None:
        """A Fault from JSON text or a mapping; None for nothing or an empty object."""
        if raw is None or raw == "":
            return None
        try:
            spec = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise FaultError(f"{FAULT_TAG} is not a JSON object: {raw!r}") from exc
        if not isinstance(spec, dict):
            raise FaultError(f"{FAULT_TAG} must be a JSON object, got {raw!r}")
        unknown = set(spec) - {"error_rate", "extra_latency_ms"}
        if unknown:
            raise FaultError(f"{FAULT_TAG}: unknown keys {sorted(unknown)}")
        fault = cls(float(spec.get("error_rate", 0.0)), float(spec.get("extra_latency_ms", 0.0)))
        if not 0 <= fault.error_rate <= 1 or fault.extra_latency_ms < 0:
            raise FaultError(f"{FAULT_TAG}: error_rate must be in [0, 1], latency >= 0: {spec}")
        return fault if fault != cls() else None

    def to_json(self) -> str:
        return json.dumps(
            {"error_rate": self.error_rate, "extra_latency_ms": self.extra_latency_ms}
        )

    def delay(self) -> None:
        """Wait the extra latency (once per call: a slow model is slow for the whole batch)."""
        if self.extra_latency_ms:
            time.sleep(self.extra_latency_ms / 1000)

    def fails(self, rng: random.Random) -> bool:
        """Whether one item fails."""
        return self.error_rate > 0 and rng.random() < self.error_rate
