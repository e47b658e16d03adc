"""The gateway's hop client against a real uvicorn server (TCP and a Unix socket)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from hearth.serving import internal_client
from hearth.serving.internal_client import PREFIX, InternalClient, InternalError
from tests.helpers import UvicornThread, free_port

PEERS: list[tuple[str, int] | str] = []  # the client address of every request served


async def _echo(request: Request) -> Response:
    client = request.client
    PEERS.append((client.host, client.port) if client else "unix")
    body = await request.body()
    return Response(body + b"|" + request.headers.get("content-type", "").encode())


async def _slow(request: Request) -> Response:
    await asyncio.sleep(float(request.query_params.get("s", "0.5")))
    return Response(b"slow")


async def _fail(_: Request) -> Response:
    return Response(b"store down", 503)


APP = Starlette(
    routes=[
        Route(f"{PREFIX}/echo", _echo, methods=["POST"]),
        Route(f"{PREFIX}/slow", _slow, methods=["POST"]),
        Route(f"{PREFIX}/fail", _fail, methods=["POST"]),
        Route(f"{PREFIX}/ready", lambda _: Response(b""), methods=["GET"]),
    ]
)


@pytest.fixture(scope="module")
def tcp_url() -> Iterator[str]:
    port = free_port()
    with UvicornThread(APP, host="127.0.0.1", port=port):
        yield f"tcp://127.0.0.1:{port}"


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_posts_reuse_one_keep_alive_connection(tcp_url: str) -> None:
    async def go() -> list[bytes]:
        client = InternalClient(tcp_url)
        try:
            return [await client.post("/echo", f"[{i}]".encode()) for i in range(5)]
        finally:
            await client.close()

    PEERS.clear()
    assert run(go()) == [f"[{i}]|application/json".encode() for i in range(5)]
    assert len(set(PEERS)) == 1  # five requests, one connection


def test_concurrent_calls_each_get_their_own_answer(tcp_url: str) -> None:
    async def go() -> list[bytes]:
        client = InternalClient(tcp_url, max_connections=4)
        try:
            return list(
                await asyncio.gather(*(client.post("/echo", f"{i}".encode()) for i in range(40)))
            )
        finally:
            await client.close()

    PEERS.clear()
    assert run(go()) == [f"{i}|application/json".encode() for i in range(40)]
    assert len(set(PEERS)) <= 4  # never more connections than allowed


def test_a_connection_the_service_closed_while_idle_is_replaced(tcp_url: str) -> None:
    async def go() -> tuple[bytes, bytes]:
        client = InternalClient(tcp_url)
        try:
            first = await client.post("/echo", b"a")
            await asyncio.sleep(1.6)  # past the server's keep-alive timeout: it closes
            return first, await client.post("/echo", b"b")
        finally:
            await client.close()

    PEERS.clear()
    assert run(go()) == (b"a|application/json", b"b|application/json")
    assert len(set(PEERS)) == 2


def test_a_cancelled_call_never_hands_its_late_answer_to_the_next(tcp_url: str) -> None:
    async def go() -> bytes:
        client = InternalClient(tcp_url, max_connections=1)
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await client.post("/slow?s=0.4", b"")
            return await client.post("/echo", b"next")
        finally:
            await client.close()

    assert run(go()) == b"next|application/json"


def test_errors_name_the_status_and_a_dead_service(tcp_url: str) -> None:
    async def go() -> None:
        client = InternalClient(tcp_url)
        try:
            with pytest.raises(InternalError, match="503 store down"):
                await client.post("/fail", b"")
            assert await client.ok("/ready")
        finally:
            await client.close()
        dead = InternalClient(f"tcp://127.0.0.1:{free_port()}")
        with pytest.raises(InternalError, match="cannot connect"):
            await dead.post("/echo", b"")

    run(go())


def test_unix_socket_addresses_as_bentoml_gives_them(tmp_path: Path) -> None:
    path = tmp_path / "svc.sock"

    async def go() -> bytes:
        client = InternalClient(f"file://{path}")
        try:
            return await client.post("/echo", b"over a socket")
        finally:
            await client.close()

    with UvicornThread(APP, uds=str(path)):
        assert run(go()) == b"over a socket|application/json"


def test_addresses_that_are_not_services_are_refused() -> None:
    with pytest.raises(ValueError, match="not a service address"):
        InternalClient("ftp://example")


class Closer:
    """A raw HTTP server that answers the first `answered` requests of each connection and
    closes the connection on the next one without a word (as a service closing an idle
    keep-alive connection just as a request goes out)."""

    def __init__(self, answered: int) -> None:
        self.answered, self.connections = answered, 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        for _ in range(self.answered):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        await reader.readuntil(b"\r\n\r\n")
        writer.close()


def _with_closer(answered: int, calls: int) -> tuple[list[object], int]:
    async def go() -> tuple[list[object], int]:
        closer = Closer(answered)
        server = await asyncio.start_server(closer.serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = InternalClient(f"tcp://127.0.0.1:{port}")
        results: list[object] = []
        try:
            for _ in range(calls):
                try:
                    results.append(await client.post("/x", b"{}"))
                except InternalError as exc:
                    results.append(exc)
        finally:
            await client.close()
            server.close()
        return results, closer.connections

    return run(go())  # type: ignore[return-value]


def test_a_reused_connection_closed_before_any_answer_is_retried_once_on_a_new_one() -> None:
    results, connections = _with_closer(answered=1, calls=2)
    assert results == [b"ok", b"ok"] and connections == 2  # the second went out again, fresh


def test_a_new_connection_closed_before_any_answer_is_an_error_not_a_loop() -> None:
    results, connections = _with_closer(answered=0, calls=1)
    assert connections == 1 and isinstance(results[0], InternalError)
    assert "connection lost" in str(results[0])


def test_a_connection_idle_too_long_is_not_reused(
    tcp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(internal_client, "REUSE_WITHIN_S", 0.0)

    async def go() -> list[bytes]:
        client = InternalClient(tcp_url)
        try:
            return [await client.post("/echo", b"a"), await client.post("/echo", b"b")]
        finally:
            await client.close()

    PEERS.clear()
    assert run(go()) == [b"a|application/json", b"b|application/json"]
    assert len(set(PEERS)) == 2  # the server kept the first open; the client did not reuse it
