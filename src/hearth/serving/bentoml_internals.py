"""Every use of BentoML's private API (`bentoml._internal`), in one place.

Written against bentoml 1.4.40 (pinned in pyproject.toml). BentoML may move or change any of
this in a release without notice: tests/unit/test_bentoml_internals.py imports each symbol
and checks the attributes and signatures used here, so an upgrade that breaks one fails
there, by name, not in a running service. Nothing else in Hearth imports `bentoml._internal`.
"""

from __future__ import annotations

import shlex
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bentoml._internal.bento.build_config import BentoEnvSchema
    from opentelemetry.sdk.trace import TracerProvider

WRITTEN_FOR = "1.4.40"  # the bentoml version these were checked against


def bento_env(name: str, value: str) -> BentoEnvSchema:
    """An environment variable baked into a bento: `bentoml.bentos.build(envs=[...])` takes
    only BentoML's private `BentoEnvSchema`."""
    # lazy: the CLI imports this module; bentoml loads only when a bento is built
    from bentoml._internal.bento.build_config import BentoEnvSchema

    return BentoEnvSchema(name=name, value=value)


def tracer_provider() -> TracerProvider:
    """BentoML's own OpenTelemetry tracer provider (its request spans go there), so that
    Hearth's spans in a service share its exporter."""
    # lazy: BentoML's DI container loads only in a service that exports spans
    from bentoml._internal.configuration.containers import BentoMLContainer

    provider: TracerProvider = BentoMLContainer.tracer_provider.get()
    return provider


def access_log_enabled() -> bool:
    """Whether BentoML writes an access-log line per request in this service's process
    (`logging.access.enabled` of its config; BentoML's default: yes)."""
    # lazy: BentoML's DI container loads only in a service's worker
    from bentoml._internal.configuration.containers import BentoMLContainer

    return bool(BentoMLContainer.api_server_config.logging.access.enabled.get())


def remote_runner_mapping() -> dict[str, str]:
    """Service name → address of each dependency that `bentoml serve` started for this
    service: the mapping `bentoml.depends` reads (empty outside such a process)."""
    # lazy: BentoML's DI container loads only when a gateway looks up an address
    from bentoml._internal.configuration.containers import BentoMLContainer

    mapping: dict[str, str] = BentoMLContainer.remote_runner_mapping.get()
    return mapping


def set_prometheus_multiproc_dir(path: str) -> None:
    """Where `bentoml serve` (in this process) puts Prometheus' multiprocess directory: it
    empties it at start and hands it to every worker as PROMETHEUS_MULTIPROC_DIR. BentoML's
    default is under BENTOML_HOME, which several Hearth homes may share."""
    # lazy: BentoML's DI container loads only in the process that runs `bentoml serve`
    from bentoml._internal.configuration.containers import BentoMLContainer

    BentoMLContainer.prometheus_multiproc_dir.set(path)


def worker_index() -> int | None:
    """Which worker of its service this process is (1…N, circus' worker id); None outside a
    `bentoml serve` worker."""
    # lazy: BentoML's server context is only read in a service's worker
    from bentoml._internal.context import server_context

    index = server_context.worker_index
    return int(index) if index is not None else None


def give_each_worker_its_own_listening_socket() -> None:
    """Make `bentoml serve` (in this process) give each worker of the public HTTP server its
    own listening socket on the port, with SO_REUSEPORT, instead of one socket they all
    accept from: the kernel then spreads new connections over the workers (by a hash of each).

    With one shared socket, the worker whose event loop wakes first accepts every pending
    connection at once (uvloop accepts until none is left): 32 keep-alive connections opened
    together were measured split 28/4 and 21/11 between two workers, so one worker queued
    while the other idled. BentoML builds the socket with circus' `CircusSocket` and no
    SO_REUSEPORT. Circus binds a socket per process when the socket asks for it and the
    watcher's *command* names it (`circus.process.Process._get_sockets_fds`, which re-creates
    it from its `_cfg`); BentoML names it in the watcher's arguments, so those are folded
    into the command. Unix sockets (the services' own, between processes) stay as they are.

    Each worker's socket is bound but not listening when circus hands it over: uvicorn
    listens on it once the app's startup is done, so the kernel never queues a connection
    on a worker that is still importing (a restarted one would otherwise hold its share of
    new connections for seconds). A connection already queued on a worker that dies is
    reset, as with any SO_REUSEPORT server, unless the host sets
    `net.ipv4.tcp_migrate_req=1` (Linux ≥ 5.14), which moves it to a surviving worker.
    """
    # lazy: BentoML's serving and circus load only in the process that runs `bentoml serve`
    import bentoml.serving
    import circus.sockets

    sockets = circus.sockets.CircusSocket
    if getattr(sockets, "hearth_reuseport", False):
        return  # already given
    init = sockets.__init__
    bind_and_listen = sockets.bind_and_listen
    create_watcher = bentoml.serving.create_watcher

    def socket_init(self: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("path") is None and "so_reuseport" not in kwargs:
            kwargs["so_reuseport"] = True
        init(self, *args, **kwargs)
        if self.so_reuseport and not hasattr(self, "_cfg"):
            self._cfg = {  # what circus re-creates each worker's socket from
                "name": self.name,
                "host": self.host,
                "port": str(self.port),
                "family": "AF_INET6" if self.family == socket.AF_INET6 else "AF_INET",
                "backlog": str(self.backlog),
                "so_reuseport": "true",
            }

    def bind_only(self: Any) -> None:
        if not self.so_reuseport or self.is_unix:
            bind_and_listen(self)
            return
        self.bind((self.host, self.port))  # uvicorn's create_server listens, after startup
        self.setblocking(self.blocking)
        self.host, self.port = self.getsockname()[:2]  # as circus does: port 0 → the bound one

    def watcher(name: str, args: list[str], **kwargs: Any) -> Any:
        created = create_watcher(name, args, **kwargs)
        if created.args and any("$(circus.sockets." in arg for arg in created.args):
            created.cmd = " ".join([created.cmd, *(shlex.quote(arg) for arg in created.args)])
            created.args = None
        return created

    # circus' own code calls super(CircusSocket, self), so the class itself is patched
    # (in the process that runs `bentoml serve` only), not replaced by a subclass
    sockets.__init__ = socket_init
    sockets.bind_and_listen = bind_only
    sockets.hearth_reuseport = True
    bentoml.serving.create_watcher = watcher
