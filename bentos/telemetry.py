"""Logs and traces of a BentoML service process: one call from each service's __init__."""

from __future__ import annotations

from typing import Any

from hearth.config import Settings
from hearth.observability.logging import configure_logging
from hearth.observability.tracing import bentoml_tracing_config, configure_tracing
from hearth.serving.bentoml_internals import tracer_provider


def service_tracing() -> dict[str, Any]:
    """The `tracing` config of a service: OTLP/HTTP export when HEARTH_OTLP_ENDPOINT is set."""
    return bentoml_tracing_config(Settings())


def start_telemetry(settings: Settings, service_name: str) -> None:
    """JSON logs (HEARTH_LOG_FORMAT=json) and, with an OTLP endpoint, tracing through
    BentoML's own tracer provider, so its request spans and Hearth's share one exporter."""
    configure_logging(settings)
    if settings.otlp_endpoint:
        configure_tracing(settings, service_name, tracer_provider())
