"""The router's data path: hold a lease, send the request's bytes to the runtime unchanged, and
relay the answer back unbuffered, releasing the lease on every way out.

It speaks raw ASGI (``receive``/``send``) and aiohttp for the upstream, so it can be tested
without the app and costs no framework objects per request. A client that leaves cancels the
work wherever it is: waiting for a load, waiting for the runtime, or mid-stream; closing the
upstream connection is what tells the runtime (and its engine) to stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from llmi.errors import ClientGone, LlmiError, UpstreamFailed, openai_error
from llmi.web import SSE_DONE, SSE_HEADERS, Receive, Send, sse_event, unless_client_leaves, wait_for_disconnect
from llmi_router.ports import ControlPlane, Lease

log = logging.getLogger("llmi.router")

# Headers that describe one hop, not the answer; never relayed.
HOP_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "server", "date"})
JSON_HEADERS = {"content-type": "application/json"}
_SSE_RAW = [(b"content-type", b"text/event-stream; charset=utf-8")] + [
    (k.encode(), v.encode()) for k, v in SSE_HEADERS.items()
]
# A streamed request whose model is not ready after this long gets its SSE headers and a first
# ": loading" comment; a ready model answers well within it, keeping the runtime's own status.
LOADING_NOTICE_AFTER_S = 0.25


def new_session(connect_timeout_s: float, read_timeout_s: float) -> aiohttp.ClientSession:
    """One keep-alive session for all runtimes: no connection ceiling (a per-model bound lives in
    the runtime, 429), an explicit wait for a connection, and bytes left as the runtime sent them."""
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=60, enable_cleanup_closed=False)
    timeout = aiohttp.ClientTimeout(total=None, connect=connect_timeout_s, sock_read=read_timeout_s)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept-Encoding"),
        raise_for_status=False,
    )


class Proxy:
    """Forwards one request for a model that the control plane makes ready."""

    def __init__(
        self, control: ControlPlane, session: aiohttp.ClientSession, queue_timeout_s: float, keepalive_s: float
    ) -> None:
        self.control = control
        self.session = session
        self.queue_timeout_s = queue_timeout_s
        self.keepalive_s = keepalive_s

    async def forward(self, model: str, path: str, body: bytes, stream: bool, receive: Receive, send: Send) -> int:
        """Answer the request through ``send``; the HTTP status sent. Raises LlmiError before
        anything was sent (the caller answers it), ClientGone when the client left."""
        if stream:
            return await self._forward_stream(model, path, body, receive, send)
        # One watcher for the whole exchange: a task per await was a tenth of the CPU per request.
        upstream, content = await unless_client_leaves(receive, self._exchange(model, path, body))
        if upstream.status >= 400:
            content = openai_error(content, upstream.status)  # vLLM's own error bodies, in our envelope
        headers = _relayed(upstream)
        headers.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        await send({"type": "http.response.body", "body": content})
        return upstream.status

    async def _exchange(self, model: str, path: str, body: bytes) -> tuple[aiohttp.ClientResponse, bytes]:
        """Send the request and read the whole answer, holding the lease until it is read."""
        lease, upstream = await self._open(model, path, body)
        done = False
        try:
            content = await upstream.read()
            done = True
        except aiohttp.ClientError as exc:
            raise UpstreamFailed(f"The runtime of '{model}' failed mid-answer: {type(exc).__name__}.") from None
        finally:
            lease.release()  # first, and synchronous: nothing may skip it (a cancel included)
            if not done:
                upstream.close()  # tells the runtime its client left
        return upstream, content

    async def _open(self, model: str, path: str, body: bytes) -> tuple[Lease, aiohttp.ClientResponse]:
        """Acquire a lease and send the request; the response once its headers have arrived."""
        for attempt in (1, 2):
            lease = await self.control.acquire(model, self.queue_timeout_s)
            try:
                upstream = await self.session.post(f"{lease.url}{path}", data=body, headers=JSON_HEADERS)
            except aiohttp.ClientConnectorError:
                # Nothing was sent: if the runtime just died, retry once on a fresh one.
                lease.release()
                if attempt == 2 or not await self.control.forget_if_dead(model, lease.url):
                    raise UpstreamFailed(f"The runtime of '{model}' is not reachable.") from None
                continue
            except TimeoutError:  # aiohttp's read timeout is one too: name the limit
                lease.release()
                limit = self.session.timeout.sock_read
                raise UpstreamFailed(
                    f"The runtime of '{model}' did not answer within {limit} s (LLM_REQUEST_TIMEOUT_S)."
                ) from None
            except aiohttp.ClientError as exc:
                lease.release()
                raise UpstreamFailed(f"The runtime of '{model}' did not answer: {type(exc).__name__}.") from None
            except BaseException:
                lease.release()
                raise
            return lease, upstream
        raise AssertionError("unreachable")

    async def _forward_stream(self, model: str, path: str, body: bytes, receive: Receive, send: Send) -> int:
        opening = asyncio.ensure_future(self._open(model, path, body))
        gone = asyncio.ensure_future(wait_for_disconnect(receive))
        started = False
        try:
            done, _ = await asyncio.wait({opening, gone}, timeout=LOADING_NOTICE_AFTER_S, return_when="FIRST_COMPLETED")
            while not done:
                # Still loading: headers now, then a comment line every keepalive_s.
                if not started:
                    await send({"type": "http.response.start", "status": 200, "headers": list(_SSE_RAW)})
                    started = True
                await send(
                    {"type": "http.response.body", "body": b": loading " + model.encode() + b"\n\n", "more_body": True}
                )
                done, _ = await asyncio.wait({opening, gone}, timeout=self.keepalive_s, return_when="FIRST_COMPLETED")
            if opening not in done:
                raise ClientGone
        except BaseException:
            _discard(opening)
            gone.cancel()
            raise
        try:
            lease, upstream = opening.result()
        except LlmiError as exc:
            gone.cancel()
            if not started:
                raise
            await _send_sse_error(send, exc)
            return exc.status
        try:
            return await self._relay(model, lease, upstream, gone, started, send)
        finally:
            gone.cancel()

    async def _relay(
        self,
        model: str,
        lease: Lease,
        upstream: aiohttp.ClientResponse,
        gone: asyncio.Future[None],
        started: bool,
        send: Send,
    ) -> int:
        sse = upstream.headers.get("Content-Type", "").startswith("text/event-stream")
        pump = asyncio.ensure_future(self._pump(model, upstream, sse, started, send))
        either: set[asyncio.Future[Any]] = {pump, gone}
        try:
            await asyncio.wait(either, return_when="FIRST_COMPLETED")
        finally:
            lease.release()  # first, and synchronous
            if not pump.done():
                pump.cancel()
                upstream.close()  # the runtime sees its client leave and stops generating
        if not pump.done() or pump.cancelled():
            await asyncio.wait({pump})
            raise ClientGone
        return pump.result()

    async def _pump(self, model: str, upstream: aiohttp.ClientResponse, sse: bool, started: bool, send: Send) -> int:
        if started and not (sse and upstream.status == 200):
            # Headers are already out: the runtime's refusal becomes an SSE error event.
            content = openai_error(await upstream.read(), upstream.status)
            await send({"type": "http.response.body", "body": b"data: " + content.strip() + b"\n\n" + SSE_DONE})
            return upstream.status
        if not sse and upstream.status >= 400:  # a refusal before any byte of a stream: a plain error
            content = openai_error(await upstream.read(), upstream.status)
            headers = [*_relayed(upstream), (b"content-length", str(len(content)).encode())]
            await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
            await send({"type": "http.response.body", "body": content})
            return upstream.status
        if not started:
            headers = _relayed(upstream)
            if sse:
                headers += [(k, v) for k, v in _SSE_RAW[1:] if all(k != h for h, _ in headers)]
            await send({"type": "http.response.start", "status": upstream.status, "headers": headers})
        try:
            async for chunk in upstream.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("stream from %s broke: %s", model, exc)
            await send({"type": "http.response.body", "body": broken_stream_events(model)})
            return UpstreamFailed.status
        await send({"type": "http.response.body", "body": b""})
        return upstream.status


def broken_stream_events(model: str) -> bytes:
    """What ends a stream that ``model``'s runtime broke off: an error event, then [DONE]."""
    error = UpstreamFailed(f"The runtime of '{model}' failed mid-stream.")
    return b"\n\n" + sse_event(error.body()) + SSE_DONE


def _relayed(upstream: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    return [(k.lower(), v) for k, v in upstream.raw_headers if k.lower().decode() not in HOP_HEADERS]


async def _send_sse_error(send: Send, exc: LlmiError) -> None:
    await send({"type": "http.response.body", "body": sse_event(exc.body()) + SSE_DONE})


def _discard(task: asyncio.Future[tuple[Lease, aiohttp.ClientResponse]]) -> None:
    """Withdraw an acquire that nobody waits for; a lease it got anyway is released at once."""
    if not task.done():
        task.cancel()
    task.add_done_callback(_release_orphan)


def _release_orphan(task: asyncio.Future[tuple[Lease, aiohttp.ClientResponse]]) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    lease, upstream = task.result()
    lease.release()
    upstream.close()


Forwarder = Callable[[str, str, bytes, bool, Receive, Send], Awaitable[int]]
