"""What `hearth up` started, remembered in a pid file under HEARTH_HOME, and the stack's error.

Starting, checking and stopping the processes is `hearth.launch.launcher`'s; this file is
what lets a later `hearth ps` or `hearth down` (another process) find them again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "stack.json"


class StackError(RuntimeError):
    """The stack cannot start or stop as asked; the message says which service and why."""


@dataclass(frozen=True)
class Running:
    """A started service as recorded in the pid file."""

    name: str
    pid: int
    url: str | None
    health_url: str | None
    log: str
    started_at: float


def read_state(home: Path) -> list[Running]:
    path = home / STATE_FILE
    if not path.exists():
        return []
    return [Running(**entry) for entry in json.loads(path.read_text())]


def write_state(home: Path, services: list[Running]) -> None:
    """Rewrite the pid file atomically (a crash never leaves half a file)."""
    path = home / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(s) for s in services], indent=2))
    tmp.replace(path)
