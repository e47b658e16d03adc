"""Structured logs: JSON lines with request id and trace id, opt-in by Settings.log_format."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from hearth.config import Settings
from hearth.observability import tracing
from hearth.observability.logging import ContextFilter, JsonFormatter, bind_request_id


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through Hearth's JSON handler setup into a buffer."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("hearth.test.jsonlogs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)


def _lines(buffer: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_every_line_is_json_with_the_request_id(capture) -> None:
    logger, buffer = capture
    token = bind_request_id("req-123")
    try:
        logger.info("scored %d transactions", 3, extra={"variant": "champion"})
        logger.warning("slow model")
    finally:
        bind_request_id(None)
        del token
    logger.info("outside a request")

    first, second, third = _lines(buffer)
    assert first["message"] == "scored 3 transactions"
    assert first["level"] == "INFO" and first["logger"] == "hearth.test.jsonlogs"
    assert first["request_id"] == "req-123" and first["variant"] == "champion"
    assert second["request_id"] == "req-123" and second["level"] == "WARNING"
    assert third["request_id"] is None
    assert all({"time", "trace_id", "span_id"} <= line.keys() for line in (first, second, third))


def test_exceptions_stay_on_one_line(capture) -> None:
    logger, buffer = capture
    try:
        raise ValueError("bad row")
    except ValueError:
        logger.exception("failed")
    (line,) = _lines(buffer)
    assert "ValueError: bad row" in line["exception"]


def test_lines_inside_a_span_carry_its_trace_id(capture, monkeypatch) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    # A local provider, not the process-global one: other tests must not see tracing on.
    monkeypatch.setattr(tracing, "_enabled", True)
    monkeypatch.setattr(
        "opentelemetry.trace.get_tracer", lambda name, *a, **k: provider.get_tracer(name)
    )
    logger, buffer = capture
    with tracing.span("gateway.predict") as current:
        logger.info("inside")
    assert current is not None
    (line,) = _lines(buffer)
    ctx = current.get_span_context()
    assert line["trace_id"] == format(ctx.trace_id, "032x")
    assert line["span_id"] == format(ctx.span_id, "016x")


def test_configure_logging_is_opt_in(monkeypatch) -> None:
    from hearth.observability import logging as hearth_logging

    handler = logging.StreamHandler(io.StringIO())
    # Only this handler: pytest's own capture handlers must keep their format.
    monkeypatch.setattr(logging.getLogger(), "handlers", [handler])
    monkeypatch.setattr(hearth_logging, "FRAMEWORK_LOGGERS", ())
    assert hearth_logging.configure_logging(Settings(log_format="text")) is False
    assert not isinstance(handler.formatter, JsonFormatter)
    assert hearth_logging.configure_logging(Settings(log_format="json")) is True
    assert isinstance(handler.formatter, JsonFormatter)


def test_tracing_is_off_without_an_endpoint() -> None:
    settings = Settings(otlp_endpoint=None)
    assert tracing.configure_tracing(settings, "test") is False
    assert tracing.bentoml_tracing_config(settings) == {}
    with tracing.span("gateway.predict") as current:
        assert current is None
    assert tracing.traceparent() is None
    endpoint = "http://127.0.0.1:4318/v1/traces"
    config = tracing.bentoml_tracing_config(Settings(otlp_endpoint=endpoint))
    assert config["otlp"] == {"protocol": "http", "endpoint": endpoint}
