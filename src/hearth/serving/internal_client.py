"""The gateway's side of the hop between Hearth's services: `InternalClient` and the calls.

Plain JSON over pooled keep-alive connections: a few lines on asyncio and httptools, opened
in the server's event loop and reused, sending the shared internal token and the trace
context with every request. `FeaturesCalls` and `ModelCalls` are the features and model
services' routes as typed calls. The routes themselves (their names are below) are served by
`hearth.serving.internal`, which says why this path exists at all.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlparse

import httptools
import pydantic_core
from pydantic import TypeAdapter

from hearth.features.online import InvalidTransaction
from hearth.observability import tracing
from hearth.serving.auth import INTERNAL_TOKEN_HEADER
from hearth.serving.schemas import FeatureRow, Score, ScoreItem

PREFIX = "/internal"
OBSERVE, READY = "/observe", "/ready"
PREDICT, PREDICT_CHALLENGER = "/predict", "/predict_challenger"
VERSIONS = "/versions"  # the model versions a model service has loaded (JSON list)
JSON = "application/json"
# Connections per target service: enough for the gateway's concurrency (c=128 in the bench)
# without a queue in the pool, bounded so a flood cannot exhaust file descriptors.
MAX_CONNECTIONS = 256
# uvicorn (the services' server) closes a keep-alive connection idle for 5 s; one idle this
# long is closed here instead of being reused just as the service closes it.
REUSE_WITHIN_S = 4.0
_ROWS = TypeAdapter(list[FeatureRow])
_ITEMS = TypeAdapter(list[ScoreItem])
_SCORES = TypeAdapter(list[Score])


# -- client -------------------------------------------------------------------------
class InternalError(RuntimeError):
    """A service answered with a status other than 200 (`status`, its `body`), or the
    connection failed (status 0)."""

    def __init__(self, message: str, status: int = 0, body: bytes = b"") -> None:
        super().__init__(message)
        self.status, self.body = status, body


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time; responses are
    parsed by httptools (uvicorn's parser). A general client (aiohttp) spent ~0.2 ms of the
    gateway's CPU per hop on what these few lines do."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.answered = False  # response bytes arrived for the request in flight
        self.idle_since = 0.0  # time.monotonic() when it last went back to the pool
        self._body: list[bytes] = []
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None

    @property
    def reusable(self) -> bool:
        """Open, idle and willing: not closed by either side, no request in flight."""
        return (
            not self.lost
            and self.transport is not None
            and not self.transport.is_closing()
            and (self._waiter is None or self._waiter.done())
        )

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Send a complete request; a future of (status, body)."""
        assert self.transport is not None and self.reusable, "connection not idle"
        self._body = []
        self.answered = False
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return self._waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(InternalError(f"bad HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(InternalError(f"connection lost: {exc or 'closed by the service'}"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result((self.parser.get_status_code(), b"".join(self._body)))
        if not self.parser.should_keep_alive():
            self.close()

    def _fail(self, exc: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)


class InternalClient:
    """One service's internal API over a pool of keep-alive connections.

    `url`: ``http(s)://host:port`` (HEARTH_FEATURES_URL / HEARTH_MODEL_URL), or the address
    `bentoml serve` gave a local dependency: ``tcp://host:port`` or a ``file://`` Unix socket.
    `token`: the internal token, sent with every request (HEARTH_INTERNAL_TOKEN).
    Connections are opened on demand (at most `max_connections` at once; more callers wait
    for one) and belong to the event loop that opened them. No timeout here: callers bound
    each call (gateway `_call` → 503 + Retry-After); a cancelled call closes its connection,
    whose response would otherwise arrive for the next request.
    """

    def __init__(self, url: str, max_connections: int = MAX_CONNECTIONS, token: str = "") -> None:
        self.url = url
        self.target = _target(url)
        # Host and token lines of every request head, formatted once.
        self._fixed = f"Host: {self.target.host}\r\n" + (
            f"{INTERNAL_TOKEN_HEADER}: {token}\r\n" if token else ""
        )
        self.max_connections = max_connections
        self._idle: list[_Connection] = []
        self._slots: asyncio.Semaphore | None = None

    async def post(self, path: str, body: bytes) -> bytes:
        """POST a JSON body to PREFIX + path; the response body (InternalError unless 200)."""
        headers = "".join(f"{k}: {v}\r\n" for k, v in tracing.propagation_headers().items())
        head = (
            f"POST {PREFIX}{path} HTTP/1.1\r\n{self._fixed}"
            f"Content-Type: {JSON}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        )
        status, raw = await self._send(head.encode() + body)
        if status != 200:
            text = raw[:200].decode(errors="replace")
            raise InternalError(f"{self.url}{PREFIX}{path}: {status} {text}", status, raw)
        return raw

    async def ok(self, path: str) -> bool:
        """Whether GET PREFIX + path answers 200."""
        status, _ = await self.get(path)
        return status == 200

    async def get(self, path: str) -> tuple[int, bytes]:
        """GET PREFIX + path: (status, body)."""
        head = f"GET {PREFIX}{path} HTTP/1.1\r\n{self._fixed}\r\n"
        return await self._send(head.encode())

    async def _send(self, raw: bytes) -> tuple[int, bytes]:
        """Send on a pooled connection. A reused one that the service closed before any
        answer (it closed it as idle just as the request went out) is retried once on a new
        connection: both services' routes are safe to repeat (scoring has no side effect; an
        observe of a transaction already seen changes nothing)."""
        if self._slots is None:  # made on first use, in the serving loop
            self._slots = asyncio.Semaphore(self.max_connections)
        async with self._slots:
            for retry in (False, True):
                conn, reused = await self._connection()
                try:
                    result = await conn.request(raw)
                except InternalError:
                    conn.close()
                    if reused and not retry and conn.lost and not conn.answered:
                        continue
                    raise
                except BaseException:  # cancelled: its state is unknown, never reuse it
                    conn.close()
                    raise
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
                return result
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _connection(self) -> tuple[_Connection, bool]:
        """An idle connection (the most recently used: its peer surely still has it open),
        else a new one; and whether it was reused. One the service closed while idle, or
        idle for longer than REUSE_WITHIN_S, is dropped here."""
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.reusable and now - conn.idle_since < REUSE_WITHIN_S:
                return conn, True
            conn.close()
        loop = asyncio.get_running_loop()
        t = self.target
        try:
            if t.socket_path:
                _, conn = await loop.create_unix_connection(_Connection, t.socket_path)
            else:
                _, conn = await loop.create_connection(
                    _Connection, t.hostname, t.port, ssl=t.ssl, server_hostname=t.server_hostname
                )
        except OSError as exc:
            raise InternalError(f"cannot connect to {self.url}: {exc}") from exc
        return conn, False

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


@dataclass(frozen=True)
class _Target:
    host: str  # the Host header
    hostname: str
    port: int
    socket_path: str | None = None
    ssl: ssl_module.SSLContext | None = None

    @property
    def server_hostname(self) -> str | None:
        return self.hostname if self.ssl is not None else None


def _target(url: str) -> _Target:
    """Where a service address points: a Unix socket, or host and port (TLS for https)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return _Target("localhost", "localhost", 0, socket_path=unquote(parsed.path))
    if parsed.scheme not in ("tcp", "http", "https") or not parsed.hostname:
        raise ValueError(f"not a service address: {url!r} (http://host:port, tcp://, file://)")
    secure = parsed.scheme == "https"
    port = parsed.port or (443 if secure else 80)
    context = ssl_module.create_default_context() if secure else None
    return _Target(parsed.netloc, parsed.hostname, port, ssl=context)


class FeaturesCalls:
    """The features service's internal API, for `RemoteFeatures`."""

    def __init__(self, client: InternalClient) -> None:
        self.client = client

    async def observe(self, transactions: list[dict[str, Any]]) -> list[FeatureRow]:
        """Feature rows; InvalidTransaction when the service refuses a transaction (422:
        its own input domain, e.g. its clock), as the gateway would have."""
        try:
            raw = await self.client.post(OBSERVE, pydantic_core.to_json(transactions))
        except InternalError as exc:
            if exc.status != 422:
                raise
            problems = pydantic_core.from_json(exc.body).get("problems", [])
            raise InvalidTransaction(
                [(_item_field(p["field"]), p["message"]) for p in problems]
            ) from None
        return _ROWS.validate_json(raw)

    async def ready(self) -> bool:
        return await self.client.ok(READY)


def _item_field(field: str) -> str:
    """ "0.amount" (the service's name for it) → "amount" (a field of the request)."""
    return field.partition(".")[2] or field


class ModelCalls:
    """The model service's internal API (champion and challenger lanes), for `RemoteModel`."""

    def __init__(self, client: InternalClient) -> None:
        self.client = client

    async def predict(self, items: list[ScoreItem]) -> list[Score]:
        return _SCORES.validate_json(await self.client.post(PREDICT, _ITEMS.dump_json(items)))

    async def predict_challenger(self, items: list[ScoreItem]) -> list[Score]:
        raw = await self.client.post(PREDICT_CHALLENGER, _ITEMS.dump_json(items))
        return _SCORES.validate_json(raw)

    async def ready(self) -> bool:
        return await self.client.ok(READY)

    async def versions(self) -> list[str] | None:
        """The versions the model service has loaded; None when it cannot say (a service
        from before this route answers 404)."""
        status, raw = await self.client.get(VERSIONS)
        if status == 404:
            return None
        if status != 200:
            raise InternalError(f"{self.client.url}{PREFIX}{VERSIONS}: {status}")
        return [str(v) for v in pydantic_core.from_json(raw)]
