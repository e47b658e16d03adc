"""BentoML's private API that Hearth uses (hearth.serving.bentoml_internals) is still there.

BentoML moves `bentoml._internal` without notice. Each check names the private symbol and
what of it Hearth uses, so an upgrade that breaks one fails here, by name, instead of in a
bento build or a running gateway.
"""

from __future__ import annotations

import importlib
import inspect
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

import bentoml
import pytest
from opentelemetry.sdk.trace import TracerProvider

from hearth.serving import bentoml_internals
from hearth.serving.bentoml_internals import (
    WRITTEN_FOR,
    access_log_enabled,
    bento_env,
    give_each_worker_its_own_listening_socket,
    remote_runner_mapping,
    set_prometheus_multiproc_dir,
    tracer_provider,
    worker_index,
)

VERSIONS = f"(written for bentoml {WRITTEN_FOR}, installed {bentoml.__version__})"
CONTAINERS = "bentoml._internal.configuration.containers"


def internal(module: str, name: str) -> Any:
    """`module.name` from BentoML, or a failure that names what moved."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        pytest.fail(f"BentoML moved {module}.{name} {VERSIONS}: {e}")


def test_the_pinned_bentoml_is_the_one_the_adapter_was_written_for() -> None:
    pyproject = (Path(__file__).parents[2] / "pyproject.toml").read_text()
    assert f'"bentoml=={WRITTEN_FOR}"' in pyproject, (
        f"pyproject pins another bentoml than {WRITTEN_FOR}: check the private API in "
        "hearth/serving/bentoml_internals.py against it, then update WRITTEN_FOR"
    )


def test_bento_env_schema_takes_a_name_and_a_value_and_build_takes_envs() -> None:
    schema = internal("bentoml._internal.bento.build_config", "BentoEnvSchema")
    params = inspect.signature(schema).parameters
    assert {"name", "value"} <= set(params), (
        f"BentoEnvSchema no longer takes name= and value= {VERSIONS}: {list(params)}"
    )
    env = bento_env("PYTHONPATH", "src")
    assert isinstance(env, schema) and (env.name, env.value) == ("PYTHONPATH", "src")
    assert "envs" in inspect.signature(bentoml.bentos.build).parameters, (
        f"bentoml.bentos.build no longer takes envs= {VERSIONS}"
    )


def test_the_container_gives_bentomls_tracer_provider() -> None:
    container = internal(CONTAINERS, "BentoMLContainer")
    assert hasattr(container, "tracer_provider"), (
        f"BentoMLContainer.tracer_provider is gone {VERSIONS}"
    )
    provider = tracer_provider()
    # configure_tracing makes it the global provider; the hop's ASGI middleware traces into it.
    assert isinstance(provider, TracerProvider), (
        f"BentoMLContainer.tracer_provider.get() is a {type(provider)} {VERSIONS}"
    )
    assert provider is container.tracer_provider.get()  # one provider per process


def test_the_access_log_setting_is_the_one_bentomls_middleware_reads() -> None:
    container = internal(CONTAINERS, "BentoMLContainer")
    assert access_log_enabled() is True, f"BentoML's access log is off by default {VERSIONS}"
    setting = container.api_server_config.logging.access.enabled
    assert setting.get() is True
    # Where ServiceAppFactory decides whether to add its AccessLogMiddleware.
    app = inspect.getsource(internal("_bentoml_impl.server.app", "ServiceAppFactory"))
    assert "api_server_config.logging.access" in app, (
        f"BentoML reads its access-log setting elsewhere {VERSIONS}"
    )


def test_the_runner_mapping_is_the_one_bentoml_depends_reads() -> None:
    container = internal(CONTAINERS, "BentoMLContainer")
    assert hasattr(container, "remote_runner_mapping"), (
        f"BentoMLContainer.remote_runner_mapping is gone {VERSIONS}"
    )
    dependency = sys.modules[bentoml.depends.__module__].Dependency
    read = inspect.signature(dependency.get).parameters.get("runner_mapping")
    assert read is not None and read.default is container.remote_runner_mapping, (
        f"bentoml.depends no longer resolves addresses from "
        f"BentoMLContainer.remote_runner_mapping {VERSIONS}: bentos/gateway.py's _address "
        "would not find the services `bentoml serve` started"
    )
    before = container.remote_runner_mapping.get()
    container.remote_runner_mapping.set({"features": "http://127.0.0.1:3001"})
    try:
        assert remote_runner_mapping() == {"features": "http://127.0.0.1:3001"}
    finally:
        container.remote_runner_mapping.set(before)


def test_nothing_else_imports_bentomls_private_api() -> None:
    root = Path(__file__).parents[2]
    adapter = Path(bentoml_internals.__file__).resolve()
    users = [
        str(path.relative_to(root))
        for folder in ("src", "flows", "bentos", "benchmarks")
        for path in sorted((root / folder).rglob("*.py"))
        if "bentoml._internal" in path.read_text() and path.resolve() != adapter
    ]
    assert users == [], (
        f"use hearth.serving.bentoml_internals instead of bentoml._internal in {users}"
    )


def test_bentoml_serve_takes_its_prometheus_directory_from_the_container() -> None:
    container = internal(CONTAINERS, "BentoMLContainer")
    assert hasattr(container, "prometheus_multiproc_dir"), (
        f"BentoMLContainer.prometheus_multiproc_dir is gone {VERSIONS}"
    )
    ensure = internal("bentoml.serving", "ensure_prometheus_dir")
    default = inspect.signature(ensure).parameters["directory"].default
    assert getattr(default, "provider", default) is container.prometheus_multiproc_dir, (
        f"bentoml serve no longer creates PROMETHEUS_MULTIPROC_DIR from "
        f"BentoMLContainer.prometheus_multiproc_dir {VERSIONS}: `hearth serve` could not put "
        "it under HEARTH_HOME"
    )
    before = container.prometheus_multiproc_dir.get()
    set_prometheus_multiproc_dir("/tmp/hearth-prom-test")
    try:
        assert container.prometheus_multiproc_dir.get() == "/tmp/hearth-prom-test"
    finally:
        container.prometheus_multiproc_dir.set(before)


def test_a_worker_knows_its_index_from_the_server_context() -> None:
    context = internal("bentoml._internal.context", "server_context")
    assert hasattr(context, "worker_index"), f"server_context.worker_index is gone {VERSIONS}"
    assert worker_index() == context.worker_index  # None outside a worker


def test_each_worker_gets_its_own_reuseport_socket_from_circus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bentoml.serving
    import circus.sockets
    from circus.process import Process
    from circus.util import replace_gnu_args

    sockets = circus.sockets.CircusSocket
    # undone after the test: the patch is meant for the `bentoml serve` process only
    monkeypatch.setattr(sockets, "__init__", sockets.__init__)
    monkeypatch.setattr(sockets, "bind_and_listen", sockets.bind_and_listen)
    monkeypatch.setattr(sockets, "hearth_reuseport", False, raising=False)
    monkeypatch.setattr(bentoml.serving, "create_watcher", bentoml.serving.create_watcher)
    give_each_worker_its_own_listening_socket()
    give_each_worker_its_own_listening_socket()  # idempotent

    api = sockets(name="_bento_api_server", host="127.0.0.1", port=0, backlog=16)
    unix = sockets(name="svc", path="/tmp/hearth-test-internals.sock")
    try:
        assert api.so_reuseport and api._cfg["so_reuseport"] == "true"
        assert not unix.so_reuseport
        # what circus does per worker: two sockets from the config, bound on one port
        api.bind_and_listen()  # port 0 → a free one; the per-worker copies take it
        port = api.port
        api.close()
        config = {**api._cfg, "port": str(port)}
        first, second = (sockets.load_from_config(config) for _ in range(2))
        first.bind_and_listen()
        second.bind_and_listen()
        assert first.getsockname()[1] == second.getsockname()[1] == port
        # bound, not listening: the worker's uvicorn listens once its app has started
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        first.listen()
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        first.close()
        second.close()
        unix.bind_and_listen()  # a Unix socket still listens at once
        assert unix.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    finally:
        unix.close()

    # circus binds a socket per process only when the watcher's *command* names it
    watcher = bentoml.serving.create_watcher(
        "w", ["-m", "x", "--fd", "$(circus.sockets._bento_api_server)"], cmd="/usr/bin/python3"
    )
    assert watcher.args is None
    assert "circus.sockets._bento_api_server" in watcher.cmd
    assert "_get_sockets_fds" in vars(Process), f"circus moved Process._get_sockets_fds {VERSIONS}"
    assert "watcher.cmd" in inspect.getsource(Process._get_sockets_fds), (
        f"circus no longer looks for a reuseport socket in the watcher's command {VERSIONS}"
    )
    argv = shlex.split(replace_gnu_args(watcher.cmd, sockets={"_bento_api_server": 7}))
    assert argv == ["/usr/bin/python3", "-m", "x", "--fd", "7"]


def test_uvicorn_listens_on_a_workers_socket_only_after_the_apps_startup() -> None:
    """The per-worker sockets are handed over unlistened; uvicorn's `create_server` listens."""
    import uvicorn

    startup = inspect.getsource(uvicorn.Server.startup)
    assert "create_server" in startup and "sock=sock" in startup, "uvicorn moved create_server"
    assert startup.index("lifespan.startup()") < startup.index("create_server"), startup
