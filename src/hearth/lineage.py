"""Where a model came from: the data version (DVC hash), the code (git commit), the
validation verdict and the experiment file. Attached to every MLflow run and model version.
"""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

UNKNOWN = "unknown"


def git_commit(repo: Path) -> str:
    """HEAD's sha, with "-dirty" when tracked files differ from it; "unknown" outside git.

    Untracked files do not count, as with ``git describe --dirty``: generated state
    (reports, databases) must not make every run look dirty. Never raises: lineage is
    recorded, not enforced.
    """
    try:
        sha = _git(repo, "rev-parse", "HEAD")
        status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return UNKNOWN
    return f"{sha}-dirty" if status else sha


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout.strip()


def dvc_data_version(path: Path) -> str:
    """The hash DVC records for `path` (a directory's ``<md5>.dir``, a file's md5).

    Computed with DVC's own hashing (dvc_data's `build`), so it equals the ``md5`` in the
    ``.dvc`` file or ``dvc.lock`` for the same content. Nothing is written to any cache.
    """
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import LocalFileSystem, MemoryFileSystem

    if not Path(path).exists():
        raise FileNotFoundError(f"{path} not found: nothing to hash")
    # build() stages objects into an in-memory database; dry_run hashes without copying.
    staging = HashFileDB(MemoryFileSystem(), "memory://hearth-lineage")
    _, _, obj = build(staging, str(Path(path).resolve()), LocalFileSystem(), "md5", dry_run=True)
    value = obj.hash_info.value
    if not value:
        raise RuntimeError(f"DVC produced no hash for {path}")
    return str(value)


@dataclass(frozen=True)
class Lineage:
    """What a model was made from; `as_tags` gives the MLflow tags."""

    data_version: str
    git_commit: str
    validation: str
    experiment_file: str

    def as_tags(self) -> dict[str, str]:
        """Every field as the tag ``hearth.<field>``."""
        return {f"hearth.{name}": value for name, value in asdict(self).items()}
