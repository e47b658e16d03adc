"""OpenTelemetry tracing of a prediction across gateway → feature store → model service.

Off by default: with no `Settings.otlp_endpoint` nothing is configured, and `span()` and
friends return before touching OpenTelemetry, so a request pays one boolean check.

When an endpoint is set, each process exports its spans over OTLP/HTTP. BentoML already
opens a server span per request and injects the W3C `traceparent` header into its calls
between services; Hearth adds its own spans under them (`gateway.predict`,
`features.observe`, `model.score`) with the variant, model version, data version and
request id as attributes. The model service batches requests of many traces into one call,
so the context cannot flow there through the call stack: each `ScoreItem` carries its
request's `traceparent` (`stamp_items`) and the model service opens one `model.score` span
per trace of a batch (`record_model_spans`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from hearth.config import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)

TRACER_NAME = "hearth"
REQUEST_ID_BAGGAGE = "hearth.request_id"
# Attribute names: Hearth's own namespace, so they never clash with semantic conventions.
ATTR_REQUEST_ID = "hearth.request_id"
ATTR_VARIANT = "hearth.variant"
ATTR_MODEL_VERSION = "hearth.model_version"
ATTR_DATA_VERSION = "hearth.data_version"
ATTR_ITEMS = "hearth.items"

_enabled = False
T = TypeVar("T")


def enabled() -> bool:
    """Whether this process exports spans (configure_tracing found an endpoint)."""
    return _enabled


def bentoml_tracing_config(settings: Settings) -> dict[str, Any]:
    """The `tracing` section of a BentoML service config: export its request spans to
    `settings.otlp_endpoint` over OTLP/HTTP, every request sampled; {} (BentoML's default,
    nothing exported) when no endpoint is set.

    Why here and not BENTOML_CONFIG_OPTIONS: BentoML 1.4 reads tracing per service
    (`services.<Name>.tracing`), and a service's own config is where it looks first.
    """
    if not settings.otlp_endpoint:
        return {}
    return {
        "exporter_type": "otlp",
        "sample_rate": 1.0,
        "otlp": {"protocol": "http", "endpoint": settings.otlp_endpoint},
    }


def configure_tracing(
    settings: Settings, service_name: str, provider: TracerProvider | None = None
) -> bool:
    """Make `provider` (default: a new one exporting to `settings.otlp_endpoint`) the
    process's global tracer provider; False, and nothing set up, when no endpoint is set.

    BentoML services pass BentoML's own provider, so its request spans and Hearth's share
    one exporter and one sampler. Call once per process, at service start.
    """
    global _enabled
    if not settings.otlp_endpoint:
        return False
    from opentelemetry import trace

    if _enabled:  # set_tracer_provider refuses a second provider; keep the first
        return True
    trace.set_tracer_provider(provider or _otlp_provider(settings.otlp_endpoint, service_name))
    _enabled = True
    log.info("tracing: %s exports spans to %s", service_name, settings.otlp_endpoint)
    return True


def _otlp_provider(endpoint: str, service_name: str) -> TracerProvider:
    """A provider that batches spans to an OTLP/HTTP endpoint (processes outside BentoML)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None) -> Iterator[Span | None]:
    """A child span of the current one while the block runs; None when tracing is off."""
    if not _enabled:
        yield None
        return
    from opentelemetry import trace

    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        yield current


@contextlib.contextmanager
def request_scope(request_id: str) -> Iterator[None]:
    """Put the request id in the OTel baggage while the block runs, so that the services
    the gateway calls (BentoML propagates baggage with the trace) know it too."""
    if not _enabled:
        yield
        return
    from opentelemetry import baggage, context

    token = context.attach(baggage.set_baggage(REQUEST_ID_BAGGAGE, request_id))
    try:
        yield
    finally:
        context.detach(token)


def baggage_request_id() -> str | None:
    """The request id the gateway put in the baggage of the current context, if any."""
    if not _enabled:
        return None
    from opentelemetry import baggage

    value = baggage.get_baggage(REQUEST_ID_BAGGAGE)
    return str(value) if value is not None else None


def set_score_attributes(current: Span | None, scores: Sequence[Any]) -> None:
    """Variant, model version and data version of `scores` on `current` (one value when
    all agree, else the distinct values in order)."""
    if current is None or not scores:
        return
    for attr, field in (
        (ATTR_VARIANT, "variant"),
        (ATTR_MODEL_VERSION, "model_version"),
        (ATTR_DATA_VERSION, "data_version"),
    ):
        values = list(dict.fromkeys(str(getattr(s, field, "") or "") for s in scores))
        current.set_attribute(attr, values[0] if len(values) == 1 else values)


def current_ids() -> tuple[str | None, str | None]:
    """(trace id, span id) of the current span as hex, or (None, None) outside one."""
    if not _enabled:
        return None, None
    from opentelemetry import trace

    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def traceparent() -> str | None:
    """The current context as a W3C `traceparent` header value; None when tracing is off."""
    if not _enabled:
        return None
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier.get("traceparent")


def propagation_headers() -> dict[str, str]:
    """The current context (traceparent, and baggage with the request id) as HTTP headers,
    for a call to another Hearth service; empty when tracing is off."""
    if not _enabled:
        return {}
    from opentelemetry.propagate import inject

    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def stamp_items(items: list[T]) -> list[T]:
    """Copies of pydantic `items` carrying the current `traceparent` (field `trace`);
    the items themselves when tracing is off."""
    header = traceparent()
    if header is None:
        return items
    return [item.model_copy(update={"trace": header}) for item in items]  # type: ignore[attr-defined]


def record_model_spans(
    items: Sequence[Any], scores: Sequence[Any], start_ns: int, end_ns: int
) -> None:
    """One `model.score` span per trace among a (batched) call's items, timed as the call,
    each the child of the request that sent its items."""
    if not _enabled:
        return
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.propagate import extract

    groups: dict[str | None, list[Any]] = {}
    for item, score in zip(items, scores, strict=True):
        groups.setdefault(getattr(item, "trace", None), []).append(score)
    tracer = trace.get_tracer(TRACER_NAME)
    for header, group in groups.items():
        # Never the ambient context: in a batch it is whichever request started the queue.
        parent = extract({"traceparent": header}) if header else Context()
        current = tracer.start_span("model.score", context=parent, start_time=start_ns)
        current.set_attribute(ATTR_ITEMS, len(group))
        current.set_attribute("hearth.batch_size", len(items))
        set_score_attributes(current, group)
        current.end(end_time=end_ns)
