"""The bench's wrk script against a plain HTTP server: every request a new transaction,
dated `step_s` apart from the start, and the latest date sent reported back, so that a
later run starts after it (`wrk.after_rows`) instead of replaying dates a store has seen.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from hearth.bench import wrk
from hearth.bench.load import Endpoint
from hearth.schema import parse_timestamp

pytestmark = pytest.mark.skipif(
    not wrk.available(), reason="wrk is not installed (Debian: apt-get install wrk)"
)


class _Recorder(BaseHTTPRequestHandler):
    bodies: ClassVar[list[dict[str, str]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.bodies.append(json.loads(body))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    _Recorder.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Endpoint("127.0.0.1", server.server_address[1], "/predict", ())
    finally:
        server.shutdown()
        server.server_close()


def test_dates_step_apart_and_the_last_one_is_reported(endpoint: Endpoint, tmp_path: Path) -> None:
    start = datetime(2026, 3, 1)
    script = wrk.lua_script(endpoint, ['"customer_id":"c1"'], True, start, "w-", step_s=60.5)
    row = wrk.run(endpoint, script, 4, 1, tmp_path)
    sent = _Recorder.bodies
    assert row["requests"] >= 1 and len(sent) >= row["requests"]
    assert 0 <= row["wrk_cpu_s"] <= 10  # wrk's own CPU (a child's rusage), kept apart
    assert len({b["transaction_id"] for b in sent}) == len(sent)  # a new transaction each
    dates = sorted(parse_timestamp(b["timestamp"]) for b in sent)
    assert dates[0] > start
    # Request n overall is dated about start + n x 60.5 s (threads interleave their counts).
    assert (dates[-1] - start).total_seconds() == pytest.approx(60.5 * len(sent), rel=0.2)
    # last_s: the latest date made, sent or (a request built as wrk stopped) not: at most one
    # per connection beyond the last sent, dates interleaved over wrk's two threads.
    last = datetime.fromtimestamp(row["last_s"], UTC).replace(tzinfo=None)
    assert 0 <= (last - dates[-1]).total_seconds() <= 4 * 2 * 60.5
    again = wrk.after_rows([row, {**row, "last_s": row["last_s"] - 3600}])
    assert (again - last).total_seconds() == 86_400
