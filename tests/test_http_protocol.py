"""The runtime's HTTP protocol: a short answer's head and body in one write, streams at once.

A recording transport checks the writes themselves; a real uvicorn server with the protocol
checks what a client sees: JSON answers whole, an event stream's headers before its first
event, HEAD, 204 and ``100 Continue`` unchanged.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llmi_runtime.http_protocol import OneWriteHttpToolsProtocol, _HeadWithBody
from tests.kube_fixtures import eventually
from tests.test_proxy import serving

aio = pytest.mark.asyncio(loop_scope="session")


class Recording:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"


def test_a_head_with_a_length_goes_out_with_its_body() -> None:
    t = Recording()
    wrapped = _HeadWithBody(t)  # type: ignore[arg-type]
    wrapped.write(HEAD)
    assert t.writes == []
    wrapped.write(b"{}")
    assert t.writes == [HEAD + b"{}"]
    assert wrapped.is_closing() is False, "everything else is the transport's"


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
    ],
)
def test_a_stream_head_and_an_interim_answer_go_at_once(head: bytes) -> None:
    t = Recording()
    _HeadWithBody(t).write(head)  # type: ignore[arg-type]
    assert t.writes == [head]


def test_a_held_head_is_flushed_when_there_is_no_body_and_before_closing() -> None:
    t = Recording()
    wrapped = _HeadWithBody(t)  # type: ignore[arg-type]
    wrapped.write(HEAD)
    wrapped.flush()
    assert t.writes == [HEAD]
    wrapped.write(HEAD)
    wrapped.close()
    assert t.writes == [HEAD, HEAD]
    assert t.closed


@aio
async def test_through_uvicorn_answers_are_whole_and_stream_headers_come_first() -> None:
    go = asyncio.Event()

    async def events() -> AsyncIterator[bytes]:
        await go.wait()
        yield b"data: 1\n\n"

    async def stream(request: Request) -> Response:
        return StreamingResponse(events(), media_type="text/event-stream")

    async def echo(request: Request) -> Response:
        return JSONResponse({"got": (await request.body()).decode()})

    async def empty(request: Request) -> Response:
        return Response(status_code=204)

    app = Starlette(
        routes=[
            Route("/stream", stream),
            Route("/echo", echo, methods=["POST", "GET", "HEAD"]),
            Route("/empty", empty),
        ]
    )
    async with serving(app, http=OneWriteHttpToolsProtocol) as url, asyncio.timeout(30):
        port = int(url.rsplit(":", 1)[1])  # a held head that never went out fails, not hangs
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")  # before the first event exists
        assert head.startswith(b"HTTP/1.1 200")
        assert b"text/event-stream" in head
        go.set()
        assert (await reader.readuntil(b"data: 1\n\n")).endswith(b"data: 1\n\n")
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"hi")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(int(head.split(b"content-length: ")[1].split(b"\r\n")[0])) == b'{"got":"hi"}'
        writer.write(b"HEAD /echo HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200"), "a HEAD's head is not held"
        writer.write(b"GET /empty HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert (await reader.read(-1)).startswith(b"HTTP/1.1 204")
        writer.close()


@aio
async def test_a_tcp_connection_to_a_socket_bound_without_naming_its_protocol_sends_small_writes_at_once() -> None:
    """A listening socket made without ``IPPROTO_TCP`` named (uvicorn's ``bind_socket`` made it so
    before 0.55, as does a socket handed over by file descriptor) leaves asyncio's Nagle
    switch alone; the protocol turns it off, or a stream's first token waits for the client's
    delayed ACK."""

    async def ok(request: Request) -> Response:
        return JSONResponse({})

    config = uvicorn.Config(
        Starlette(routes=[Route("/", ok)]),
        http=OneWriteHttpToolsProtocol,
        log_level="warning",
        lifespan="off",
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    assert sock.proto == 0, "the premise: a socket asyncio would leave alone"
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(30):
            await eventually(lambda: server.started or task.done(), what="a server to start")
            port = sock.getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            (connection,) = server.server_state.connections
            accepted = connection.transport.get_extra_info("socket")
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            writer.close()
    finally:
        server.should_exit = True
        await task
