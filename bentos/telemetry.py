"""Logs and traces of a BentoML service process: one call from each service's __init__."""

from __future__ import annotations

from typing import Any

from hearth.config import Settings
from hearth.observability.logging import configure_logging
from hearth.observability.tracing import bentoml_tracing_config, configure_tracing


def service_tracing(untraced_prefix: str | None = None) -> dict[str, Any]:
    """The `tracing` config of a service: OTLP/HTTP export when HEARTH_OTLP_ENDPOINT is set.

    `untraced_prefix`: paths for which BentoML opens no request span while nothing is
    exported. Its OpenTelemetry middleware still samples and builds a span per request
    then, ~15% of an internal service's CPU per call (`hearth bench`'s profile) for spans
    that go nowhere. With an endpoint, they are traced like every other request.
    """
    config = bentoml_tracing_config(Settings())
    if untraced_prefix and not config:
        config = {"excluded_urls": [f"{untraced_prefix}/"]}
    return config


def start_telemetry(settings: Settings, service_name: str) -> None:
    """JSON logs (HEARTH_LOG_FORMAT=json) and, with an OTLP endpoint, tracing through
    BentoML's own tracer provider, so its request spans and Hearth's share one exporter."""
    configure_logging(settings)
    if settings.otlp_endpoint:
        from bentoml._internal.configuration.containers import BentoMLContainer

        configure_tracing(settings, service_name, BentoMLContainer.tracer_provider.get())
