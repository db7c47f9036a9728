"""The router's front door on real sockets: a raw-HTTP client, the front, and two real upstream
servers (uvicorn) standing for a runtime and for the router app.

What is checked is what the front promises: bytes relayed unchanged both ways, each request routed
on its own (fast and slow mixed on one connection, in order when pipelined), keep-alive reuse
upstream, a stale pooled connection retried, an unreachable runtime falling back to the app, its own
refusals (413, 400, 502) in OpenAI's envelope, and a client that leaves closing the upstream and
releasing the lease exactly once. Every wait is on an observable event, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route as StarletteRoute

from llmi_router.embedded.process import free_port
from llmi_router.front import Front, FrontLimits, Request, Route
from llmi_router.front import Upstream as Upstream_
from tests.test_proxy import serving

aio = pytest.mark.asyncio(loop_scope="session")


@dataclass
class Upstream:
    """A real HTTP server that records what reached it and from which connection."""

    name: str
    seen: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    peers: set[Any] = field(default_factory=set)
    streaming: asyncio.Event = field(default_factory=asyncio.Event)
    left: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    def app(self) -> Starlette:
        async def echo(request: StarletteRequest) -> Response:
            body = await request.body()
            self.seen.append((request.url.path, body, dict(request.headers)))
            self.peers.add(request.client)
            return JSONResponse({"by": self.name, "path": request.url.path, "got": body.decode()})

        async def stream(request: StarletteRequest) -> Response:
            self.seen.append((request.url.path, await request.body(), dict(request.headers)))

            async def events() -> AsyncIterator[bytes]:
                try:
                    yield b"data: 1\n\n"
                    self.streaming.set()
                    await asyncio.Event().wait()  # never ends by itself
                finally:
                    self.left.set()

            return StreamingResponse(events(), media_type="text/event-stream")

        async def hold(request: StarletteRequest) -> Response:
            """A plain answer that never comes: a generation without end, until the client goes."""
            self.seen.append((request.url.path, await request.body(), dict(request.headers)))
            self.streaming.set()
            try:
                while (await request.receive())["type"] != "http.disconnect":
                    pass
            finally:
                self.left.set()
            return Response(status_code=499)

        return Starlette(
            routes=[
                StarletteRoute("/stream", stream, methods=["POST"]),
                StarletteRoute("/fast-hold", hold, methods=["POST"]),
                StarletteRoute("/{path:path}", echo, methods=["GET", "POST", "HEAD"]),
            ]
        )


@dataclass
class Lease:
    released: int = 0
    finished: list[int] = field(default_factory=list)

    def release(self) -> None:
        self.released += 1


@dataclass
class Dispatch:
    """Requests whose path starts /fast go to the runtime, the rest to the app."""

    runtime: tuple[str, int] | str
    app: tuple[str, int]
    leases: list[Lease] = field(default_factory=list)

    breaking: tuple[str, int] | None = None  # where /breaks goes

    def __call__(self, request: Request) -> Route:
        slow = Route(self.app)
        if request.path == "/breaks" and self.breaking is not None:
            return Route(self.breaking, request.head_for(), stream_error=lambda: b"data: broken\n\n")
        if not request.path.startswith(("/fast", "/stream")):
            return slow
        lease = Lease()
        self.leases.append(lease)
        return Route(self.runtime, request.head_for(), lease.release, lease.finished.append, fallback=slow)


@dataclass
class Env:
    front: str
    port: int
    runtime: Upstream
    app: Upstream
    dispatch: Dispatch
    front_obj: Front


def address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


@asynccontextmanager
async def env(runtime_address: tuple[str, int] | None = None, **limits: Any) -> AsyncIterator[Env]:
    runtime, app = Upstream("runtime"), Upstream("app")
    async with serving(runtime.app()) as runtime_url, serving(app.app()) as app_url:
        dispatch = Dispatch(runtime_address or address(runtime_url), address(app_url))
        defaults: dict[str, Any] = {"max_body_bytes": 1000, "read_timeout_s": 30, "connect_timeout_s": 5}
        front = Front(dispatch, FrontLimits(**(defaults | limits)))
        port = free_port()
        await front.start("127.0.0.1", port)
        try:
            yield Env(f"http://127.0.0.1:{port}", port, runtime, app, dispatch, front)
        finally:
            await front.drain(1)


async def exchange(port: int, raw: bytes) -> bytes:
    """Send raw bytes on one connection and read until the front closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    try:
        return await reader.read(-1)
    finally:
        writer.close()


def post(path: str, body: bytes, *extra: str, close: bool = False) -> bytes:
    head = [f"POST {path} HTTP/1.1", "host: x", f"content-length: {len(body)}", *extra]
    if close:
        head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@aio
async def test_requests_for_both_routes_share_one_client_connection_and_reuse_upstream_ones() -> None:
    async with env() as e, httpx.AsyncClient(base_url=e.front) as client:
        answers = [await client.post(path, content=b'{"n": %d}' % i) for i, path in enumerate(["/fast", "/slow"] * 3)]
        assert [a.json()["by"] for a in answers] == ["runtime", "app"] * 3
        assert [a.json()["got"] for a in answers] == [f'{{"n": {i}}}' for i in range(6)]
        assert len(e.runtime.peers) == 1, "one keep-alive connection to the runtime, reused"
        assert len(e.app.peers) == 1
        assert [lease.released for lease in e.dispatch.leases] == [1, 1, 1]
        assert [lease.finished for lease in e.dispatch.leases] == [[200]] * 3


@aio
async def test_pipelined_requests_are_answered_in_order() -> None:
    async with env() as e:
        raw = post("/fast", b"1") + post("/slow", b"2") + post("/fast", b"3", close=True)
        out = await exchange(e.port, raw)
        bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1]) for part in out.split(b"HTTP/1.1 ")[1:]]
        assert [(b["by"], b["got"]) for b in bodies] == [("runtime", "1"), ("app", "2"), ("runtime", "3")]


@aio
async def test_a_chunked_body_reaches_the_upstream_whole_with_a_length() -> None:
    async with env() as e:
        raw = b"POST /fast HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        raw += b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        out = await exchange(e.port, raw)
        assert out.startswith(b"HTTP/1.1 200")
        path, body, headers = e.runtime.seen[-1]
        assert (path, body, headers["content-length"]) == ("/fast", b"abcde", "5")
        assert "transfer-encoding" not in headers


@aio
async def test_bodies_over_the_limit_get_413_in_the_envelope_and_reach_nobody() -> None:
    async with env(max_body_bytes=10) as e:
        declared = await exchange(e.port, post("/fast", b"x" * 11))
        chunked = b"POST /fast HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" + b"6\r\nabcdef\r\n" * 2
        counted = await exchange(e.port, chunked + b"0\r\n\r\n")
        for out in (declared, counted):
            assert out.startswith(b"HTTP/1.1 413")
            error = json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]
            assert error["code"] == "request_too_large"
            assert "LLM_MAX_REQUEST_BYTES" in error["message"]
        assert e.runtime.seen == []
        assert e.app.seen == []


@aio
async def test_malformed_http_gets_400_in_the_envelope() -> None:
    async with env() as e:
        out = await exchange(e.port, b"POST /fast HTTP/1.1\r\ncontent-length: nope\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 4")
        assert json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "invalid_request_error"
        garbage = await exchange(e.port, b"\x00\x01 nonsense\r\n\r\n")
        assert garbage.startswith(b"HTTP/1.1 400")


@aio
async def test_an_unreachable_runtime_falls_back_to_the_app_and_releases_its_lease() -> None:
    async with env(runtime_address=("127.0.0.1", free_port())) as e, httpx.AsyncClient(base_url=e.front) as client:
        answer = await client.post("/fast", content=b"{}")
        assert answer.json()["by"] == "app"
        assert [lease.released for lease in e.dispatch.leases] == [1]


@aio
async def test_a_stale_pooled_connection_is_retried_on_a_fresh_one() -> None:
    async with env() as e, httpx.AsyncClient(base_url=e.front) as client:
        # A pooled connection whose far end closes once it gets a request, before answering:
        # what a runtime's keep-alive timeout does when it races a new request.
        closing = await asyncio.start_server(_close_on_first_byte, "127.0.0.1", 0)
        host, port = closing.sockets[0].getsockname()[:2]
        loop = asyncio.get_running_loop()
        _, stale = await loop.create_connection(lambda: Upstream_(e.dispatch.runtime), host, port)
        e.front_obj.pool.put(stale)
        answer = await client.post("/fast", content=b"2")
        assert (answer.status_code, answer.json()["by"], answer.json()["got"]) == (200, "runtime", "2")
        assert stale.closed
        assert [lease.released for lease in e.dispatch.leases] == [1]
        closing.close()
        await closing.wait_closed()


async def _close_on_first_byte(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1)
    writer.transport.abort()
    writer.close()


@aio
@pytest.mark.parametrize("path", ["/stream", "/fast-hold"])
async def test_a_client_that_leaves_mid_answer_closes_the_upstream_and_releases_once(path: str) -> None:
    """Mid-stream, or while a plain answer is still being generated."""
    async with env() as e:
        reader, writer = await asyncio.open_connection("127.0.0.1", e.port)
        writer.write(post(path, b"{}"))
        await writer.drain()
        if path == "/stream":
            head = await reader.readuntil(b"data: 1\n\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert b"text/event-stream" in head
        await e.runtime.streaming.wait()  # the runtime is working on it
        writer.close()
        await e.runtime.left.wait()  # the runtime saw its client go: generation stops there
        lease = e.dispatch.leases[-1]
        await _until(lambda: lease.released == 1)
        assert lease.finished == [499]


@aio
async def test_an_upstream_that_stays_silent_gets_a_502_after_the_read_timeout() -> None:
    async with env(read_timeout_s=0.2) as e, _silent_server() as silent:
        e.dispatch.runtime = silent
        out = await exchange(e.port, post("/fast", b"{}", close=True))
        assert out.startswith(b"HTTP/1.1 502")
        assert "LLM_REQUEST_TIMEOUT_S" in json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["message"]
        assert [lease.released for lease in e.dispatch.leases] == [1]
        assert e.dispatch.leases[0].finished == [502]


@aio
async def test_head_and_expect_continue() -> None:
    async with env() as e:
        reader, writer = await asyncio.open_connection("127.0.0.1", e.port)
        writer.write(b"POST /fast HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
        await writer.drain()
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"ok")
        await writer.drain()
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        writer.write(b"HEAD /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"}")  # the rest of the POST's answer
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"content-length" in head
        writer.write(post("/fast", b"after", close=True))
        await writer.drain()
        rest = await reader.read(-1)
        assert rest.startswith(b"HTTP/1.1 200")
        assert rest.endswith(b'"got":"after"}')
        writer.close()


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def _raw_server(handle: Handler) -> AsyncIterator[tuple[str, int]]:
    """A TCP server that answers (or fails to) exactly as ``handle`` says; its address."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[:2]
    finally:
        server.close()
        await server.wait_closed()


def _silent_server() -> AbstractAsyncContextManager[tuple[str, int]]:
    """Accepts, reads, never answers."""

    async def never(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(-1)
        finally:
            writer.close()

    return _raw_server(never)


async def _until(check: Any) -> None:
    from tests.kube_fixtures import eventually

    await eventually(check, "the condition")


@aio
async def test_an_upgrade_is_answered_as_plain_http_or_refused_when_it_carries_a_body() -> None:
    async with env() as e:
        upgrade = b"POST /fast HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n"
        out = await exchange(e.port, upgrade + b"\r\n")  # reads until the front closes
        assert out.startswith(b"HTTP/1.1 200")
        assert json.loads(out.split(b"\r\n\r\n", 1)[1])["by"] == "runtime"
        out = await exchange(e.port, upgrade + b"content-length: 2\r\n\r\nhi")
        assert out.startswith(b"HTTP/1.1 400")
        assert json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "upgrade_not_supported"
        assert all(body != b"hi" for _, body, _ in e.runtime.seen)


@aio
async def test_a_head_too_large_gets_431_once() -> None:
    async with env() as e:
        raw = b"POST /fast HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 70_000 + b"\r\ncontent-length: 99999\r\n\r\n"
        out = await exchange(e.port, raw)
        assert out.startswith(b"HTTP/1.1 431")
        assert out.count(b"HTTP/1.1") == 1


def _breaking_server(tail: bytes) -> AbstractAsyncContextManager[tuple[str, int]]:
    """Starts a chunked event stream, sends ``tail``, then drops the connection."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        writer.write(head + b"9\r\ndata: 1\n\n\r\n" + tail)
        await writer.drain()
        writer.transport.abort()
        writer.close()

    return _raw_server(serve)


@aio
async def test_a_stream_broken_off_between_events_ends_with_an_error_event() -> None:
    async with env() as e, _breaking_server(b"") as breaking:
        e.dispatch.breaking = breaking
        out = await exchange(e.port, post("/breaks", b"{}"))
        assert out.startswith(b"HTTP/1.1 200")
        body = out.split(b"\r\n\r\n", 1)[1]
        assert body.startswith(b"9\r\ndata: 1\n\n\r\n")
        assert body.endswith(b"data: broken\n\n\r\n0\r\n\r\n"), "a well-formed end: the client reads the error"


@aio
async def test_a_stream_broken_off_mid_event_is_closed_without_an_event() -> None:
    async with env() as e, _breaking_server(b"20\r\ndata: 2") as breaking:
        e.dispatch.breaking = breaking
        out = await exchange(e.port, post("/breaks", b"{}"))
        assert out.endswith(b"20\r\ndata: 2"), "what came is relayed, then the connection closes"
        assert b"broken" not in out


@aio
async def test_a_compressed_body_is_refused_with_415_before_any_route() -> None:
    async with env() as e:
        out = await exchange(e.port, post("/fast", b"\x1f\x8b\x08\x00", "content-encoding: gzip"))
        assert out.startswith(b"HTTP/1.1 415 Unsupported Media Type\r\n"), out
        error = json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "unsupported_content_encoding"
        assert "'gzip'" in error["message"]
        assert not e.runtime.seen, "nothing of it was forwarded"
        assert not e.app.seen
        plain = await exchange(e.port, post("/fast", b"{}", "content-encoding: identity", close=True))
        assert plain.startswith(b"HTTP/1.1 200"), "identity is no encoding"


@aio
async def test_a_request_that_stops_arriving_midway_gets_a_408_not_the_idle_close() -> None:
    async with env(keepalive_s=0.05, body_timeout_s=0.3) as e:
        head = b"POST /fast HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{"
        out = await exchange(e.port, head)
        assert out.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), out
        error = json.loads(out.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "request_timeout"
        assert "0.3 s" in error["message"]
        assert not e.runtime.seen, "nothing of it was forwarded"
        assert not e.app.seen


@aio
async def test_an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not() -> None:
    async with env(keepalive_s=0.2) as e:
        _, writer = await asyncio.open_connection("127.0.0.1", e.port)
        writer.write(post("/fast-hold", b"{}"))  # an answer that takes longer than the keep-alive
        await writer.drain()
        await e.runtime.streaming.wait()
        idle_r, idle_w = await asyncio.open_connection("127.0.0.1", e.port)
        assert await idle_r.read(-1) == b"", "an idle connection is closed by the front"
        idle_w.close()
        assert not e.runtime.left.is_set(), "the busy connection is kept: its runtime still has its client"
        assert e.front_obj.relays, "the slow request is still being answered"
        writer.close()
        await e.runtime.left.wait()
