"""Hearth's images built and started on a real engine, from local images only.

Opt-in (`make test-containers`): skipped where no engine runs. Builds the base when the
engine lacks it (debootstrap), then the five images (the model images' torch layer is
several GB the first time, then the engine's cache; the worker shares it), and starts each:
the features, model and monolith images answer /readyz on the project's state; the gateway's
admin API reads the rollout state and rolls back through it; the worker imports Hearth's
flows as its unprivileged user, in a home it may write (test_up_containers.py runs a flow on
it).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from hearth.containers import build, engine, recipes
from tests.projects import REPO, server_env

pytestmark = [pytest.mark.container, pytest.mark.slow]
SECRETS = {
    "HEARTH_API_KEY": "k" * 40,
    "HEARTH_ADMIN_TOKEN": "a" * 40,
    "HEARTH_INTERNAL_TOKEN": "i" * 40,
}


def _hearth(*args: str, env: dict[str, str], timeout: int = 3600) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "hearth", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stderr


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The home `hearth containerize` runs in: its rollout state names the champion the
    model images carry; the containers mount it as their HEARTH_HOME."""
    return tmp_path_factory.mktemp("images-home")


@pytest.fixture(scope="module")
def images(project: Path, home: Path) -> dict[str, str]:
    """The five images, built on the local base (made first when missing); name → tag."""
    problem = engine.problem()
    if problem:
        pytest.skip(f"no container engine: {problem}")
    env = server_env(project, home)
    try:
        build.choose_base()
    except build.MissingBase:
        if shutil.which("debootstrap") is None:
            pytest.skip("no base image and no debootstrap: `make container-deps`")
        _hearth("images", "base", env=env)
    _hearth("containerize", env=env)
    return {name: f"{spec.repository}:latest" for name, spec in recipes.IMAGES.items()}


class Container:
    """`docker run -d` on `network` as `alias`, port 3000 published on loopback."""

    def __init__(self, image: str, home: Path, network: str, alias: str, **env: str) -> None:
        self.name = f"hearth-test-{alias}-{uuid.uuid4().hex[:6]}"
        argv = ["docker", "run", "-d", "--name", self.name, "-p", "127.0.0.1::3000"]
        argv += ["--network", network, "--network-alias", alias]
        # A home bind-mounted: its owner (root here) runs the container.
        argv += ["--user", "0:0", "-v", f"{home}:/var/lib/hearth"]
        for key, value in (SECRETS | env).items():
            argv += ["-e", f"{key}={value}"]
        subprocess.run([*argv, image], check=True, capture_output=True, timeout=60)
        port = subprocess.run(
            ["docker", "port", self.name, "3000/tcp"], capture_output=True, text=True, check=True
        ).stdout.splitlines()[0]
        self.url = f"http://127.0.0.1:{port.rsplit(':', 1)[-1]}"

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        logs = subprocess.run(["docker", "logs", self.name], capture_output=True, text=True)
        pytest.fail(
            f"{self.name} not ready in {timeout_s}s:\n{(logs.stdout + logs.stderr)[-3000:]}"
        )


@pytest.fixture
def run(home: Path) -> Iterator[Callable[..., Container]]:
    """Starts containers on a network of their own; removes them (and it) after the test."""
    network = f"hearth-test-{uuid.uuid4().hex[:6]}"
    subprocess.run(["docker", "network", "create", network], check=True, capture_output=True)
    started: list[Container] = []

    def start(image: str, alias: str, **env: str) -> Container:
        started.append(Container(image, home, network, alias, **env))
        return started[-1]

    yield start
    for container in started:
        subprocess.run(["docker", "rm", "-f", container.name], capture_output=True, timeout=60)
    subprocess.run(["docker", "network", "rm", network], capture_output=True, timeout=60)


def test_base_image_has_python_and_trusts_the_system_store(images: dict[str, str]) -> None:
    base = build.choose_base()
    script = "import ssl, sys, os; print(sys.version_info[:2], os.environ['SSL_CERT_FILE'])"
    out = subprocess.run(
        ["docker", "run", "--rm", base, "python3.11", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert "(3, 11)" in out and "/etc/ssl/certs/ca-certificates.crt" in out


def test_gateway_and_features_images_carry_no_torch(images: dict[str, str]) -> None:
    for name in ("gateway", "features"):
        done = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "python3.11", images[name], "-c",
             "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('bentoml'))"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.stdout.startswith("None ModuleSpec"), done.stdout + done.stderr


def test_the_worker_image_imports_the_flows_as_its_own_user(images: dict[str, str]) -> None:
    script = (
        "import os, pathlib, flows.pipeline, flows.train, great_expectations, duckdb, dvc_data;"
        "home = pathlib.Path(os.environ['HEARTH_HOME']); (home / 'probe').write_text('x');"
        "print(os.getuid(), os.getcwd(), os.environ['HEARTH_REPO_DIR'], home)"
    )
    done = subprocess.run(["docker", "run", "--rm", images["worker"], "python3.11", "-c", script],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    app, home = recipes.APP, recipes.HOME
    assert done.stdout.split() == [str(recipes.UID), app, app, home], done.stdout


def test_monolith_image_serves_the_projects_champion(
    images: dict[str, str], run: Callable[..., Container]
) -> None:
    monolith = run(images["monolith"], "monolith")
    monolith.wait_ready()
    r = httpx.get(f"{monolith.url}/admin/rollout", headers={"X-Admin-Token": "a" * 40})
    assert r.status_code == 200, r.text
    assert r.json()["served"]["champion"]


def test_microservice_images_answer_and_the_gateways_admin_api_works(
    images: dict[str, str], run: Callable[..., Container]
) -> None:
    features, model = run(images["features"], "features"), run(images["model"], "model")
    features.wait_ready()
    model.wait_ready()
    gateway = run(
        images["gateway"],
        "gateway",
        HEARTH_FEATURES_URL="http://features:3000",
        HEARTH_MODEL_URL="http://model:3000",
    )
    gateway.wait_ready()
    headers = {"X-Admin-Token": "a" * 40}
    status = httpx.get(f"{gateway.url}/admin/rollout", headers=headers, timeout=10)
    assert status.status_code == 200, status.text
    # Nothing runs: a rollback changes nothing and says so, through the shared state.
    r = httpx.post(f"{gateway.url}/admin/rollback", headers=headers, timeout=10)
    assert r.status_code in (200, 409), r.text
    assert json.loads(r.text)
