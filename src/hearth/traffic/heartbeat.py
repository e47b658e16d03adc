"""What a serving process reports about itself into the shared state: its heartbeat.

Every serving process (a monolith or a microservices gateway; each worker of
`hearth serve --workers N` on its own) writes a `Heartbeat` into the rollout state store
every few seconds (`hearth.traffic.fleet.HeartbeatReporter`), under its own key, over its
previous one: which process it is (host, pid, HEARTH_HOME), what it serves (the versions
the state names and whether it has them loaded) and when it was last seen. Reading them
back tells an operator how many processes serve and which went quiet
(`hearth.traffic.fleet.fleet_status`).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    # extra="ignore": a heartbeat written by a newer Hearth (more fields) still reads.
    model_config = ConfigDict(frozen=True, extra="ignore")


class LoadedVersion(_Model):
    """A version the rollout state names for a variant, and whether the process has it
    loaded (None: the process cannot tell, e.g. a gateway whose model service does not say)."""

    version: str
    loaded: bool | None = None


class Heartbeat(_Model):
    """One serving process, as it last reported itself."""

    process: str  # "<host>:<pid>": the key it is stored under
    host: str
    pid: int
    home: str  # its HEARTH_HOME
    role: str  # "monolith" | "gateway"
    versions: dict[str, LoadedVersion]  # variant → version, as this process serves it
    started_at: datetime
    seen_at: datetime  # the writer's clock (UTC)

    def age_s(self, now: datetime) -> float:
        """Seconds since this heartbeat was written (by `now`'s clock; never negative)."""
        return max(0.0, (now - self.seen_at).total_seconds())


def process_key(host: str, pid: int) -> str:
    """The key a process's heartbeat is stored under."""
    return f"{host}:{pid}"
