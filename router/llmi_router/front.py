"""The router's front door: HTTP/1.1 on raw asyncio protocols, so that a request for a ready
model costs one parse and a relay of bytes instead of an ASGI stack and an HTTP client.

Per request a ``Dispatch`` names the ``Route``: a ready model's runtime (the fast path: the body
to a pooled keep-alive connection, the runtime's answer relayed byte for byte, chunked streams
as they come), or the full router app on a private Unix socket (everything else: loads, refusals,
the page, admin). Each request decides on its own, so one keep-alive connection may mix both.

The whole path runs in protocol callbacks: no task, future or timer per request (they cost more
CPU than the relay itself). One sweep timer per front enforces the read and keep-alive timeouts.

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
MAX_SWEEP_S = 1.0  # timeouts fire at most this late
HOP = frozenset(
    {b"connection", b"keep-alive", b"content-length", b"transfer-encoding", b"expect", b"te", b"upgrade", b"trailer"}
)


def _nothing() -> None:
    return None


def _ignore(status: int) -> None:
    return None


@dataclass(slots=True)
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


@dataclass(slots=True)
class Route:
    """Where one request goes, and what to do when it is done there."""

    address: Address
    head: bytes | None = None  # None: the client's own head (``Request.head_for``), built when sent
    release: Callable[[], None] = _nothing  # exactly once, on every way out
    finished: Callable[[int], None] = _ignore  # the status relayed (499: the client left)
    fallback: Route | None = None  # where it goes instead when ``address`` fails before any byte
    stream_error: Callable[[], bytes] | None = None  # the SSE events that end a chunked stream broken off


class Dispatch(Protocol):
    """Synchronous on purpose: a route that needs waiting (a load, a queue) is the app's."""

    def __call__(self, request: Request) -> Route: ...


@dataclass(frozen=True)
class FrontLimits:
    max_body_bytes: int
    read_timeout_s: float  # between bytes from an upstream
    connect_timeout_s: float
    keepalive_s: float = 5.0  # an idle client connection is closed after this
    body_timeout_s: float = 60.0  # a request begun but stalled this long gets a 408 (nginx's default)


def reply(status: int, message: str, code: str) -> bytes:
    """A whole response of the front's own, in OpenAI's error envelope; the connection closes after."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = json.dumps(error_body(message, kind, code=code)).encode()
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    return head % (status, HTTPStatus(status).phrase.encode(), len(body)) + body


# How an exchange on one upstream connection ended: the answer read whole, the connection lost
# (or the answer malformed), or nothing from it for the read timeout.
Ending = Literal["complete", "lost", "timeout"]


class Upstream(asyncio.Protocol):
    """One keep-alive connection to a runtime or the app, and what is known of the answer being
    read on it. Its parser lives as long as the connection; it only finds where each answer ends,
    whether the connection may be kept, and what a broken stream needs."""

    def __init__(self, address: Address) -> None:
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.relay: Relay | None = None
        self.closed = False
        self.parser = httptools.HttpResponseParser(self)
        self.last = 0.0  # loop time of the last byte sent or received
        self.head_only = False
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.length: int | None = None
        self.event_stream = False  # chunked text/event-stream: a break can still end it cleanly
        self.in_chunk = False
        self.complete = False
        self.keep_alive = False

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" and value.isdigit():
            self.length = int(value)
        elif name == b"content-type" and value.lower().startswith(b"text/event-stream"):
            self.event_stream = True

    def on_chunk_header(self) -> None:
        self.in_chunk = True

    def on_chunk_complete(self) -> None:
        self.in_chunk = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.head_only or self.status in (204, 304):
            self._complete()

    def on_message_complete(self) -> None:
        self._complete()

    def _complete(self) -> None:
        if not self.complete:
            self.complete = True
            self.keep_alive = self.parser.should_keep_alive()  # known only while the message is current

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self.relay is None:  # bytes nobody asked for: this connection cannot be trusted
            self.abort()
            return
        self.relay.received(data)

    def eof_received(self) -> bool | None:
        return None  # close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.relay is not None:
            self.relay.ended("lost")

    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class Pool:
    """Keep-alive connections per upstream address, most recently used first."""

    def __init__(self, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.idle: dict[Address, list[Upstream]] = {}

    def take(self, address: Address) -> Upstream | None:
        """An idle connection to ``address`` (it may have gone stale since), or None."""
        stack = self.idle.get(address)
        while stack:
            upstream = stack.pop()
            if upstream.usable():
                return upstream
        return None

    async def connect(self, address: Address) -> Upstream:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout_s):
            if isinstance(address, str):
                _, upstream = await loop.create_unix_connection(lambda: Upstream(address), address)
            else:
                _, upstream = await loop.create_connection(lambda: Upstream(address), *address)
        return upstream

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


class Relay:
    """One request through its route: sent on a pooled upstream connection (a new one when none
    is idle), the answer relayed, then the route released and the client told. A stale pooled
    connection is retried once on a new one; a route that cannot be reached before any byte gives
    way to its fallback; otherwise the client gets a 502. A short answer of known length goes to
    the client in one write once whole (a server writes head and body apart: two sends and two
    wake-ups of the client otherwise); anything else, streams above all, goes on as it comes."""

    __slots__ = (
        "client",
        "connecting",
        "done",
        "front",
        "held",
        "relayed",
        "released",
        "request",
        "retried",
        "reused",
        "route",
        "upstream",
    )

    def __init__(self, client: Client, request: Request, route: Route) -> None:
        self.client = client
        self.front = client.front
        self.request = request
        self.route = route
        self.upstream: Upstream | None = None
        self.connecting: asyncio.Task[Upstream] | None = None
        self.reused = False
        self.retried = False  # a stale pooled connection was retried already
        self.released = False
        self.relayed = False  # part of an answer is out: no retry, no fallback
        self.held: list[bytes] = []
        self.done = False

    def start(self) -> None:
        self.front.relays.add(self)
        self._attempt()

    def _attempt(self) -> None:
        upstream = self.front.pool.take(self.route.address)
        if upstream is not None:
            self._send(upstream, reused=True)
        else:
            self.connecting = task = asyncio.get_running_loop().create_task(self.front.pool.connect(self.route.address))
            task.add_done_callback(self._connected)

    def _connected(self, task: asyncio.Task[Upstream]) -> None:
        self.connecting = None
        if task.cancelled():
            return
        error = task.exception()
        if self.done:  # the client left meanwhile: keep a new connection for someone else
            if error is None:
                self.front.pool.put(task.result())
            return
        if error is not None:
            self._failed("unreachable")
            return
        self._send(task.result(), reused=False)

    def _send(self, upstream: Upstream, reused: bool) -> None:
        self.upstream = upstream
        self.reused = reused
        upstream.relay = self
        upstream.reset()
        upstream.head_only = self.request.method == "HEAD"
        upstream.last = self.front.loop.time()
        head = self.route.head if self.route.head is not None else self.request.head_for()
        body = self.request.body
        assert upstream.transport is not None
        if len(body) < 65536:
            upstream.transport.write(head + body)
        else:
            upstream.transport.writelines((head, body))

    def received(self, data: bytes) -> None:
        upstream = self.upstream
        assert upstream is not None
        upstream.last = self.front.loop.time()
        try:
            upstream.parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(data)
            self.ended("lost")
            return
        if upstream.complete:
            self._write(data)
            self.ended("complete")
        elif upstream.length is not None and upstream.length <= HOLD_MAX_BYTES:
            self.held.append(data)
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self.held:
            data = b"".join((*self.held, data))
            self.held.clear()
        self.client.write(data)
        self.relayed = True

    def ended(self, how: Ending) -> None:
        """The exchange on the current upstream connection is over: keep or drop the connection,
        then answer the client, retry or fall back."""
        upstream = self.upstream
        if self.done or upstream is None:
            return
        self.upstream = None
        upstream.relay = None
        if how == "complete":
            if upstream.keep_alive and not upstream.head_only:  # the parser would wait for a body
                self.front.pool.put(upstream)
            else:
                upstream.abort()
            self._answered(upstream.status, upstream.keep_alive)
            return
        upstream.abort()
        if self.relayed:
            events = self.route.stream_error
            if events is not None and upstream.event_stream and not upstream.in_chunk:
                # Between two chunks of an event stream: end it with an error event, as the app does.
                error = events()
                self.client.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(error), error))
                self._answered(502, keep=False)
            else:
                self._answered(upstream.status or 502, keep=False)  # only closing tells the client
            return
        if how == "timeout":
            self._failed("timeout")
        elif self.reused and not self.retried:
            self.retried = True  # a stale keep-alive connection: once more on a new one
            self._attempt()
        else:
            self._failed("unreachable")

    def _failed(self, how: Literal["unreachable", "timeout"]) -> None:
        """Nothing came from the route: its fallback, or a 502 of our own."""
        self._let_go()
        fallback = self.route.fallback
        if how == "unreachable" and fallback is not None:
            self.route = fallback
            self.released = self.retried = False
            self._attempt()
            return
        limit = self.front.limits.read_timeout_s
        message = (
            f"The upstream did not answer within {limit:g} s (LLM_REQUEST_TIMEOUT_S)."
            if how == "timeout"
            else "The upstream is not reachable."
        )
        self.client.write(reply(502, message, "upstream_failed"))
        self._answered(502, keep=False)

    def _let_go(self) -> None:
        if not self.released:
            self.released = True
            self.route.release()

    def _answered(self, status: int, keep: bool) -> None:
        self.done = True
        self.front.retire(self)
        self._let_go()  # before anything else the client may do next
        self.route.finished(status)
        self.client.relayed(keep and self.request.keep_alive)

    def abandon(self) -> None:
        """The client left: the upstream connection closes (so the runtime stops), the lease goes."""
        if self.done:
            return
        self.done = True
        self.front.retire(self)
        if self.connecting is not None:
            self.connecting.cancel()
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.relay = None
            upstream.abort()
        self._let_go()
        self.route.finished(499)

    def pause(self, paused: bool) -> None:
        transport = self.upstream.transport if self.upstream is not None else None
        if transport is not None:
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()


class Front:
    """The listening side: one ``Client`` per connection, a shared upstream pool, one sweep."""

    def __init__(self, dispatch: Dispatch, limits: FrontLimits) -> None:
        self.dispatch = dispatch
        self.limits = limits
        self.pool = Pool(limits.connect_timeout_s)
        self.clients: set[Client] = set()
        self.relays: set[Relay] = set()  # in progress
        self.server: asyncio.Server | None = None
        self.closing = False
        self.loop = asyncio.get_running_loop()
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_s = max(
            0.01, min(MAX_SWEEP_S, limits.read_timeout_s / 4, limits.keepalive_s / 4, limits.body_timeout_s / 4)
        )
        self._drained: asyncio.Future[None] | None = None

    async def start(self, host: str, port: int) -> asyncio.Server:
        self.server = await self.loop.create_server(lambda: Client(self), host, port, reuse_address=True, backlog=2048)
        return self.server

    async def drain(self, timeout_s: float) -> None:
        """Stop accepting, let requests in flight finish (at most ``timeout_s``), then close all."""
        self.closing = True
        if self.server is not None:
            self.server.close()
        for client in list(self.clients):
            if client.idle():
                client.close()
        if self.relays:
            self._drained = self.loop.create_future()
            await asyncio.wait({self._drained}, timeout=timeout_s)
        for client in list(self.clients):
            client.close()
        self.pool.close()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def retire(self, relay: Relay) -> None:
        self.relays.discard(relay)
        if not self.relays and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def watch(self) -> None:
        """Keep the sweep running while there are connections."""
        if self._sweep is None and not self.closing:
            self._sweep = self.loop.call_later(self._sweep_s, self._sweep_now)

    def _sweep_now(self) -> None:
        self._sweep = None
        now = self.loop.time()
        limits = self.limits
        for relay in list(self.relays):
            upstream = relay.upstream
            if upstream is not None and now - upstream.last >= limits.read_timeout_s:
                relay.ended("timeout")
        for client in list(self.clients):
            if client.partial:
                if now - client.last >= limits.body_timeout_s:
                    client.stalled()
            elif client.idle() and now - client.last >= limits.keepalive_s:
                client.close()
        if self.clients:
            self.watch()


class Client(asyncio.Protocol):
    """One client connection: parses requests, answers them in order, one at a time."""

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.requests: deque[Request] = deque()
        self.relay: Relay | None = None
        self._loop = front.loop
        self.last = self._loop.time()
        self._paused = False
        self._closed = False
        self._stepping = False  # inside _next: an answer that ends at once does not recurse
        self._refused = False  # the rest of what this client sends is ignored
        self._final: bytes | None = None  # sent after the answers in progress, before closing
        self.partial = False  # a request's first bytes are in, not all of it
        self._new_message()

    def _new_message(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._size = 0
        self._head = 0
        self._length: bytes | None = None  # the content-length header, as sent
        self._continue = False  # expect: 100-continue
        self._encoded: bytes | None = None  # a content-encoding of the body (gzip, ...): not read here

    def idle(self) -> bool:
        return self.relay is None and not self.requests

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        self.front.clients.add(self)
        self.front.watch()

    def data_received(self, data: bytes) -> None:
        self.last = self._loop.time()
        if self._refused:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refused = True  # answered as plain HTTP (no upgrades here); the connection closes after
        except httptools.HttpParserError:
            self._refuse(reply(400, "Invalid HTTP request.", "invalid_request"))
        if self.relay is None:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.clients.discard(self)
        self.transport = None
        self.requests.clear()
        if self.relay is not None:
            relay, self.relay = self.relay, None
            relay.abandon()  # withdraws the request, aborts the upstream

    def pause_writing(self) -> None:
        if self.relay is not None:
            self.relay.pause(True)

    def resume_writing(self) -> None:
        if self.relay is not None:
            self.relay.pause(False)

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.partial = True
        self._new_message()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        self._headers.append((name, value))
        self._head += len(name) + len(value)
        if self._head > MAX_HEAD_BYTES:
            self._count(0)
        if name == b"content-length":
            self._length = value
        elif name == b"expect":
            self._continue = value.lower() == b"100-continue"
        elif name == b"content-encoding" and value.strip().lower() != b"identity":
            self._encoded = value

    def on_headers_complete(self) -> None:
        length = self._length
        if length is not None and (not length.strip().isdigit() or int(length) > self.front.limits.max_body_bytes):
            self._too_large()
            return
        if self._encoded is not None:
            coding = self._encoded.decode("latin-1")[:40]
            message = f"Request bodies are read uncompressed: Content-Encoding {coding!r} is not supported."
            self._refuse(reply(415, message, "unsupported_content_encoding"))
            return
        if self._continue and self.transport is not None:
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
        self.partial = False
        if self._refused:
            return
        if self.parser.should_upgrade() and self._length not in (None, b"0"):
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
        if len(self.requests) >= MAX_PIPELINED and self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    # answering, in order
    def _next(self) -> None:
        """Start the next request unless one is in progress; close when the last one said so."""
        if self._stepping:
            return
        self._stepping = True
        try:
            while self.relay is None and self.requests and self.transport is not None and not self._closed:
                request = self.requests.popleft()
                if self._paused and len(self.requests) < MAX_PIPELINED:
                    self._paused = False
                    self.transport.resume_reading()
                try:
                    route = self.front.dispatch(request)
                except Exception:
                    log.exception("front: request failed")
                    self.write(reply(502, "The router failed on this request.", "router_failed"))
                    self.close()
                    return
                self.relay = Relay(self, request, route)
                self.relay.start()
            if self.idle() and self._refused:
                self._end()
        finally:
            self._stepping = False

    def relayed(self, keep: bool) -> None:
        """The answer in progress is out; ``keep``: the client connection may stay open."""
        self.relay = None
        self.last = self._loop.time()
        if not keep or self.front.closing or (self._refused and not self.requests):
            self._end()
            return
        self._next()

    def _end(self) -> None:
        if self._final is not None:
            self.write(self._final)
            self._final = None
        self.close()

    def _count(self, n: int) -> None:
        self._head += n
        if self._head > MAX_HEAD_BYTES and not self._refused:
            self._refuse(reply(431, "The request's head is too large.", "request_too_large"))

    def stalled(self) -> None:
        """A request that stopped arriving midway: a 408 (after any answers in progress), then close."""
        self.partial = False
        limit = self.front.limits.body_timeout_s
        self._refuse(reply(408, f"The request was not received in full within {limit:g} s.", "request_timeout"))

    def _too_large(self) -> None:
        limit = self.front.limits.max_body_bytes
        message = f"The request body is over {limit} bytes (LLM_MAX_REQUEST_BYTES)."
        self._refuse(reply(413, message, "request_too_large"))

    def _refuse(self, response: bytes) -> None:
        """Answer what came before, then this, then close (the rest of the input is not read)."""
        if self._refused:
            return
        self._refused = True
        if self.idle():
            self.write(response)
            self.close()
        else:
            self._final = response

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.close()
