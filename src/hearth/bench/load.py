"""A small async HTTP/1.1 load generator: pre-encoded requests over keep-alive connections.

A general client (httpx, aiohttp) spends more CPU per request than the servers it measures
would on a 2-core box, and that CPU is taken from the servers. This client writes bytes
built once per request body and reads only the status line, the headers it needs and the
body, so the load generator stays a small, equal tax on every contender.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

# A request that has not answered in this long counts as a "timeout" error.
REQUEST_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Endpoint:
    """Where a contender listens and the fixed headers of its requests."""

    host: str
    port: int
    path: str
    headers: tuple[tuple[str, str], ...] = ()

    def request(self, body: bytes) -> bytes:
        """The complete POST request for `body`, ready to write on a connection."""
        head = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in self.headers),
        ]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Response:
    status: int
    body: bytes
    retry_after: str | None = None


class Connection:
    """One keep-alive connection; reopened when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def connect(self) -> None:
        await self._open()

    async def send(self, raw: bytes) -> Response:
        """Write one request, read its response (Content-Length or chunked)."""
        reader, writer = await self._open()
        try:
            writer.write(raw)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionResetError("server closed the connection")
            status = int(status_line.split(None, 2)[1])
            length, chunked, close, retry_after = await _headers(reader)
            if chunked:
                body = await _chunked(reader)
            else:
                body = await reader.readexactly(length) if length else b""
        except BaseException:
            await self.close()
            raise
        if close:
            await self.close()
        return Response(status, body, retry_after)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _headers(reader: asyncio.StreamReader) -> tuple[int, bool, bool, str | None]:
    length, chunked, close, retry_after = 0, False, False, None
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            return length, chunked, close, retry_after
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif key == b"connection":
            close = b"close" in value.lower()
        elif key == b"retry-after":
            retry_after = value.strip().decode()


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            await reader.readline()  # the empty trailer
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)  # CRLF after each chunk


@dataclass
class Sample:
    """What one run of the load generator saw."""

    latencies_s: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    retry_after: set[str] = field(default_factory=set)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def count(self, status: str) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1


async def drive(
    endpoint: Endpoint, bodies: Sequence[bytes], concurrency: int, max_s: float
) -> Sample:
    """Send each body once with `concurrency` requests in flight; stop early after `max_s`.

    Latency is measured per request (closed loop: a worker sends its next request when the
    previous one answers), as a client with `concurrency` connections would see it.
    """
    requests = iter([endpoint.request(b) for b in bodies])
    sample = Sample()
    deadline = time.perf_counter() + max_s
    connections = [Connection(endpoint.host, endpoint.port) for _ in range(concurrency)]
    # Connected before the clock starts: a long-lived client does not pay for connecting.
    await asyncio.gather(*(c.connect() for c in connections), return_exceptions=True)
    started = time.perf_counter()
    try:
        await asyncio.gather(*(_worker(c, requests, sample, deadline) for c in connections))
    finally:
        sample.elapsed_s = time.perf_counter() - started
        for conn in connections:
            await conn.close()
    return sample


async def _worker(
    conn: Connection, requests: Iterator[bytes], sample: Sample, deadline: float
) -> None:
    for raw in requests:  # shared: each request is sent once, by whichever worker is free
        if time.perf_counter() > deadline:
            return
        t0 = time.perf_counter()
        status, response = await attempt(conn, raw)
        sample.count(status)
        if response is None:
            continue
        sample.latencies_s.append(time.perf_counter() - t0)
        if response.retry_after is not None:
            sample.retry_after.add(response.retry_after)


async def attempt(conn: Connection, raw: bytes) -> tuple[str, Response | None]:
    """Send one request: (its status, the response), or ("timeout" | "connection", None)
    when it got no answer within REQUEST_TIMEOUT_S or the connection failed."""
    try:
        response = await asyncio.wait_for(conn.send(raw), REQUEST_TIMEOUT_S)
    except TimeoutError:
        return "timeout", None
    except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
        await asyncio.sleep(0.01)  # a refused connection must not spin the loop
        return "connection", None
    return str(response.status), response


async def post(endpoint: Endpoint, body: bytes, timeout_s: float = 10.0) -> Response:
    """One request on a fresh connection (readiness checks, one-off calls)."""
    conn = Connection(endpoint.host, endpoint.port)
    try:
        return await asyncio.wait_for(conn.send(endpoint.request(body)), timeout_s)
    finally:
        await conn.close()
