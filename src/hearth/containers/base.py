"""`hearth images base`: a Debian bookworm base image from Debian's packages, no hub.

`debootstrap --variant=minbase` with Debian's Python 3.11, pip, venv and the CA store, from
the mirror this machine's apt uses; the machine's own CA certificates (those registered
under /usr/local/share/ca-certificates, e.g. a TLS-inspecting proxy's) and the files named
by HEARTH_EXTRA_CA_CERTS are registered in it (`update-ca-certificates`). The packages are
downloaded once into a tarball under HEARTH_HOME/containers, so a rebuild only unpacks.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from hearth.containers.engine import ENGINE
from hearth.containers.recipes import LOCAL_BASE, PYTHON

SUITE = "bookworm"
PACKAGES = (PYTHON, "python3-pip", "python3-venv", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
EXTRA_CA_ENV = "HEARTH_EXTRA_CA_CERTS"
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# uv, pip, requests and OpenSSL-based clients all trust the system store.
IMAGE_ENV = {
    "LANG": "C.UTF-8",
    "SSL_CERT_FILE": SYSTEM_BUNDLE,
    "REQUESTS_CA_BUNDLE": SYSTEM_BUNDLE,
    "PIP_CERT": SYSTEM_BUNDLE,
    "UV_NATIVE_TLS": "1",
}
# Dropped from the root filesystem: apt's downloads and lists, documentation.
PRUNE = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man")


@dataclass(frozen=True)
class BaseBuild:
    tag: str
    mirror: str
    seconds: float
    downloaded: bool  # False: the cached package tarball was reused
    certificates: tuple[str, ...]


# -- inputs -----------------------------------------------------------------------------------
def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """The Debian archive this machine's apt uses for `SUITE` (sources.list or deb822)."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file() or path.suffix not in {"", ".list", ".sources"}:
            continue
        text = path.read_text(errors="replace")
        for uri in (_one_line_uris if path.suffix != ".sources" else _deb822_uris)(text):
            if not uri.rstrip("/").endswith(("-security", "debian-security")):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def _one_line_uris(text: str) -> Iterable[str]:
    for line in text.splitlines():
        m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
        if m and m.group(2) == SUITE:
            yield m.group(1)


def _deb822_uris(text: str) -> Iterable[str]:
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(
            (k.strip().lower(), v.strip())
            for k, _, v in (line.partition(":") for line in stanza.splitlines())
            if not k.startswith("#") and v
        )
        if "deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split():
            yield from fields.get("uris", "").split()


def extra_certificates(value: str | None = None) -> list[Path]:
    """The machine's own CA certificates and HEARTH_EXTRA_CA_CERTS' files (os.pathsep
    separated; a directory gives its *.crt and *.pem)."""
    value = os.environ.get(EXTRA_CA_ENV, "") if value is None else value
    found = sorted(LOCAL_CA_DIR.rglob("*.crt")) if LOCAL_CA_DIR.is_dir() else []
    for entry in filter(None, value.split(os.pathsep)):
        path = Path(entry).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix in {".crt", ".pem"})
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{EXTRA_CA_ENV}: no such file or directory: {entry}")
    return found


def tarball_name(mirror: str, packages: Iterable[str] = PACKAGES) -> str:
    key = hashlib.sha256(f"{SUITE} {mirror} {' '.join(sorted(packages))}".encode()).hexdigest()
    return f"debootstrap-{SUITE}-minbase-{key[:12]}.tgz"


# -- building ----------------------------------------------------------------------------------
def build(
    cache_dir: Path,
    tag: str = LOCAL_BASE,
    mirror: str | None = None,
    certificates: list[Path] | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> BaseBuild:
    """debootstrap (from the cached tarball when there is one), register the certificates,
    drop PEP 668's marker (pip may install into the system Python, as BentoML's template
    does), then `docker import` the tree as `tag`."""
    if shutil.which("debootstrap") is None:
        raise FileNotFoundError("debootstrap is not installed: `make container-deps`")
    started = time.monotonic()
    mirror = mirror or debian_mirror()
    certs = extra_certificates() if certificates is None else certificates
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / tarball_name(mirror)
    common = ["--variant=minbase", f"--include={','.join(PACKAGES)}"]
    downloaded = not tarball.exists()
    if downloaded:
        progress(f"downloading Debian {SUITE} packages from {mirror} into {tarball}")
        with tempfile.TemporaryDirectory(dir=cache_dir) as scratch:
            partial = tarball.with_suffix(".partial.tgz")
            _run(["debootstrap", *common, f"--make-tarball={partial}", SUITE, scratch, mirror])
            partial.rename(tarball)
    with tempfile.TemporaryDirectory(dir=cache_dir) as root:
        progress(f"unpacking {SUITE} (minbase + {', '.join(PACKAGES)})")
        _run(["debootstrap", *common, f"--unpack-tarball={tarball}", SUITE, root, mirror])
        rootfs = Path(root)
        _register(rootfs, certs)
        _finish(rootfs, mirror)
        progress(f"importing it into the engine as {tag}")
        _import(rootfs, tag)
    return BaseBuild(
        tag, mirror, time.monotonic() - started, downloaded, tuple(str(c) for c in certs)
    )


def _register(rootfs: Path, certs: list[Path]) -> None:
    target = rootfs / "usr/local/share/ca-certificates/hearth"
    target.mkdir(parents=True, exist_ok=True)
    for i, cert in enumerate(certs):
        # update-ca-certificates reads *.crt only; a numbered name keeps same-named files apart.
        shutil.copyfile(cert, target / f"{i:02d}-{cert.stem}.crt")
    _run(["chroot", str(rootfs), "update-ca-certificates", "--fresh"])


def _finish(rootfs: Path, mirror: str) -> None:
    for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    for name in PRUNE:
        shutil.rmtree(rootfs / name, ignore_errors=True)
        (rootfs / name).mkdir(parents=True, exist_ok=True)
    (rootfs / "etc/apt/sources.list").write_text(f"deb {mirror} {SUITE} main\n")


def _import(rootfs: Path, tag: str) -> None:
    changes = [f"ENV {key}={value}" for key, value in IMAGE_ENV.items()]
    changes.append(f'CMD ["{PYTHON}"]')
    argv = [ENGINE, "import", *(a for c in changes for a in ("--change", c)), "-", tag]
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    try:
        done = subprocess.run(argv, stdin=tar.stdout, capture_output=True, text=True)
    finally:
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
    if done.returncode or tar.returncode:
        raise RuntimeError(f"`docker import` failed: {done.stderr.strip()[-500:]}")


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr or done.stdout).strip()[-800:]
        raise RuntimeError(f"`{' '.join(argv[:2])} …` failed ({done.returncode}): {tail}")
