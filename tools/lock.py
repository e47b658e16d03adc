"""Write requirements.lock: every package pinned, with the sha256 of the file pip installs here.

`make lock` runs this with a scratch venv's pip. pip resolves `.[dev]` plus pip itself and the
build backend (pyproject's [build-system] requires, so that `pip install --no-build-isolation -e
.` needs nothing unhashed) with `--dry-run --report`: the report names each file pip would
install and its sha256 (from the index, or hashed by pip for a local file such as the CPU torch
wheel in /opt/wheels). By default the current lock's versions are kept as constraints, so a new
dependency is added without moving the others; `--upgrade` re-resolves everything.

The hashes are those of this machine's files (Python 3.11, linux x86_64): `pip install
--require-hashes` elsewhere needs a lock made there.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
HEADER = """\
# Pinned, resolved dependency set for Hearth (Python 3.11, linux x86_64), with the sha256 of each
# file pip installs here: `make install` runs `pip install --require-hashes -r requirements.lock`.
# Regenerate with `make lock` (keeps these versions; `make lock UPGRADE=1` re-resolves all).
# torch is the local CPU build (/opt/wheels): an unpinned torch would pull several GB of CUDA
# wheels. pip and setuptools are here too: pip pins itself first, setuptools builds Hearth.
"""
LINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==\S+( --hash=sha256:[0-9a-f]{64})+$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path = LOCK) -> dict[str, str]:
    """{canonical name: version} of a lock file (with or without hashes)."""
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, rest = line.partition("==")
            if sep and not line.startswith("#"):
                out[canonical(name)] = rest.split()[0]
    return out


def resolve(pip: str, pip_version: str, upgrade: bool) -> list[dict]:
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        args = [pip, "install", "-q", "--dry-run", "--ignore-installed", "--report", str(report)]
        if not upgrade and LOCK.exists():
            constraints = Path(tmp) / "constraints.txt"
            keep = {n: v for n, v in locked().items() if n not in {"pip", "hearth"}}
            constraints.write_text("".join(f"{n}=={v}\n" for n, v in keep.items()))
            args += ["-c", str(constraints)]
        args += ["-e", f"{ROOT}[dev]", f"pip=={pip_version}", *build]
        subprocess.run(args, check=True)
        return json.loads(report.read_text())["install"]


def lines(items: list[dict]) -> list[str]:
    out, missing = [], []
    for item in items:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if canonical(name) == "hearth":
            continue  # Hearth itself: `pip install --no-deps -e .`, not from the lock
        archive = item["download_info"].get("archive_info", {})
        hashes = archive.get("hashes") or {}
        if "sha256" not in hashes and archive.get("hash", "").startswith("sha256="):
            hashes = {"sha256": archive["hash"].removeprefix("sha256=")}
        if "sha256" not in hashes:
            missing.append(f"{name}=={version} ({item['download_info'].get('url')})")
            continue
        out.append(f"{name}=={version} --hash=sha256:{hashes['sha256']}")
    if missing:
        sys.exit(f"no sha256 in pip's report for: {', '.join(missing)}")
    bad = [line for line in out if not LINE.match(line)]
    if bad:
        sys.exit(f"malformed lock lines: {bad}")
    return sorted(out, key=lambda line: canonical(line.partition("==")[0]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pip", required=True, help="the pip that resolves (a scratch venv's)")
    parser.add_argument("--pip-version", required=True, help="the pip version to lock")
    parser.add_argument("--upgrade", action="store_true", help="re-resolve every version")
    ns = parser.parse_args()
    before = locked()
    new = lines(resolve(ns.pip, ns.pip_version, ns.upgrade))
    tmp = LOCK.with_suffix(".lock.new")
    tmp.write_text(HEADER + "\n".join(new) + "\n")
    tmp.replace(LOCK)
    after = locked()
    for name in sorted(before.keys() | after.keys()):
        if before.get(name) != after.get(name):
            print(f"  {name}: {before.get(name, '-')} → {after.get(name, '-')}")
    print(f"requirements.lock: {len(new)} packages, each with its sha256")


if __name__ == "__main__":
    main()
