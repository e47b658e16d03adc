"""Observability: Prometheus metrics, OpenTelemetry tracing and JSON logs, defined once."""
