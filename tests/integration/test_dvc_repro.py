"""`dvc repro` on a fresh copy of the repo reproduces every stage; a second run does nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hearth.params import Params
from tests.helpers import write_project

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[2]


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A copy of the committed tree (git ls-files), as `git clone` would give, with tiny params."""
    root = tmp_path_factory.mktemp("clone")
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        if (ROOT / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, root / name)
    (root / "dvc.lock").unlink(missing_ok=True)
    params = Params.model_validate(
        {
            "data": {"days": 14, "customers": 250, "seed": 5, "tx_per_customer_day": 2.0},
            "split": {"valid_days": 2, "test_days": 2},
        }
    )
    write_project(root, params)
    # write_project puts the tiny experiment at experiments/tiny.yaml; params point at it.
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HEARTH_HOME": str(root / ".hearth"),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    _run(["git", "init", "-q"], root, env)
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "clone"], root, env)
    return root, env


def test_repro_builds_every_stage_then_is_a_no_op(fresh_clone: tuple[Path, dict[str, str]]) -> None:
    root, env = fresh_clone
    dvc = str(Path(sys.executable).parent / "dvc")
    first = _run([dvc, "repro"], root, env)
    for stage in ("generate", "etl", "validate", "train"):
        assert f"Running stage '{stage}'" in first, first
    assert (root / "data" / "processed" / "train.parquet").exists()
    assert (root / "reports" / "train.json").exists()
    assert "outs" in (root / "dvc.lock").read_text()

    second = _run([dvc, "repro"], root, env)
    assert "Running stage" not in second, second
    status = _run([dvc, "status"], root, env)
    assert "up to date" in status


def test_local_remote_push_and_pull(fresh_clone: tuple[Path, dict[str, str]]) -> None:
    root, env = fresh_clone
    dvc = str(Path(sys.executable).parent / "dvc")
    if not (root / "dvc.lock").exists():
        _run([dvc, "repro"], root, env)
    _run([dvc, "push"], root, env)
    assert any((root / ".hearth" / "dvc-remote").rglob("*")), "remote under HEARTH_HOME is filled"
    shutil.rmtree(root / "data" / "processed")
    shutil.rmtree(root / ".dvc" / "cache")
    _run([dvc, "pull", "etl"], root, env)
    assert (root / "data" / "processed" / "train.parquet").exists()
