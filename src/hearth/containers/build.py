"""`hearth containerize`: build contexts for Hearth's images and `docker build` them.

A context holds only what its image needs: the Dockerfile (`recipes.dockerfile`), the lock's
lines for the packages it imports and their dependencies, Hearth's source (the files a bento
includes; the worker's also its flows, experiments and prefect.yaml), and for the model
images the model versions that serve, copied from the local model cache in its layout
(``model-cache/<name>/<version>/``), so a container serves them without fetching them first.
Builds use the host's network (`--network host`: pip reaches PyPI however the engine's bridge
is set up) and never pull a base image.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from hearth.containers import recipes
from hearth.containers.engine import ENGINE
from hearth.containers.recipes import ImageSpec
from hearth.serving.packaging import BENTO_INCLUDE

LOCK = "requirements.lock"


class MissingBase(LookupError):
    """None of the candidate base images is in the engine."""


class BuiltImage(NamedTuple):
    name: str
    tags: tuple[str, ...]
    seconds: float
    size_bytes: int


def local_image(tag: str, engine: str = ENGINE) -> bool:
    done = subprocess.run([engine, "image", "inspect", tag], capture_output=True, timeout=30)
    return done.returncode == 0


def choose_base(engine: str = ENGINE) -> str:
    """The first candidate base present in the engine (`recipes.base_candidates`)."""
    candidates = recipes.base_candidates()
    for tag in candidates:
        if local_image(tag, engine):
            return tag
    raise MissingBase(f"no base image in the engine (looked for {', '.join(candidates)})")


def write_context(
    spec: ImageSpec,
    root: Path,
    dest: Path,
    base: str,
    version: str,
    served: Mapping[str, str],
    model_dirs: Mapping[str, Path],
) -> list[str]:
    """Fill `dest` with `spec`'s build context from the project at `root`; its tags."""
    lock_text = (root / LOCK).read_text()
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "pip.lock").write_text(recipes.locked_requirements(lock_text, ["pip"]))
    names = recipes.dependency_closure(spec.packages)
    (dest / "requirements.txt").write_text(
        recipes.locked_requirements(lock_text, names, skip=[recipes.TORCH])
    )
    torch = recipes.torch_requirement(lock_text) if spec.torch else None
    labels = recipes.image_labels(spec, version, served)
    (dest / "Dockerfile").write_text(recipes.dockerfile(spec, base, torch, labels))
    app = dest / "app"
    for pattern in (*BENTO_INCLUDE, *spec.include):
        for path in sorted(root.glob(pattern)):
            if path.is_file() and "__pycache__" not in path.parts:
                target = app / path.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    if spec.carries_models:
        for rel, source in model_dirs.items():
            shutil.copytree(source, dest / "model-cache" / rel, dirs_exist_ok=True)
    return recipes.image_tags(spec, version, served)


def docker_build(
    name: str,
    context: Path,
    tags: list[str],
    engine: str = ENGINE,
    output: Callable[[str], None] = print,
) -> BuiltImage:
    """`docker build` in the foreground (its output line by line); the image and its size."""
    started = time.monotonic()
    argv = [engine, "build", "--network", "host", *(a for t in tags for a in ("-t", t))]
    proc = subprocess.Popen(
        [*argv, str(context)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_legacy_builder_env(),
    )
    assert proc.stdout is not None
    tail: list[str] = []
    for line in proc.stdout:
        output(line.rstrip())
        tail = [*tail[-30:], line.rstrip()]
    if proc.wait():
        raise RuntimeError(f"`docker build` of {name} failed:\n" + "\n".join(tail[-15:]))
    seconds = time.monotonic() - started
    return BuiltImage(name, tuple(tags), seconds, image_size(tags[0], engine))


def image_size(tag: str, engine: str = ENGINE) -> int:
    done = subprocess.run(
        [engine, "image", "inspect", "--format", "{{.Size}}", tag],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return int(done.stdout.strip() or 0)


def _legacy_builder_env() -> dict[str, str]:
    # Debian's docker.io ships no buildx plugin: the classic builder, said explicitly (no
    # warning, same cache across runs).
    return dict(os.environ) | {"DOCKER_BUILDKIT": "0"}
