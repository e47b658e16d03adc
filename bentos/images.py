"""The bentos' images (`hearth build`, then `bentoml containerize`): BentoML's template on
Hearth's base, with the packages each service imports.

The base is HEARTH_BASE_IMAGE, else Hearth's local base (`hearth images base`): no hub is
needed. The model bentos get torch's CUDA build from PyPI (the plain `torch==X` wheel
brings the CUDA runtime as nvidia-* wheels): no CUDA base image, no PyTorch index.
`hearth containerize` builds slimmer images from its own recipes (`hearth.containers`).
Versions are pinned from requirements.lock when it is there (at build time); inside a
built bento the image is already frozen, so the names alone suffice.
"""

from __future__ import annotations

from pathlib import Path

import bentoml

from hearth.containers.recipes import (
    CPU_PACKAGES,
    LOCAL_BASE,
    MODEL_PACKAGES,
    configured_base,
)

PYTHON = "3.11"
_LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"


def pins(names: tuple[str, ...]) -> list[str]:
    """`name==version` from requirements.lock where it lists the name, else the bare name."""
    locked = {}
    if _LOCK.exists():
        for line in _LOCK.read_text().splitlines():
            name, sep, version = line.partition("==")
            if sep:
                # "2.13.0+cpu --hash=sha256:…" → "2.13.0": no hash, no local build label.
                locked[name.strip().lower()] = version.split()[0].split("+")[0]
    return [f"{n}=={locked[n.lower()]}" if n.lower() in locked else n for n in names]


def _image(packages: tuple[str, ...]) -> bentoml.images.Image:
    base = configured_base() or LOCAL_BASE
    return bentoml.images.Image(
        base_image=base, python_version=PYTHON, lock_python_packages=False
    ).python_packages(*pins(packages))


def cpu_image() -> bentoml.images.Image:
    return _image(CPU_PACKAGES)


def cuda_image() -> bentoml.images.Image:
    return _image(MODEL_PACKAGES)
