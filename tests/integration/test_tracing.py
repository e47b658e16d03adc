"""One request's spans across the microservices topology, caught by an OTLP/HTTP receiver.

A tiny collector (POST /v1/traces, protobuf `ExportTraceServiceRequest`) runs on loopback in
the test; `hearth serve --topology microservices` exports to it. One /predict must give
spans from the gateway, features and model processes with one trace id, each Hearth span
the child of a span of the same trace, and the lineage attributes on them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from hearth.launch.hearth_server import ServerProcess
from tests.integration.test_metrics import _tx
from tests.projects import API_KEY as KEY
from tests.projects import project_servers

pytestmark = pytest.mark.slow
EXPORT_WAIT_S = 30.0  # BatchSpanProcessor exports every 5 s


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class Collector:
    """Spans POSTed to /v1/traces, decoded; thread-safe, on a loopback port."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                ok = self.path == "/v1/traces"
                if ok:
                    collector.add(body)
                self.send_response(200 if ok else 404)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def add(self, body: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for s in scope.spans:
                    spans.append(
                        ReceivedSpan(
                            service=str(resource.get("service.name", "")),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        with self._lock:
            self.spans.extend(spans)

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)


def _value(v: Any) -> Any:
    """An OTLP AnyValue as Python (strings, numbers, bools, arrays of them)."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    c = Collector()
    c.thread.start()
    try:
        yield c
    finally:
        c.server.shutdown()
        c.server.server_close()


@pytest.fixture(scope="module")
def server(
    project: Path,
    collector: Collector,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    with project_servers(
        project, tmp_path_factory, "home-tracing", ("microservices",),
        HEARTH_OTLP_ENDPOINT=collector.endpoint, HEARTH_LOG_FORMAT="json",
    ) as started:  # fmt: skip
        yield started["microservices"]


def _trace_of(collector: Collector, request_id: str) -> list[ReceivedSpan]:
    """The spans of the trace whose gateway.predict span has `request_id`, once the
    model's and the features' spans have arrived too (bounded wait)."""
    deadline = time.monotonic() + EXPORT_WAIT_S
    while time.monotonic() < deadline:
        spans = collector.snapshot()
        roots = [
            s
            for s in spans
            if s.name == "gateway.predict" and s.attributes.get("hearth.request_id") == request_id
        ]
        if roots:
            trace = [s for s in spans if s.trace_id == roots[0].trace_id]
            if {"features.observe", "model.score"} <= {s.name for s in trace}:
                return trace
        time.sleep(0.5)
    names = sorted({(s.service, s.name) for s in collector.snapshot()})
    raise AssertionError(f"no complete trace for {request_id} in {EXPORT_WAIT_S}s: {names}")


def test_one_request_is_one_linked_trace_across_the_services(
    server: ServerProcess, collector: Collector
) -> None:
    response = httpx.post(
        f"{server.url}/predict", json=_tx(1), headers={"X-API-Key": KEY}, timeout=30
    )
    assert response.status_code == 200, response.text
    answer = response.json()

    trace = _trace_of(collector, answer["request_id"])
    by_name = {s.name: s for s in trace}
    by_id = {s.span_id: s for s in trace}

    # Three processes in one trace: the services' names come from BentoML's resource.
    assert {"Gateway", "Features", "Model"} <= {s.service for s in trace}, trace
    # Every span but the root has its parent in the same trace: nothing dangles.
    roots = [s for s in trace if not s.parent_id]
    assert len(roots) == 1, roots
    assert all(s.parent_id in by_id for s in trace if s.parent_id), trace

    gateway, features, model = (
        by_name[n] for n in ("gateway.predict", "features.observe", "model.score")
    )
    assert gateway.service == "Gateway"
    assert features.service == "Features" and model.service == "Model"
    assert _is_descendant(features, gateway, by_id)
    assert _is_descendant(model, gateway, by_id)

    for span in (gateway, model):
        assert span.attributes["hearth.variant"] == answer["variant"]
        assert span.attributes["hearth.model_version"] == answer["model_version"]
        assert span.attributes["hearth.data_version"] == answer["data_version"]
    # The request id travels to the feature store in the trace's baggage.
    assert features.attributes["hearth.request_id"] == answer["request_id"]

    # The gateway's access-log line of this request is JSON with both ids.
    lines = [_json(line) for line in server.log_path.read_text().splitlines()]
    mine = [x for x in lines if x and x.get("request_id") == answer["request_id"]]
    assert mine, server.log_tail()
    assert all(x["trace_id"] == gateway.trace_id for x in mine), mine


def _json(line: str) -> dict | None:
    """A log line as JSON, None when it is not (startup lines of BentoML's arbiter)."""
    import json

    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _is_descendant(span: ReceivedSpan, ancestor: ReceivedSpan, by_id: dict) -> bool:
    """Whether `ancestor` is on `span`'s chain of parents (bounded by the trace's size)."""
    current = span
    for _ in range(len(by_id)):
        if current.parent_id == ancestor.span_id:
            return True
        if current.parent_id not in by_id:
            return False
        current = by_id[current.parent_id]
    return False
