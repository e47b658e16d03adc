"""`RestRegistry`'s requests and its reading of MLflow's answers, on httpx's mock transport.

The calls themselves are run against a real `mlflow server` in
tests/integration/test_registry_rest.py; here: credentials, and answers a healthy server
on loopback never gives.
"""

from __future__ import annotations

import base64
import json
import sys

import httpx
import pytest

from hearth.config import Settings
from hearth.rollout.registry_client import MlflowRegistry, RestRegistry, using_registry
from hearth.traffic.rollout_state import RegistryError

URL = "http://mlflow.example:5000"


def _answering(status: int, body: object, seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle)


def test_basic_auth_from_mlflows_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "hearth")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    seen: list[httpx.Request] = []
    answer = {"registered_model": {"aliases": [{"alias": "champion", "version": "3"}]}}
    with RestRegistry.from_environment(URL, transport=_answering(200, answer, seen)) as registry:
        assert registry.aliases("m") == {"champion": "3"}
    token = base64.b64encode(b"hearth:s3cret").decode()
    assert seen[0].headers["Authorization"] == f"Basic {token}"
    assert str(seen[0].url) == f"{URL}/api/2.0/mlflow/registered-models/get?name=m"


def test_a_bearer_token_without_basic_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    seen: list[httpx.Request] = []
    with RestRegistry(URL, transport=_answering(200, {}, seen)) as registry:
        registry.set_alias("m", "champion", "3")
    assert seen[0].headers["Authorization"] == "Bearer tok"
    assert seen[0].method == "POST"
    assert json.loads(seen[0].content) == {"name": "m", "alias": "champion", "version": "3"}


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, "Internal Server Error"),  # not JSON
        (401, "You are not authenticated."),
        (404, {"error_code": "ENDPOINT_NOT_FOUND", "message": "no such route"}),
        (200, "<html>a proxy's page</html>"),  # a success that is not MLflow's answer
    ],
)
def test_any_other_answer_is_a_registry_error(status: int, body: object) -> None:
    with (
        RestRegistry(URL, transport=_answering(status, body, [])) as registry,
        pytest.raises(RegistryError) as caught,
    ):
        registry.aliases("m")
    assert caught.value.status == status


def test_only_mlflows_not_found_means_absent() -> None:
    missing = {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "not found"}
    with RestRegistry(URL, transport=_answering(404, missing, [])) as registry:
        assert registry.aliases("m") == {}
        assert not registry.version_exists("m", "2")
        with pytest.raises(RegistryError):
            registry.set_alias("m", "champion", "2")  # a write is never "absent"


def test_the_registry_is_chosen_by_the_uri(settings: Settings) -> None:
    with using_registry(settings) as embedded:
        assert isinstance(embedded, MlflowRegistry)
    server = settings.model_copy(update={"mlflow_tracking_uri": URL})
    with using_registry(server) as rest:
        assert isinstance(rest, RestRegistry) and rest.url == URL


def test_an_embedded_registry_without_mlflow_installed_says_what_to_do(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("mlflow", "mlflow.tracking", "mlflow.exceptions"):
        monkeypatch.setitem(sys.modules, name, None)  # as in the gateway image
    registry = MlflowRegistry(settings)  # made without MLflow: a rollback can still record
    with pytest.raises(RegistryError, match="HEARTH_MLFLOW_TRACKING_URI"):
        registry.aliases("m")
