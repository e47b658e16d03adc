"""The container suite (`make test-containers`): opt-in, and only where an engine runs.

`make test` collects tests/ too; these are skipped there (HEARTH_CONTAINER_TESTS unset), and
skipped with the reason where no engine runs. test_image_builds.py builds the images first
(files run in name order); test_up_containers.py runs the Compose stack on them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hearth.stack import compose

HERE = Path(__file__).resolve().parent


def _why_not() -> str | None:
    if not os.environ.get("HEARTH_CONTAINER_TESTS"):
        return "opt-in: `make test-containers` (a container engine and Hearth's images)"
    if problem := compose.engine_problem():
        return problem
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if HERE in Path(str(item.path)).parents]
    if ours and (reason := _why_not()) is not None:
        for item in ours:
            item.add_marker(pytest.mark.skip(reason=reason))
