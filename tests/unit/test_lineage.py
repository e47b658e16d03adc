"""Lineage: git commit with dirtiness, and DVC's own hash of a data directory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hearth.lineage import Lineage, dvc_data_version, git_commit

NO_ANALYTICS = {"DVC_NO_ANALYTICS": "1", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/tmp"}


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_git_commit_clean_dirty_and_untracked(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    _git(tmp_path, "add", "a.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    sha = _git(tmp_path, "rev-parse", "HEAD")
    assert git_commit(tmp_path) == sha
    (tmp_path / "notes.txt").write_text("untracked files do not make the tree dirty\n")
    assert git_commit(tmp_path) == sha
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == f"{sha}-dirty"


def test_git_commit_outside_git_is_unknown(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"
    assert git_commit(tmp_path / "does-not-exist") == "unknown"


def _dvc(repo: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        env={"PATH": "/usr/bin:/bin", **NO_ANALYTICS},
    )


def test_dvc_data_version_equals_what_dvc_add_records(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "train.parquet").write_bytes(bytes(range(256)) * 40)
    (data / "sub" / "b.csv").write_text("a,b\n1,2\n")
    (tmp_path / "single.csv").write_text("x\n1\n")
    ours = dvc_data_version(data), dvc_data_version(tmp_path / "single.csv")

    _dvc(tmp_path, "init", "--no-scm", "-q")
    _dvc(tmp_path, "add", "-q", "data", "single.csv")
    recorded = tuple(
        yaml.safe_load((tmp_path / f"{name}.dvc").read_text())["outs"][0]["md5"]
        for name in ("data", "single.csv")
    )
    assert ours == recorded
    assert ours[0].endswith(".dir")
    # A change anywhere in the tree changes the version.
    (data / "sub" / "b.csv").write_text("a,b\n1,3\n")
    assert dvc_data_version(data) != ours[0]


def test_dvc_data_version_of_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing to hash"):
        dvc_data_version(tmp_path / "nope")


def test_lineage_tags() -> None:
    tags = Lineage("abc.dir", "1234", "passed: raw 30/30", "experiments/default.yaml").as_tags()
    assert tags == {
        "hearth.data_version": "abc.dir",
        "hearth.git_commit": "1234",
        "hearth.validation": "passed: raw 30/30",
        "hearth.experiment_file": "experiments/default.yaml",
    }
