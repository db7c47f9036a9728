"""uvicorn's httptools protocol, with a short answer's head and body sent in one write.

uvicorn writes a response's head as soon as the app starts the response, then the body: two
sends, so the router (or any client) wakes up and reads twice for every small answer. Here a
head that declares a content length waits for the first body write and goes out with it; a
chunked head (streams: their headers must reach the client at once), an interim ``100
Continue`` and anything else are written as they come. A held head is flushed before the
connection closes and when the response completes without a body write (HEAD, 204).

It also turns Nagle's algorithm off on TCP connections. asyncio does so only for sockets made
with ``IPPROTO_TCP`` named, and uvicorn's ``bind_socket`` named none before 0.55 (a socket
handed over by file descriptor still may not): a stream's second small write then waited for
the client's delayed ACK, and its first token came 40 ms late.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _HeadWithBody:
    """The connection's transport, as the response cycle sees it."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._head: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            data = self._head + bytes(data)
            self._head = None
        elif (
            isinstance(data, bytes)
            and data.startswith(b"HTTP/1.1 ")
            and data[9:10] != b"1"  # an interim answer goes at once
            and data.endswith(b"\r\n\r\n")
            and b"\r\ncontent-length: " in data
        ):
            self._head = data
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        no_delay(transport)
        super().connection_made(transport)
        self.transport = _HeadWithBody(self.transport)  # type: ignore[assignment]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()


def no_delay(transport: asyncio.BaseTransport) -> None:
    """Small writes leave at once on a TCP connection (a Unix socket has no such delay)."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
