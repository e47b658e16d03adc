"""Every use of BentoML's private API (`bentoml._internal`), in one place.

Written against bentoml 1.4.40 (pinned in pyproject.toml). BentoML may move or change any of
this in a release without notice: tests/unit/test_bentoml_internals.py imports each symbol
and checks the attributes and signatures used here, so an upgrade that breaks one fails
there, by name, not in a running service. Nothing else in Hearth imports `bentoml._internal`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
