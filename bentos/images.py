"""Container images: CPU-only and small for the gateway and features, CUDA for models.

Versions are pinned from requirements.lock when it is there (at build time); inside a
built bento the image is already frozen, so the names alone suffice.
"""

from __future__ import annotations

from pathlib import Path

import bentoml

PYTHON = "3.11"
CUDA_BASE = "nvidia/cuda:12.8.1-runtime-ubuntu22.04"
TORCH_INDEX = "https://download.pytorch.org/whl/cu128"
_LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"

# What the gateway and the features service import: no torch, no MLflow, no sklearn.
CPU_PACKAGES = (
    "bentoml", "fastapi", "httpx", "prometheus_client", "pydantic", "pydantic-settings",
    "PyYAML", "numpy", "pandas", "pyarrow", "redis",
    # uvicorn's C parser and libuv loop (also the hop client's parser): see pyproject.toml.
    "httptools", "uvloop",
    # BentoML brings the OTel API and SDK; the OTLP/HTTP exporter is for HEARTH_OTLP_ENDPOINT.
    "opentelemetry-exporter-otlp-proto-http",
)  # fmt: skip
MODEL_PACKAGES = (*CPU_PACKAGES, "torch", "mlflow-skinny", "scikit-learn")


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


def cpu_image() -> bentoml.images.Image:
    return bentoml.images.Image(python_version=PYTHON, lock_python_packages=False).python_packages(
        *pins(CPU_PACKAGES)
    )


def cuda_image() -> bentoml.images.Image:
    # The CUDA runtime comes from the base image; torch's CUDA wheels from PyTorch's index.
    return bentoml.images.Image(
        base_image=CUDA_BASE, python_version=PYTHON, lock_python_packages=False
    ).python_packages(f"--extra-index-url {TORCH_INDEX}", *pins(MODEL_PACKAGES))
