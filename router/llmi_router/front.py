"""The router's front door: HTTP/1.1 on raw asyncio protocols, so that a request for a ready
model costs one parse and a relay of bytes instead of an ASGI stack and an HTTP client.

Per request a ``Dispatch`` names the ``Route``: a ready model's runtime (the fast path: the body
to a pooled keep-alive connection, the runtime's answer relayed byte for byte, chunked streams
as they come), or the full router app on a private Unix socket (everything else: loads, refusals,
the page, admin). Each request decides on its own, so one keep-alive connection may mix both.

A client that leaves closes the upstream connection, which is what tells a runtime (or the app)
to stop; the route's lease is released first, synchronously. A slow reader pauses the upstream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Literal, Protocol

import httptools

from llmi.errors import error_body

log = logging.getLogger("llmi.front")

Address = tuple[str, int] | str  # (host, port), or the path of a Unix socket

MAX_HEAD_BYTES = 64 * 1024
MAX_PIPELINED = 16  # requests parsed ahead of their answers before reading pauses
IDLE_PER_ADDRESS = 64  # keep-alive connections kept per upstream
HOLD_MAX_BYTES = 256 * 1024  # answers up to this long go to the client in one write
HOP = frozenset(
    {b"connection", b"keep-alive", b"content-length", b"transfer-encoding", b"expect", b"te", b"upgrade", b"trailer"}
)


def _nothing() -> None:
    return None


def _ignore(status: int) -> None:
    return None


@dataclass
class Request:
    """One complete request as the client sent it (the body de-chunked)."""

    method: str
    target: bytes
    version: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool

    @property
    def path(self) -> str:
        return self.target.partition(b"?")[0].decode("latin-1")

    def head_for(self) -> bytes:
        """The request head to send upstream: the client's headers, one framing of our own."""
        lines = [b"%s %s HTTP/%s\r\n" % (self.method.encode(), self.target, self.version.encode())]
        lines += [b"%s: %s\r\n" % (k, v) for k, v in self.headers if k not in HOP]
        lines.append(b"content-length: %d\r\n\r\n" % len(self.body))
        return b"".join(lines)


@dataclass
class Route:
    """Where one request goes, and what to do when it is done there."""

    address: Address
    head: bytes
    release: Callable[[], None] = _nothing  # exactly once, on every way out
    finished: Callable[[int], None] = _ignore  # the status relayed (499: the client left)
    fallback: Route | None = None  # where it goes instead when ``address`` fails before any byte
    stream_error: bytes | None = None  # SSE events that end a chunked stream the upstream broke off


class Dispatch(Protocol):
    async def __call__(self, request: Request) -> Route: ...


@dataclass(frozen=True)
class FrontLimits:
    max_body_bytes: int
    read_timeout_s: float  # between bytes from an upstream
    connect_timeout_s: float
    keepalive_s: float = 5.0  # an idle client connection is closed after this


def reply(status: int, message: str, code: str) -> bytes:
    """A whole response of the front's own, in OpenAI's error envelope; the connection closes after."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = json.dumps(error_body(message, kind, code=code)).encode()
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, HTTPStatus(status).phrase.encode(), len(body)) + body


# How one exchange ended: answered (keep the client connection or close it, with the status
# relayed), or nothing relayed: a reused connection that failed (retry), no connection, a timeout.
Outcome = tuple[Literal["keep", "close", "retry", "unreachable", "timeout"], int]


class Upstream(asyncio.Protocol):
    """One keep-alive connection to a runtime or the app; bytes go to the exchange it serves."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:  # bytes nobody asked for: this connection cannot be trusted
            self.abort()
            return
        self.exchange.received(data)

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.exchange is not None:
            self.exchange.lost()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Keep-alive connections per upstream address, most recently used first."""

    def __init__(self, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.idle: dict[Address, list[Upstream]] = {}

    async def get(self, address: Address) -> tuple[Upstream, bool]:
        """A connection to ``address`` and whether it was reused (so it may have gone stale)."""
        stack = self.idle.get(address)
        while stack:
            upstream = stack.pop()
            if not upstream.closed:
                return upstream, True
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout_s):
            if isinstance(address, str):
                _, upstream = await loop.create_unix_connection(lambda: Upstream(address), address)
            else:
                _, upstream = await loop.create_connection(lambda: Upstream(address), *address)
        return upstream, False

    def put(self, upstream: Upstream) -> None:
        stack = self.idle.setdefault(upstream.address, [])
        if upstream.closed:
            return
        if len(stack) >= IDLE_PER_ADDRESS:
            stack[:] = [u for u in stack if not u.closed]
            if len(stack) >= IDLE_PER_ADDRESS:
                upstream.abort()
                return
        stack.append(upstream)

    def close(self) -> None:
        for stack in self.idle.values():
            for upstream in stack:
                upstream.abort()
        self.idle.clear()


class Exchange:
    """One request relayed over one upstream connection. A short answer of known length goes to
    the client in one write once whole (a server writes head and body apart: two sends and two
    wake-ups of the client otherwise); anything else, streams above all, goes on as it comes.
    The response parser only finds where the answer ends and whether to keep alive."""

    def __init__(self, client: Client, upstream: Upstream, head_only: bool, read_timeout_s: float) -> None:
        self.client = client
        self.upstream = upstream
        self.head_only = head_only
        self.parser = httptools.HttpResponseParser(self)
        self.relayed = False
        self.status = 0
        self.keep_alive = False
        self.read_timeout_s = read_timeout_s
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[str] = loop.create_future()  # "complete", "lost" or "timeout"
        self._loop = loop
        self._last = loop.time()
        self._timer = loop.call_later(read_timeout_s, self._check_timeout)
        self._length: int | None = None
        self._short = False  # held until whole
        self._held: list[bytes] = []
        self.event_stream = False  # chunked text/event-stream: a break can still end it cleanly
        self.in_chunk = False

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" and value.isdigit():
            self._length = int(value)
        elif name == b"content-type" and value.lower().startswith(b"text/event-stream"):
            self.event_stream = True

    def on_chunk_header(self) -> None:
        self.in_chunk = True

    def on_chunk_complete(self) -> None:
        self.in_chunk = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.head_only or self.status in (204, 304):
            self._finish("complete")
        self._short = self._length is not None and self._length <= HOLD_MAX_BYTES

    def on_message_complete(self) -> None:
        self._finish("complete")

    def received(self, data: bytes) -> None:
        self._last = self._loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(data)
            self._finish("lost")
            return
        if self._short and not self.done.done():
            self._held.append(data)
            return
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self._held:
            data = b"".join((*self._held, data))
            self._held.clear()
        if self.client.transport is not None:
            self.client.transport.write(data)
        self.relayed = True

    def lost(self) -> None:
        self._finish("lost")

    def _finish(self, how: str) -> None:
        if not self.done.done():
            if how == "complete":
                self.keep_alive = self.parser.should_keep_alive()
            self._timer.cancel()
            self.done.set_result(how)

    def _check_timeout(self) -> None:
        left = self._last + self.read_timeout_s - self._loop.time()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check_timeout)
        else:
            self._finish("timeout")

    def cancel(self) -> None:
        self._timer.cancel()


class Front:
    """The listening side: one ``Client`` per connection, a shared upstream pool."""

    def __init__(self, dispatch: Dispatch, limits: FrontLimits) -> None:
        self.dispatch = dispatch
        self.limits = limits
        self.pool = Pool(limits.connect_timeout_s)
        self.clients: set[Client] = set()
        self.server: asyncio.Server | None = None
        self.closing = False

    async def start(self, host: str, port: int) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: Client(self), host, port, reuse_address=True, backlog=2048)
        return self.server

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting, let requests in flight finish (at most ``timeout_s``), then close all."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        for client in list(self.clients):
            if client.task is None:
                client.close()
        tasks = [c.task for c in self.clients if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        for client in list(self.clients):
            client.close()
        self.pool.close()

    async def relay(self, client: Client, request: Request) -> bool:
        """Answer ``request`` through its route; whether the client connection may stay open."""
        route = await self.dispatch(request)
        reused_retry = True
        while True:
            try:
                outcome = await self._exchange(client, request, route)
            except BaseException:
                route.release()  # first, and synchronous: a cancel (the client left) included
                route.finished(499)
                raise
            how, status = outcome
            if how == "retry" and reused_retry:
                reused_retry = False  # a stale keep-alive connection: once more on a fresh one
                continue
            route.release()
            if how in ("retry", "unreachable") and route.fallback is not None:
                route = route.fallback
                continue
            if how in ("retry", "unreachable", "timeout"):
                limit = self.limits.read_timeout_s
                message = (
                    f"The upstream did not answer within {limit:g} s (LLM_REQUEST_TIMEOUT_S)."
                    if how == "timeout"
                    else "The upstream is not reachable."
                )
                client.write(reply(502, message, "upstream_failed"))
                status = 502
            route.finished(status)
            return how == "keep" and request.keep_alive

    async def _exchange(self, client: Client, request: Request, route: Route) -> Outcome:
        try:
            upstream, reused = await self.pool.get(route.address)
        except (OSError, TimeoutError):
            return "unreachable", 0
        exchange = Exchange(client, upstream, request.method == "HEAD", self.limits.read_timeout_s)
        upstream.exchange = exchange
        client.exchange = exchange
        assert upstream.transport is not None
        try:
            if len(request.body) < 65536:
                upstream.transport.write(route.head + request.body)
            else:
                upstream.transport.writelines((route.head, request.body))
            how = await exchange.done
        except BaseException:
            exchange.cancel()
            upstream.abort()  # the upstream sees its client leave
            raise
        finally:
            upstream.exchange = None
            client.exchange = None
        if how == "complete":
            if exchange.keep_alive:
                self.pool.put(upstream)
            else:
                upstream.abort()
            return ("keep" if exchange.keep_alive else "close"), exchange.status
        upstream.abort()
        if exchange.relayed:  # part of an answer is out
            if route.stream_error is not None and exchange.event_stream and not exchange.in_chunk:
                # Between two chunks of an event stream: end it with an error event, as the app does.
                payload = route.stream_error
                client.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
                return "close", 502
            return "close", exchange.status or 502  # only closing tells the client
        if how == "timeout":
            return "timeout", 0
        return ("retry" if reused else "unreachable"), 0


class Client(asyncio.Protocol):
    """One client connection: parses requests, answers them in order, one at a time."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.requests: deque[Request] = deque()
        self.task: asyncio.Task[None] | None = None
        self.exchange: Exchange | None = None
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._idle: asyncio.TimerHandle | None = None
        self._refused = False  # the rest of what this client sends is ignored
        self._final: bytes | None = None  # sent after the answers in progress, before closing
        self._new_message()

    def _new_message(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._head = 0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        self.front.clients.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self._last = self._loop.time()
        if self._refused:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refused = True  # answered as plain HTTP (no upgrades here); the connection closes after
        except httptools.HttpParserError:
            self._refuse(reply(400, "Invalid HTTP request.", "invalid_request"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.clients.discard(self)
        self.transport = None
        if self._idle is not None:
            self._idle.cancel()
        if self.task is not None:
            self.task.cancel()  # withdraws a queued request, aborts the upstream

    def pause_writing(self) -> None:
        if self.exchange is not None and self.exchange.upstream.transport is not None:
            self.exchange.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.exchange is not None and self.exchange.upstream.transport is not None:
            self.exchange.upstream.transport.resume_reading()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._new_message()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._count(len(name) + len(value))

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            if name == b"content-length" and (
                not value.strip().isdigit() or int(value) > self.front.limits.max_body_bytes
            ):
                self._too_large()
                return
        if self._header(b"expect") == b"100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._refused:
            return
        self._size += len(body)
        if self._size > self.front.limits.max_body_bytes:
            self._too_large()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        if self.parser.should_upgrade() and self._header(b"content-length") not in (None, b"0"):
            # The parser hands what follows an upgrade's head to the new protocol, not as a body.
            message = "Protocol upgrades are not supported: send the request without an Upgrade header."
            self._refuse(reply(400, message, "upgrade_not_supported"))
            return
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        request = Request(
            self.parser.get_method().decode("latin-1"),
            self._url,
            self.parser.get_http_version(),
            self._headers,
            body,
            self.parser.should_keep_alive(),
        )
        self.requests.append(request)
        if len(self.requests) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
        if self.task is None:
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            self.task = self._loop.create_task(self._answer())

    # the rest
    def _header(self, name: bytes) -> bytes | None:
        for key, value in self._headers:
            if key == name:
                return value.lower()
        return None

    def _count(self, n: int) -> None:
        self._head += n
        if self._head > MAX_HEAD_BYTES and not self._refused:
            self._refuse(reply(431, "The request's head is too large.", "request_too_large"))

    def _too_large(self) -> None:
        limit = self.front.limits.max_body_bytes
        message = f"The request body is over {limit} bytes (LLM_MAX_REQUEST_BYTES)."
        self._refuse(reply(413, message, "request_too_large"))

    def _refuse(self, response: bytes) -> None:
        """Answer what came before, then this, then close (the rest of the input is not read)."""
        if self._refused:
            return
        self._refused = True
        if self.task is None:
            self.write(response)
            self.close()
        else:
            self._final = response

    async def _answer(self) -> None:
        try:
            while self.requests:
                request = self.requests.popleft()
                if self.transport is not None and len(self.requests) < MAX_PIPELINED:
                    self.transport.resume_reading()
                keep = await self.front.relay(self, request)
                if not keep or self.front.closing or (self._refused and not self.requests):
                    if self._final is not None:
                        self.write(self._final)
                    self.close()
                    return
        except asyncio.CancelledError:
            return
        except Exception:
            log.exception("front: request failed")
            self.write(reply(502, "The router failed on this request.", "router_failed"))
            self.close()
            return
        finally:
            self.task = None
        self._arm_idle()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _arm_idle(self) -> None:
        self._idle = self._loop.call_later(self.front.limits.keepalive_s, self._check_idle)

    def _check_idle(self) -> None:
        self._idle = None
        if self.task is not None:
            return
        left = self._last + self.front.limits.keepalive_s - self._loop.time()
        if left > 0:
            self._idle = self._loop.call_later(left, self._check_idle)
        else:
            self.close()
