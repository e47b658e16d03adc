"""What goes into each of Hearth's images: packages, locked requirements, Dockerfile.

Pure functions (no engine, no network), so the recipes are tested as text. The images are
Hearth's own rather than BentoML's generated ones: BentoML's template installs
build-essential and git (most of a 1.5 GB gateway image), runs `uv venv` (which downloads a
Python when the base lacks the one it names) and installs unhashed requirements. Here every
image gets a venv on the base's Python and the packages it imports, by hash from
requirements.lock; the model images add torch's CUDA build from PyPI (it brings the CUDA
runtime as nvidia-* wheels), so no CUDA base image and no PyTorch index are needed.

Four images serve (gateway, features, model, monolith: a BentoML service each); the fifth,
the worker, runs Hearth's Prefect flows for the Compose stack's worker: the model image's
layers (venv, torch) and the flows' packages on top, Hearth's flows and experiments in its
copy of the project (`hearth.containers.worker`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement

# The base `hearth images base` builds (Debian bookworm, its Python 3.11) and the public one
# with the same Python, used where it is already in the engine. Neither is ever pulled.
LOCAL_BASE = "hearth/base:bookworm-py3.11"
PUBLIC_BASE = "python:3.11-slim-bookworm"
BASE_ENV = "HEARTH_BASE_IMAGE"
PYTHON = "python3.11"
PORT = 3000
VENV = "/opt/hearth/venv"
APP = "/opt/hearth/app"
HOME = "/var/lib/hearth"  # HEARTH_HOME
CARRIED = "/opt/hearth/models"  # the model versions an image carries: hearth.containers.entrypoint
UID = 10001
# What the gateway and the features service import: no torch, no sklearn.
CPU_PACKAGES = (
    "bentoml", "fastapi", "httpx", "prometheus_client", "pydantic", "pydantic-settings",
    "PyYAML", "numpy", "pandas", "pyarrow", "orjson", "redis", "async-timeout", "psycopg",
    "psycopg-binary", "psycopg-pool",
    # uvicorn's C parser and libuv loop (also the hop client's parser): see pyproject.toml.
    "httptools", "uvloop",
    # BentoML brings the OTel API and SDK; the OTLP/HTTP exporter is for HEARTH_OTLP_ENDPOINT.
    "opentelemetry-exporter-otlp-proto-http",
)  # fmt: skip
# The gateway's admin API starts and promotes rollouts: it checks versions and moves the
# registry's aliases over the tracking server's REST API (httpx: hearth.rollout.registry_client),
# so it needs no MLflow. The model images load versions with MLflow's client (the skinny one:
# no server, no UI).
GATEWAY_PACKAGES = CPU_PACKAGES
MODEL_PACKAGES = (*CPU_PACKAGES, "mlflow-skinny", "torch", "scikit-learn")
# What the flows import (flows/*.py and the library code they run, lazy imports included):
# Prefect and its Dask runner, DuckDB (ETL), Great Expectations (the gates), DVC's hashing
# (lineage), matplotlib (the run's figures); MLflow's client logs and registers the model.
WORKER_PACKAGES = (
    *MODEL_PACKAGES, "prefect", "prefect-dask", "duckdb", "great-expectations", "dvc-data",
    "matplotlib",
)  # fmt: skip
# The worker's copy of the project, beyond the files a bento includes: the flows, the
# experiments they train, and the deployments it registers.
WORKER_INCLUDE = ("flows/*.py", "experiments/*.yaml", "prefect.yaml")
WORKER_HEALTH_PORT = 8080  # `prefect worker start --with-healthcheck` answers /health there
TORCH = "torch"


@dataclass(frozen=True)
class ImageSpec:
    """One of Hearth's images: the BentoML service it serves (None: the flow worker) and
    what it installs."""

    name: str
    service: str | None
    packages: tuple[str, ...]
    carries_models: bool
    include: tuple[str, ...] = ()  # project files beyond the bento's

    @property
    def serves(self) -> bool:
        return self.service is not None

    @property
    def repository(self) -> str:
        return f"hearth/{self.name}"

    @property
    def torch(self) -> bool:
        return TORCH in self.packages


IMAGES: dict[str, ImageSpec] = {
    spec.name: spec
    for spec in (
        ImageSpec("gateway", "bentos.gateway:Gateway", GATEWAY_PACKAGES, False),
        ImageSpec("features", "bentos.features:Features", CPU_PACKAGES, False),
        ImageSpec("model", "bentos.model:Model", MODEL_PACKAGES, True),
        ImageSpec("monolith", "bentos.monolith:Monolith", MODEL_PACKAGES, True),
        ImageSpec("worker", None, WORKER_PACKAGES, False, WORKER_INCLUDE),
    )
}
# The images that serve a BentoML service.
SERVING = {name: spec for name, spec in IMAGES.items() if spec.serves}


def configured_base() -> str | None:
    """HEARTH_BASE_IMAGE when set (a user's own hardened base), else None."""
    return os.environ.get(BASE_ENV) or None


def base_candidates() -> tuple[str, ...]:
    """The bases to build on, first present wins: HEARTH_BASE_IMAGE alone when set, else
    Hearth's local base, then the public slim Python image if the engine has it."""
    configured = configured_base()
    return (configured,) if configured else (LOCAL_BASE, PUBLIC_BASE)


# -- locked requirements ---------------------------------------------------------------------
def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    """canonical name → its requirements.lock line (`name==version --hash=…`)."""
    lines: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, _ = line.partition("==")
        if sep and not line.startswith("#"):
            lines[canonical(name.strip())] = line.strip()
    return lines


def dependency_closure(
    roots: Iterable[str],
    requires: Callable[[str], list[str] | None] = metadata.requires,
) -> set[str]:
    """The canonical names of `roots` and everything they need on this platform, read from
    the installed distributions' metadata (the venv holds exactly the locked versions)."""
    env = {k: str(v) for k, v in default_environment().items()}
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(canonical(r), frozenset()) for r in roots]
    while todo:
        name, extras = todo.pop()
        key = name + ("[" + ",".join(sorted(extras)) + "]" if extras else "")
        if key in seen:
            continue
        seen.add(key)
        try:
            needs = requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: the lock says whether it exists at all
        for spec in needs:
            req = Requirement(spec)
            wanted = ("", *sorted(extras))
            if req.marker and not any(req.marker.evaluate(env | {"extra": e}) for e in wanted):
                continue
            todo.append((canonical(req.name), frozenset(req.extras)))
    return {key.partition("[")[0] for key in seen}


def locked_requirements(lock_text: str, names: Iterable[str], skip: Iterable[str] = ()) -> str:
    """The lock's lines (with their hashes) for `names`, sorted, minus `skip`; a name the lock
    lacks is an error (the image would hold an unlocked version)."""
    lock = parse_lock(lock_text)
    wanted = {canonical(n) for n in names} - {canonical(n) for n in skip}
    missing = sorted(wanted - lock.keys())
    if missing:
        raise KeyError(f"not in requirements.lock: {', '.join(missing)}")
    return "".join(f"{lock[n]}\n" for n in sorted(wanted))


def torch_requirement(lock_text: str) -> str:
    """`torch==X` at the locked version without its local label: the lock holds the CPU build
    (`+cpu`, from a local wheel), an image gets PyPI's build of the same version (CUDA)."""
    line = parse_lock(lock_text).get(TORCH)
    if line is None:
        raise KeyError("torch is not in requirements.lock")
    version = line.partition("==")[2].split()[0].split("+")[0]
    return f"{TORCH}=={version}"


# -- tags and labels -------------------------------------------------------------------------
def image_tags(spec: ImageSpec, version: str, served: Mapping[str, str]) -> list[str]:
    """`repo:<hearth version>` and `repo:latest`; a model image also
    `repo:<hearth version>-champion-v3[-challenger-v4]`, the versions it carries."""
    tags = [f"{spec.repository}:{version}", f"{spec.repository}:latest"]
    if spec.carries_models and served:
        carried = "-".join(f"{alias}-v{v}" for alias, v in served.items())
        tags.insert(0, f"{spec.repository}:{version}-{carried}")
    return tags


def image_labels(spec: ImageSpec, version: str, served: Mapping[str, str]) -> dict[str, str]:
    labels = {
        "org.opencontainers.image.title": spec.repository,
        "org.opencontainers.image.version": version,
        "hearth.service": spec.service or "prefect-worker",
    }
    if spec.carries_models:
        labels |= {f"hearth.{alias}_version": v for alias, v in served.items()}
    return labels


# -- the Dockerfile ---------------------------------------------------------------------------
def dockerfile(spec: ImageSpec, base: str, torch: str | None, labels: Mapping[str, str]) -> str:
    """The image's Dockerfile (legacy builder: no BuildKit syntax). Layers go from what
    changes least to most: venv and pip, torch (GBs: cached by the engine across builds),
    the locked packages, then Hearth's source and the models it carries."""
    lines = [
        f"FROM {base}",
        f"ENV VIRTUAL_ENV={VENV} PATH={VENV}/bin:$PATH PYTHONUNBUFFERED=1 \\",
        "    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore",
        "COPY pip.lock /opt/hearth/pip.lock",
        f"RUN {PYTHON} -m venv {VENV} \\",
        "    && pip install -q --require-hashes --no-deps -r /opt/hearth/pip.lock",
    ]
    if spec.torch:
        if torch is None:
            raise ValueError(f"{spec.name} needs torch: pass its requirement")
        lines += [
            "# torch's CUDA build and its nvidia-* runtime wheels, from PyPI (not hashed: the",
            "# lock holds the CPU build). CPU where no GPU is visible, CUDA with --gpus all.",
            f"RUN pip install -q '{torch}'",
        ]
    lines += [
        "COPY requirements.txt /opt/hearth/requirements.txt",
        "RUN pip install -q --require-hashes --no-deps -r /opt/hearth/requirements.txt \\",
        f"    && useradd --system --uid {UID} --user-group --home-dir {HOME} hearth \\",
        f"    && mkdir -p {HOME} && chown {UID}:{UID} {HOME}",
        f"COPY app/ {APP}/",
    ]
    if spec.carries_models:
        lines.append(f"COPY model-cache/ {CARRIED}/")
    lines += [
        f"WORKDIR {APP}",
        # Production mode: refuses to serve on a development default secret (pass
        # HEARTH_API_KEY, HEARTH_ADMIN_TOKEN, HEARTH_INTERNAL_TOKEN).
        f"ENV PYTHONPATH={APP}/src:{APP} HEARTH_HOME={HOME} HEARTH_ENV=production \\",
        f"    BENTOML_HOME={HOME}/bentoml BENTOML_DO_NOT_TRACK=true DO_NOT_TRACK=true \\",
        "    MLFLOW_ENABLE_TELEMETRY=false",
    ]
    if spec.service is None:
        return "\n".join([*lines, *_worker_tail(labels)]) + "\n"
    lines += [
        f"USER {UID}:{UID}",
        f"EXPOSE {PORT}",
        *(f'LABEL {key}="{value}"' for key, value in labels.items()),
        "HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD "
        + _exec_form([PYTHON, "-c", _PROBE.format(port=PORT)]),
        "ENTRYPOINT " + _exec_form([PYTHON, "-m", "hearth.containers.entrypoint"]),
        "CMD " + _exec_form([spec.service]),
    ]
    return "\n".join(lines) + "\n"


def worker_command(pool: str = "hearth-process", name: str | None = None) -> list[str]:
    """The worker image's process: register the deployments, then `prefect worker start`."""
    named = ["--name", name] if name else []
    return [PYTHON, "-m", "hearth.containers.worker", "--pool", pool, "--type", "process",
            *named, "--with-healthcheck"]  # fmt: skip


def _worker_tail(labels: Mapping[str, str]) -> list[str]:
    """The flow worker's end of the Dockerfile: the project's copy is its flows' working
    directory (read-only to them); their data, reports and Prefect's home go under HEARTH_HOME
    (a volume). No ENTRYPOINT: `command:` in Compose and Kubernetes replaces the whole CMD."""
    return [
        f"ENV HEARTH_REPO_DIR={APP} HEARTH_DATA_DIR={HOME}/data \\",
        f"    HEARTH_REPORTS_DIR={HOME}/reports PREFECT_HOME={HOME}/prefect \\",
        f"    PREFECT_WORKER_WEBSERVER_PORT={WORKER_HEALTH_PORT} MPLBACKEND=Agg \\",
        "    PREFECT_SERVER_ANALYTICS_ENABLED=false GX_ANALYTICS_ENABLED=false DVC_NO_ANALYTICS=1",
        f"USER {UID}:{UID}",
        f"EXPOSE {WORKER_HEALTH_PORT}",
        *(f'LABEL {key}="{value}"' for key, value in labels.items()),
        "HEALTHCHECK --interval=10s --timeout=5s --start-period=300s --retries=3 CMD "
        + _exec_form([PYTHON, "-c", _WORKER_PROBE.format(port=WORKER_HEALTH_PORT)]),
        "CMD " + _exec_form(worker_command()),
    ]


# Base images from packages carry no curl: the probe is Python's.
_PROBE = "import urllib.request as u; u.urlopen('http://127.0.0.1:{port}/readyz', timeout=4)"
_WORKER_PROBE = _PROBE.replace("/readyz", "/health")


def _exec_form(argv: list[str]) -> str:
    return json.dumps(argv)
