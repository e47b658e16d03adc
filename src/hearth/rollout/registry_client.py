"""The model registry calls a rollout makes, over MLflow's REST API or MLflow's own client.

A rollout reads and moves Hearth's aliases (``champion``, ``challenger``, ``previous``),
checks that a version exists and appends to a version's description: six calls
(`RegistryClient`). Where the registry is a tracking server (an http(s):// URI, as in
Compose) they go over its REST API with httpx (`RestRegistry`: short timeouts, no retries,
MLflow's MLFLOW_TRACKING_* credentials), so a gateway image needs no MLflow at all. An
embedded registry (sqlite:/// on one box) has no API to call: there MLflow's client does the
same (`MlflowRegistry`, imported on first call). `using_registry` picks one from Settings.

Every failed call raises `RegistryError` (no answer, or an error answer) on the REST path and
MLflow's own exceptions on the other; an unknown model has no aliases and an unknown version
does not exist, as the callers expect.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from hearth.config import CHALLENGER, CHAMPION, PREVIOUS, Settings
from hearth.traffic.rollout_state import RegistryError

if TYPE_CHECKING:
    import httpx
    from mlflow.tracking import MlflowClient

ALIASES = (CHAMPION, CHALLENGER, PREVIOUS)
API = "/api/2.0/mlflow"
MISSING = "RESOURCE_DOES_NOT_EXIST"  # MLflow's error code for an unknown model or version
TIMEOUT_S = 5.0  # per call: an admin request answers in seconds, even with MLflow gone


class RegistryClient(Protocol):
    """What a rollout asks of the model registry."""

    def aliases(self, model_name: str) -> dict[str, str]:
        """Our aliases → version (absent ones left out); {} for an unknown model."""
        ...

    def version_exists(self, model_name: str, version: str) -> bool: ...

    def set_alias(self, model_name: str, alias: str, version: str) -> None: ...

    def delete_alias(self, model_name: str, alias: str) -> None:
        """Drop `alias`; deleting an absent alias succeeds (a repair repeats it)."""
        ...

    def description(self, model_name: str, version: str) -> str: ...

    def set_description(self, model_name: str, version: str, text: str) -> None: ...


def over_rest(uri: str) -> bool:
    """Whether `uri` is a tracking server that `RestRegistry` talks to (no MLflow needed)."""
    return uri.startswith(("http://", "https://"))


def _ours(aliases: dict[str, Any]) -> dict[str, str]:
    return {alias: str(version) for alias, version in aliases.items() if alias in ALIASES}


class RestRegistry:
    """MLflow's REST API (the routes of `mlflow.server.handlers`) over httpx."""

    def __init__(
        self,
        uri: str,
        timeout_s: float = TIMEOUT_S,
        auth: tuple[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, self._timeout_s, self._auth = uri.rstrip("/"), timeout_s, auth
        self._transport = transport
        self._opened: httpx.Client | None = None

    def _http(self) -> httpx.Client:
        """The connection pool, made on the first call: making a RestRegistry never fails."""
        if self._opened is None:
            import httpx  # lazy: `hearth rollback` imports this module, never calls a registry

            headers, token = {}, os.environ.get("MLFLOW_TRACKING_TOKEN")
            if self._auth is None and token:
                headers["Authorization"] = f"Bearer {token}"
            verify: bool | str = True
            if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
                verify = False
            elif os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"):
                verify = os.environ["MLFLOW_TRACKING_SERVER_CERT_PATH"]
            timeout = httpx.Timeout(self._timeout_s, connect=min(self._timeout_s, 2.0))
            self._opened = httpx.Client(
                base_url=f"{self.url}{API}", auth=self._auth, headers=headers, verify=verify,
                timeout=timeout, transport=self._transport,
            )  # fmt: skip
        return self._opened

    @classmethod
    def from_environment(
        cls, uri: str, timeout_s: float = TIMEOUT_S, transport: httpx.BaseTransport | None = None
    ) -> RestRegistry:
        """With MLflow's basic-auth credentials (MLFLOW_TRACKING_USERNAME/PASSWORD) if set."""
        user, password = (os.environ.get(f"MLFLOW_TRACKING_{k}") for k in ("USERNAME", "PASSWORD"))
        auth = (user, password) if user and password else None
        return cls(uri, timeout_s, auth=auth, transport=transport)

    def close(self) -> None:
        if self._opened is not None:
            self._opened.close()
            self._opened = None

    def __enter__(self) -> RestRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self, method: str, route: str, body: dict[str, str], missing_ok: bool = False
    ) -> dict[str, Any] | None:
        """The JSON answer of `method route`; None when `missing_ok` and MLflow says the model
        or version does not exist; RegistryError for any other failure."""
        import httpx

        args: dict[str, Any] = {"params": body} if method == "GET" else {"json": body}
        try:
            answer = self._http().request(method, route, **args)
        except (httpx.HTTPError, OSError) as exc:
            failed = f"{method} {self.url}{API}{route}: {type(exc).__name__}: {exc}"
            raise RegistryError(failed) from exc
        try:
            payload = answer.json()
        except ValueError:
            payload = None
        if answer.is_success and isinstance(payload, dict):
            return payload
        error = payload if isinstance(payload, dict) else {}
        code = error.get("error_code")
        if answer.status_code == 404 and code == MISSING and missing_ok:
            return None
        detail = error.get("message") or answer.text[:200] or answer.reason_phrase
        raise RegistryError(
            f"{method} {self.url}{API}{route}: {answer.status_code} {code or ''} {detail}",
            status=answer.status_code, error_code=code,
        )  # fmt: skip

    def aliases(self, model_name: str) -> dict[str, str]:
        answer = self._call("GET", "/registered-models/get", {"name": model_name}, True)
        model = (answer or {}).get("registered_model", {})
        return _ours({a["alias"]: a["version"] for a in model.get("aliases", [])})

    def version_exists(self, model_name: str, version: str) -> bool:
        if not str(version).isdigit():
            return False  # MLflow would refuse it (INVALID_PARAMETER_VALUE)
        body = {"name": model_name, "version": str(version)}
        return self._call("GET", "/model-versions/get", body, True) is not None

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        body = {"name": model_name, "alias": alias, "version": str(version)}
        self._call("POST", "/registered-models/alias", body)

    def delete_alias(self, model_name: str, alias: str) -> None:
        self._call("DELETE", "/registered-models/alias", {"name": model_name, "alias": alias})

    def description(self, model_name: str, version: str) -> str:
        body = {"name": model_name, "version": str(version)}
        answer = self._call("GET", "/model-versions/get", body) or {}
        return str(answer.get("model_version", {}).get("description") or "")

    def set_description(self, model_name: str, version: str, text: str) -> None:
        body = {"name": model_name, "version": str(version), "description": text}
        self._call("PATCH", "/model-versions/update", body)


class MlflowRegistry:
    """MLflow's client, for a registry it opens itself (sqlite:///, file:, databricks).

    MLflow is imported on the first call, not here: making one never fails, so a rollback
    that only records its alias writes never needs MLflow."""

    def __init__(self, settings: Settings | None = None) -> None:
        self._settings = settings
        self._mlflow: MlflowClient | None = None

    def _client(self) -> MlflowClient:
        if self._mlflow is None:
            try:
                from mlflow.tracking import MlflowClient  # lazy: MLflow, see the docstring
            except ImportError as exc:  # the gateway image: it reaches a tracking server only
                raise RegistryError(
                    "an embedded MLflow registry needs MLflow's client, not installed here: "
                    "set HEARTH_MLFLOW_TRACKING_URI to an MLflow server (http://…)"
                ) from exc

            if self._settings is not None:
                from hearth import registry  # lazy: it imports MLflow

                registry.configure(self._settings)
            self._mlflow = MlflowClient()
        return self._mlflow

    def aliases(self, model_name: str) -> dict[str, str]:
        client = self._client()
        from mlflow.exceptions import MlflowException

        try:
            model = client.get_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code == MISSING:
                return {}
            raise
        return _ours(dict(model.aliases))

    def version_exists(self, model_name: str, version: str) -> bool:
        client = self._client()
        from mlflow.exceptions import MlflowException

        if not str(version).isdigit():
            return False
        try:
            client.get_model_version(model_name, str(version))
        except MlflowException as exc:
            if exc.error_code in {MISSING, "INVALID_PARAMETER_VALUE"}:
                return False
            raise
        return True

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self._client().set_registered_model_alias(model_name, alias, str(version))

    def delete_alias(self, model_name: str, alias: str) -> None:
        self._client().delete_registered_model_alias(model_name, alias)

    def description(self, model_name: str, version: str) -> str:
        return self._client().get_model_version(model_name, str(version)).description or ""

    def set_description(self, model_name: str, version: str, text: str) -> None:
        self._client().update_model_version(model_name, str(version), description=text)


@contextmanager
def using_registry(settings: Settings, timeout_s: float = TIMEOUT_S) -> Iterator[RegistryClient]:
    """The registry of `settings`: its REST API for a tracking server, else MLflow's client."""
    if not over_rest(settings.mlflow_uri):
        yield MlflowRegistry(settings)
        return
    with RestRegistry.from_environment(settings.mlflow_uri, timeout_s) as rest:
        yield rest
