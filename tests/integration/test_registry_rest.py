"""The registry calls of a rollout over MLflow's REST API, against a real `mlflow server` on
loopback, and the gateway's admin path run in a process where MLflow cannot be imported (as in
the gateway image, which carries no MLflow).

The server's backend is a SQLite file, so what the REST calls did is checked by another
reader: the registry's own table (`read_aliases` on the sqlite:/// URI) and MLflow's client on
that file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from hearth.containers.recipes import IMAGES, canonical, dependency_closure
from hearth.launch.launcher import free_port
from hearth.params import Params
from hearth.rollout.registry_client import RestRegistry
from hearth.rollout.registry_reads import read_aliases
from hearth.traffic.rollout_state import RegistryError
from hearth.traffic.state_sqlite import SQLiteStateStore
from hearth.traffic.stores import state_path
from tests.helpers import register_versions
from tests.projects import REPO, clean_environ, mlflow_server, project_settings
from tests.unit.test_container_recipes import OPTIONAL

pytestmark = pytest.mark.slow

NAME = Params().registry.model_name


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry (SQLite) with versions 1-3 of NAME, v1 its champion; nothing else."""
    root = tmp_path_factory.mktemp("registry-rest")
    settings = project_settings(root)
    settings.home_abs.mkdir(parents=True)
    register_versions(settings, root, NAME)
    return root


@pytest.fixture(scope="module")
def url(project: Path) -> Iterator[str]:
    port = free_port()
    with mlflow_server(project, port, project / "mlflow.log"):
        yield f"http://127.0.0.1:{port}"


def _table(project: Path) -> dict[str, str]:
    """Our aliases as the server's backend holds them (read from its table, not over REST)."""
    return read_aliases(project_settings(project), NAME)


@pytest.fixture
def registry(url: str, project: Path) -> Iterator[RestRegistry]:
    rest = RestRegistry(url)
    yield rest
    rest.close()
    with RestRegistry(url) as fix:  # leave the registry as the fixture made it
        fix.set_alias(NAME, "champion", "1")
        for alias in ("challenger", "previous"):
            fix.delete_alias(NAME, alias)
    assert _table(project) == {"champion": "1"}


def test_aliases_are_read_and_moved_over_rest(registry: RestRegistry, project: Path) -> None:
    assert registry.aliases(NAME) == _table(project) == {"champion": "1"}
    registry.set_alias(NAME, "challenger", "2")
    registry.set_alias(NAME, "previous", "3")
    registry.set_alias(NAME, "not-ours", "3")  # other aliases are no rollout's business
    assert _table(project) == {"champion": "1", "challenger": "2", "previous": "3"}
    assert registry.aliases(NAME) == _table(project)
    registry.delete_alias(NAME, "challenger")
    registry.delete_alias(NAME, "challenger")  # deleting an absent alias succeeds: a repair
    registry.delete_alias(NAME, "not-ours")
    assert registry.aliases(NAME) == _table(project) == {"champion": "1", "previous": "3"}


def test_unknown_models_and_versions_are_answers_not_errors(registry: RestRegistry) -> None:
    assert registry.aliases("no-such-model") == {}
    assert registry.version_exists(NAME, "1") and registry.version_exists(NAME, "3")
    assert not registry.version_exists(NAME, "99")
    assert not registry.version_exists(NAME, "v1")  # not a version number at all
    assert not registry.version_exists("no-such-model", "1")


def test_a_refused_write_is_a_registry_error(registry: RestRegistry) -> None:
    with pytest.raises(RegistryError) as refused:
        registry.set_alias(NAME, "challenger", "99")  # no such version
    assert refused.value.status is not None and refused.value.status >= 400
    with pytest.raises(RegistryError, match="no-such-model"):
        registry.description("no-such-model", "1")


def test_a_description_is_read_and_replaced(registry: RestRegistry, project: Path) -> None:
    from mlflow.tracking import MlflowClient

    assert registry.description(NAME, "3") == ""
    registry.set_description(NAME, "3", "first line\n\nsecond line")
    assert registry.description(NAME, "3") == "first line\n\nsecond line"
    on_disk = MlflowClient(tracking_uri=project_settings(project).mlflow_uri)
    assert on_disk.get_model_version(NAME, "3").description == "first line\n\nsecond line"
    registry.set_description(NAME, "3", "")


def test_a_url_that_is_not_mlflows_api_or_not_answering_is_an_error(url: str) -> None:
    # A 404 from something that is not MLflow (no error code) is no "unknown model".
    with RestRegistry(f"{url}/not-mlflow") as wrong, pytest.raises(RegistryError) as caught:
        wrong.aliases(NAME)
    assert caught.value.status == 404 and caught.value.error_code is None
    with (
        RestRegistry(f"http://127.0.0.1:{free_port()}", timeout_s=2) as down,
        pytest.raises(RegistryError, match="ConnectError"),
    ):
        down.version_exists(NAME, "1")


# -- the gateway's admin path, MLflow unimportable ----------------------------------------------
ADMIN_WITHOUT_MLFLOW = """
import asyncio, json, sys, time

import importlib.util

# As in the gateway image: no MLflow (`import mlflow…` fails, find_spec says it is absent).
sys.modules["mlflow"] = None
try:
    import mlflow.tracking
except ModuleNotFoundError:
    blocked = importlib.util.find_spec("mlflow") is None
else:
    blocked = False

from bentos.rollout_admin import controls
from hearth.config import HearthContext
from hearth.rollout import promotion
from hearth.serving.admin import Admin, RollbackToPreviousIn
from hearth.serving.schemas import RolloutActionIn, RolloutStartIn
from hearth.traffic.rollout_state import UnknownVersion
from hearth.traffic.stores import using_state_store

ctx = HearthContext()
admin = Admin(controls(ctx))
out = {"blocked": blocked}
out["adopt"] = promotion.repair(ctx.settings, ctx.params).to_dict()
run = asyncio.run
start = run(admin.start(RolloutStartIn(challenger_version="2", steps=[50, 100], reason="c")))
out["started"] = run(admin.status())["aliases"]
out["rollback"] = run(admin.rollback(RolloutActionIn(reason="bad canary")))
deadline = time.monotonic() + 30  # the admin API's alias sync runs in the background
with using_state_store(ctx.settings) as store:
    while store.intent() is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    out["synced"] = store.intent() is None
out["rolled_back"] = run(admin.status())["aliases"]
try:
    run(admin.start(RolloutStartIn(challenger_version="99")))
except UnknownVersion as exc:
    out["unknown"] = str(exc)
run(admin.start(RolloutStartIn(challenger_version="3", steps=[100], reason="again")))
out["promote"] = run(admin.promote(RolloutActionIn(reason="v3 is better")))
back = RollbackToPreviousIn(expect_champion="3", reason="undo")
out["to_previous"] = run(admin.rollback_to_previous(back))
loaded = {name for name, module in sys.modules.items() if module is not None}
out["mlflow_modules"] = sorted(m for m in loaded if m.partition(".")[0] == "mlflow")
out["top_level"] = sorted({m.partition(".")[0] for m in loaded})
print(json.dumps(out))
"""


def test_the_admin_path_works_with_mlflow_unimportable(
    url: str, project: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    home = tmp_path / "gateway-home"  # the gateway's own rollout state; the registry is shared
    env = clean_environ("HEARTH_", "MLFLOW_") | {
        "HEARTH_HOME": str(home),
        "HEARTH_PARAMS_FILE": str(tmp_path / "params.yaml"),
        "HEARTH_MLFLOW_TRACKING_URI": url,
        "PYTHONPATH": f"{REPO / 'src'}:{REPO}",
    }
    done = subprocess.run(
        [sys.executable, "-c", ADMIN_WITHOUT_MLFLOW], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["blocked"] and out["mlflow_modules"] == []
    # …and everything else it imported is in the gateway image.
    distributions = metadata.packages_distributions()
    needed = {canonical(d) for top in out["top_level"] for d in distributions.get(top, [])}
    image = dependency_closure(IMAGES["gateway"].packages)
    assert not needed - image - {"hearth"} - OPTIONAL, sorted(needed - image)
    assert out["adopt"]["action"] == "adopt"
    assert out["started"] == {"champion": "1", "challenger": "2"}
    assert out["rollback"]["changed"] and out["synced"]
    assert out["rolled_back"] == {"champion": "1"}
    assert "no version '99'" in out["unknown"]
    assert out["promote"]["aliases"] == "updated"
    assert out["promote"]["after"] == {"champion": "3", "previous": "1"}
    assert out["to_previous"]["after"] == {"champion": "1"}
    # What the registry holds, read from its backend, not over REST:
    assert _table(project) == {"champion": "1"}
    store = SQLiteStateStore(state_path(project_settings(tmp_path, home=home)))
    try:
        assert store.served().champion_version == "1" and store.intent() is None
    finally:
        store.close()
    client = MlflowClient(tracking_uri=project_settings(project).mlflow_uri)
    notes = {v: client.get_model_version(NAME, v).description or "" for v in ("1", "2", "3")}
    assert "rolled back in rollout" in notes["2"] and "bad canary" in notes["2"]
    assert "promoted to champion over v1" in notes["3"] and "v1 restored" in notes["3"]
    assert "replaced as champion by v3" in notes["1"] and "champion again" in notes["1"]
    for version in ("1", "2", "3"):  # leave the descriptions as the fixture made them
        client.update_model_version(NAME, version, description="")
