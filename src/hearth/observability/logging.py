"""Structured logs: one JSON object a line, with the request id and trace id on each.

Opt-in (`HEARTH_LOG_FORMAT=json`, which `hearth up` sets): `configure_logging(settings)`
re-formats the handlers already installed (the CLI's, BentoML's) instead of adding new
ones, so a line still goes where it went, only as JSON. The gateway binds the request id
per request (`bind_request_id`, a contextvar: each request runs in its own task); other
services learn it from the trace baggage when tracing is on.
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime

from hearth.config import Settings
from hearth.observability import tracing

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "hearth_request_id", default=None
)
# Loggers that frameworks give handlers of their own (not propagating to the root).
FRAMEWORK_LOGGERS = ("bentoml", "uvicorn", "uvicorn.access", "uvicorn.error", "prefect")
# LogRecord attributes that are not `extra=` fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}
_STANDARD |= {"trace_id", "span_id"}


def bind_request_id(request_id: str | None) -> contextvars.Token[str | None]:
    """Tag the log lines of the current request (task) with `request_id`."""
    return _request_id.set(request_id)


def current_request_id() -> str | None:
    """The request id bound here, else the one in the trace baggage, else None."""
    return _request_id.get() or tracing.baggage_request_id()


class ContextFilter(logging.Filter):
    """Adds `request_id`, `trace_id` and `span_id` (None outside a request/span) to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        record.trace_id, record.span_id = tracing.current_ids()
        return True


class JsonFormatter(logging.Formatter):
    """A record as one JSON line: time, level, logger, message, ids, exception, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "trace_id": getattr(record, "trace_id", None),
            "span_id": getattr(record, "span_id", None),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        return json.dumps(line, default=str)


def configure_logging(settings: Settings, level: int | None = None) -> bool:
    """Switch this process's log handlers to JSON lines when `settings.log_format` is json.

    Returns whether it did. Without any handler yet, one on stderr is added to the root.
    """
    if settings.log_format != "json":
        return False
    root = logging.getLogger()
    if level is not None:
        root.setLevel(level)
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for name in ("", *FRAMEWORK_LOGGERS):
        for handler in logging.getLogger(name).handlers:
            _to_json(handler)
    return True


def _to_json(handler: logging.Handler) -> None:
    handler.setFormatter(JsonFormatter())
    # Filters on the handler (not the logger) see records propagated from child loggers too.
    if not any(isinstance(f, ContextFilter) for f in handler.filters):
        handler.addFilter(ContextFilter())
