"""The images' recipes as text: packages, locked requirements, Dockerfiles, the base's inputs.

No engine needed; `tests/containers/` builds and runs the images where one runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from hearth.containers import base, entrypoint, recipes, worker
from hearth.containers.recipes import IMAGES, SERVING
from hearth.stack.services import WORK_POOL, WORK_POOLS

REPO = Path(__file__).resolve().parents[2]
LOCK = (REPO / "requirements.lock").read_text()
# Imported where installed (httpx's HTTP/2, anyio's trio backend, …), not needed: the images
# serve without them.
OPTIONAL = {
    "h2", "hpack", "hyperframe", "outcome", "trio", "sortedcontainers", "sniffio", "pytz",
    "setuptools", "pydantic-extra-types", "pysocks",
}  # fmt: skip
# They install the `mlflow` package too: mlflow-skinny, in the images, holds every file of it
# a client imports (mlflow-tracing's are a subset; mlflow adds the server's dependencies).
MLFLOW_TWINS = {"mlflow", "mlflow-tracing"}
# What the worker's flow runs import: every flow, and what the library imports lazily on
# their paths (the gates, lineage, metrics, figures, the registry).
WORKER_IMPORTS = (
    "flows.etl", "flows.validate", "flows.train", "flows.pipeline", "flows.monitor",
    "flows.rollout", "flows.main_job", "great_expectations", "dvc_data.hashfile.build",
    "dvc_objects.fs", "sklearn.metrics", "matplotlib.pyplot", "mlflow.pyfunc", "duckdb",
)  # fmt: skip


def _requirements(name: str) -> str:
    spec = IMAGES[name]
    names = recipes.dependency_closure(spec.packages)
    return recipes.locked_requirements(LOCK, names, skip=[recipes.TORCH])


def test_closure_follows_markers_and_extras() -> None:
    meta = {
        "app": ["lib[fast]>=1", "winonly; sys_platform == 'win32'", "opt; extra == 'x'"],
        "lib": ["core", "speedup; extra == 'fast'"],
        "core": None,
        "speedup": [],
    }
    assert recipes.dependency_closure(["App"], meta.__getitem__) == {
        "app",
        "lib",
        "core",
        "speedup",
    }


@pytest.mark.parametrize("name", ["gateway", "features"])
def test_cpu_images_are_locked_by_hash_without_torch(name: str) -> None:
    text = _requirements(name)
    lines = text.splitlines()
    assert lines and all("--hash=sha256:" in line for line in lines)
    for heavy in ("torch==", "nvidia-cu", "triton", "scikit-learn==", "mlflow==", "cu12"):
        assert heavy not in text
    assert any(line.startswith("bentoml==") for line in lines)


def test_only_the_model_images_carry_mlflows_client() -> None:
    # They load versions with it. The gateway's admin API moves the aliases over MLflow's
    # REST API (tests/unit/test_registry_client.py runs it with MLflow unimportable).
    for name in ("gateway", "features"):
        assert "mlflow" not in _requirements(name), name
    for name in ("model", "monolith"):
        assert "mlflow-skinny==" in _requirements(name), name


@pytest.mark.parametrize("name", ["model", "monolith"])
def test_model_images_take_torch_cuda_from_pypi(name: str) -> None:
    torch = recipes.torch_requirement(LOCK)
    assert torch.startswith("torch==") and "+" not in torch
    dockerfile = recipes.dockerfile(IMAGES[name], recipes.LOCAL_BASE, torch, {})
    assert f"RUN pip install -q '{torch}'" in dockerfile
    assert "nvidia/cuda" not in dockerfile and "download.pytorch.org" not in dockerfile
    assert "scikit-learn==" in _requirements(name) and "torch==" not in _requirements(name)


def _imports(name: str) -> tuple[str, ...]:
    service = IMAGES[name].service
    return WORKER_IMPORTS if service is None else (service.partition(":")[0],)


@pytest.fixture(scope="module")
def loaded_modules() -> dict[str, set[str]]:
    """image → the top-level modules loaded once its service (the worker: its flows) is
    imported, in one process: features, gateway, model, monolith, worker in turn (each
    image's packages include the ones before it, so what the earlier imports left loaded is
    needed there too)."""
    order = ["features", "gateway", "model", "monolith", "worker"]
    code = "import importlib, sys\n" + "".join(
        "".join(f"importlib.import_module({module!r}); " for module in _imports(n))
        + "print(' '.join({m.partition('.')[0] for m in sys.modules}))\n"
        for n in order
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {n: set(line.split()) for n, line in zip(order, done.stdout.splitlines(), strict=True)}


@pytest.mark.parametrize("name", list(IMAGES))
def test_each_image_holds_what_its_service_imports(
    name: str, loaded_modules: dict[str, set[str]]
) -> None:
    """The distributions of the modules its service loads (here, where everything is
    installed) are in the image's closure: a new top-level import of a package the image
    lacks fails here, not in a container."""
    spec = IMAGES[name]
    distributions = metadata.packages_distributions()
    needed = {
        recipes.canonical(dist)
        for top in loaded_modules[name]
        for dist in distributions.get(top, [])
    }
    closure = recipes.dependency_closure(spec.packages)
    if "mlflow-skinny" in closure:
        closure |= MLFLOW_TWINS
    missing = needed - closure - {"hearth"} - OPTIONAL
    assert not missing, f"{spec.repository} lacks {sorted(missing)}"


def test_a_name_missing_from_the_lock_is_an_error() -> None:
    with pytest.raises(KeyError, match="not-a-package"):
        recipes.locked_requirements(LOCK, ["bentoml", "not-a-package"])


@pytest.mark.parametrize("name", list(SERVING))
def test_dockerfile_serves_the_service_in_production_from_the_given_base(name: str) -> None:
    spec = IMAGES[name]
    torch = "torch==2.13.0" if spec.torch else None
    text = recipes.dockerfile(spec, "example/base:1", torch, {"hearth.x": "y"})
    lines = text.splitlines()
    assert lines[0] == "FROM example/base:1" and text.count("FROM ") == 1
    assert "HEARTH_ENV=production" in text and f"USER {recipes.UID}" in text
    assert "--require-hashes" in text and 'LABEL hearth.x="y"' in text
    assert lines[-1] == f'CMD ["{spec.service}"]'
    assert "hearth.containers.entrypoint" in lines[-2]
    assert ("model-cache/" in text) == spec.carries_models
    assert ("torch==" in text) == spec.torch
    # Hearth's source comes last: a code change rebuilds neither torch nor the packages.
    assert text.index("COPY app/") > text.index("requirements.txt")


def test_the_worker_image_runs_flows_on_the_model_images_layers() -> None:
    torch = "torch==2.13.0"
    text = recipes.dockerfile(IMAGES["worker"], "example/base:1", torch, {})
    model = recipes.dockerfile(IMAGES["model"], "example/base:1", torch, {})
    # The same steps up to torch's (GBs): the engine's cache builds that layer once for both.
    upto_torch = model[: model.index(f"RUN pip install -q '{torch}'")]
    assert text.startswith(upto_torch) and f"RUN pip install -q '{torch}'" in text
    lines = text.splitlines()
    assert "ENTRYPOINT" not in text and lines[-1] == f"CMD {json.dumps(recipes.worker_command())}"
    assert f"USER {recipes.UID}:{recipes.UID}" in lines and "HEARTH_ENV=production" in text
    for setting in (
        f"HEARTH_REPO_DIR={recipes.APP}",
        f"HEARTH_DATA_DIR={recipes.HOME}/data",
        f"HEARTH_REPORTS_DIR={recipes.HOME}/reports",
        f"HEARTH_HOME={recipes.HOME}",
    ):
        assert setting in text, setting  # fmt: skip
    assert "/health" in text and "model-cache/" not in text
    names = set(recipes.parse_lock(_requirements("worker")))
    assert {"prefect", "great-expectations", "duckdb", "mlflow-skinny", "dvc-data"} <= names


def test_the_worker_registers_prefect_yamls_deployments_on_their_pools() -> None:
    assert set(worker.work_pools((REPO / "prefect.yaml").read_text())) == set(WORK_POOLS)
    commands = worker.register_commands(REPO)
    assert [c[4:7] for c in commands[:-1]] == [
        ["work-pool", "create", p] for p in sorted(WORK_POOLS)
    ]
    assert commands[-1][-2:] == ["deploy", "--all"]
    assert recipes.worker_command()[recipes.worker_command().index("--pool") + 1] == WORK_POOL
    # The worker's project copy holds what prefect.yaml's entrypoints and parameters name.
    deployments = yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    files = {d["entrypoint"].partition(":")[0] for d in deployments}
    files |= {d["parameters"]["experiment"] for d in deployments if "experiment" in d["parameters"]}
    include = (*recipes.WORKER_INCLUDE, "params.yaml")
    assert all(any(Path(f).match(pattern) for pattern in include) for f in files), files


def test_compose_runs_the_worker_image_with_its_command() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    service = compose["services"]["prefect-worker"]
    assert service["image"] == "${HEARTH_WORKER_IMAGE:-hearth/worker:latest}"
    assert service["command"] == recipes.worker_command(name="hearth-worker-compose")
    assert f"worker-home:{recipes.HOME}" in service["volumes"]


def test_model_images_are_tagged_with_the_versions_they_carry() -> None:
    served = {"champion": "3", "challenger": "4"}
    assert recipes.image_tags(IMAGES["model"], "0.1.0", served) == [
        "hearth/model:0.1.0-champion-v3-challenger-v4",
        "hearth/model:0.1.0",
        "hearth/model:latest",
    ]
    assert recipes.image_tags(IMAGES["gateway"], "0.1.0", served) == [
        "hearth/gateway:0.1.0",
        "hearth/gateway:latest",
    ]
    labels = recipes.image_labels(IMAGES["monolith"], "0.1.0", served)
    assert labels["hearth.champion_version"] == "3"


def test_base_image_is_the_configured_one_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(recipes.BASE_ENV, raising=False)
    assert recipes.base_candidates() == (recipes.LOCAL_BASE, recipes.PUBLIC_BASE)
    monkeypatch.setenv(recipes.BASE_ENV, "corp/hardened:3.11")
    assert recipes.base_candidates() == ("corp/hardened:3.11",)


# -- the base image's inputs -----------------------------------------------------------------
def test_mirror_comes_from_apts_sources(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\n# a comment: with a colon\nURIs: http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert base.debian_mirror(tmp_path) == "http://mirror.example/debian"
    one_line = "deb [arch=amd64] http://old.example/debian bookworm main\n"
    (tmp_path / "sources.list").write_text(one_line)
    assert base.debian_mirror(tmp_path) == "http://old.example/debian"
    assert base.debian_mirror(tmp_path / "none") == base.DEFAULT_MIRROR


def test_extra_certificates_from_files_and_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "LOCAL_CA_DIR", tmp_path / "absent")
    (tmp_path / "corp").mkdir()
    (tmp_path / "corp" / "a.pem").write_text("A")
    (tmp_path / "corp" / "notes.txt").write_text("-")
    (tmp_path / "proxy.crt").write_text("P")
    value = f"{tmp_path / 'corp'}:{tmp_path / 'proxy.crt'}"
    assert base.extra_certificates(value) == [tmp_path / "corp" / "a.pem", tmp_path / "proxy.crt"]
    with pytest.raises(FileNotFoundError, match="HEARTH_EXTRA_CA_CERTS"):
        base.extra_certificates(str(tmp_path / "missing.crt"))


def test_the_package_tarball_is_cached_per_mirror() -> None:
    one = base.tarball_name("http://a.example/debian")
    assert one == base.tarball_name("http://a.example/debian")
    assert one != base.tarball_name("http://b.example/debian")


# -- the images' entry point -------------------------------------------------------------------
def test_carried_versions_seed_the_cache_once(tmp_path: Path) -> None:
    carried, cache = tmp_path / "carried", tmp_path / "home" / "model-cache"
    for version in ("3", "4"):
        (carried / "fraud-detector" / version).mkdir(parents=True)
        (carried / "fraud-detector" / version / "record.json").write_text(version)
    (cache / "fraud-detector" / "4").mkdir(parents=True)
    (cache / "fraud-detector" / "4" / "record.json").write_text("already")
    assert entrypoint.seed_model_cache(carried, cache) == ["fraud-detector/3"]
    assert (cache / "fraud-detector" / "3" / "record.json").read_text() == "3"
    assert (cache / "fraud-detector" / "4" / "record.json").read_text() == "already"
    assert entrypoint.seed_model_cache(carried, cache) == []


def test_the_gateway_image_reconciles_over_rest_and_features_never(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    no_mlflow = {"mlflow": None}
    monkeypatch.setattr(entrypoint.importlib.util, "find_spec", no_mlflow.get)
    # Without MLflow installed (the gateway image): a tracking server is reached over REST,
    # an embedded registry is not reached at all.
    assert entrypoint.reaches_registry("http://mlflow:5000")
    assert entrypoint.reaches_registry("https://mlflow.example")
    assert not entrypoint.reaches_registry("sqlite:////var/lib/hearth/mlflow.db")
    services = {spec.name: spec.service for spec in IMAGES.values()}
    assert services["gateway"] in entrypoint.FOLLOWS_ROLLOUT
    assert services["monolith"] in entrypoint.FOLLOWS_ROLLOUT
    assert services["features"] not in entrypoint.FOLLOWS_ROLLOUT


def test_entry_point_serves_on_every_interface_with_its_own_metrics_dir() -> None:
    argv = entrypoint.serve_argv("bentos.model:Model", ["--port", "3100"], "/opt/hearth/app")
    assert argv[1:4] == ["-m", "hearth.launch.bentoml_main", entrypoint.PROMETHEUS_DIR]
    assert argv[4:8] == ["serve", "bentos.model:Model", "--host", "0.0.0.0"]
    assert argv[-2:] == ["--port", "3100"]  # extra arguments come last: they win
