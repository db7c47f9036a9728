"""The router's data path against a fake control plane and a fake runtime, both on real sockets
in this event loop: clients that leave, loading comments, SSE headers, caps and error codes.

Every wait is on an observable event (a gate the test opens, a request the fake runtime saw),
never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llmi.errors import ModelTooLarge
from llmi.protocol.models import ModelCard
from llmi.settings import Settings
from llmi_router.app import build_router_app
from llmi_router.embedded.process import free_port
from llmi_router.metrics import RouterMetrics
from llmi_router.ports import OnceLease
from tests.control_stubs import ControlStubs
from tests.kube_fixtures import eventually

aio = pytest.mark.asyncio(loop_scope="session")
CHAT, EMBED, BIG = "chat-model", "embed-model", "huge-model"
CHAT_BODY = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}]}


@dataclass
class FakeRuntime:
    """Answers chat like a runtime; a streamed answer waits for ``token_gate`` before its first token."""

    token_gate: asyncio.Event = field(default_factory=asyncio.Event)
    seen: list[dict[str, Any]] = field(default_factory=list)
    request_arrived: asyncio.Event = field(default_factory=asyncio.Event)
    client_left: asyncio.Event = field(default_factory=asyncio.Event)
    hold_plain: bool = False

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            body = json.loads(await request.body())
            self.seen.append(body)
            self.request_arrived.set()
            if body.get("stream"):
                return StreamingResponse(self.events(), media_type="text/event-stream")
            if self.hold_plain:
                try:
                    while (await request.receive())["type"] != "http.disconnect":
                        pass
                finally:
                    self.client_left.set()
            return JSONResponse({"id": "x", "choices": []})

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])

    async def events(self) -> AsyncIterator[bytes]:
        try:
            await self.token_gate.wait()
            yield b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
            await asyncio.Event().wait()  # a generation that never ends by itself
        finally:
            self.client_left.set()


@dataclass
class FakeControl(ControlStubs):
    """A control plane whose loads finish when the test opens ``load_gate``."""

    url: str = ""
    load_gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: asyncio.Event = field(default_factory=asyncio.Event)
    withdrawn: asyncio.Event = field(default_factory=asyncio.Event)
    acquired: int = 0
    released: int = 0

    async def acquire(self, model: str, deadline_s: float) -> OnceLease:
        if model == BIG:
            raise ModelTooLarge(model, "it needs 40.0 GiB and the budget is 8.0 GiB")
        self.waiting.set()
        try:
            await self.load_gate.wait()
        except asyncio.CancelledError:
            self.withdrawn.set()
            raise
        self.acquired += 1
        return OnceLease(self.url, self._release)

    def _release(self) -> None:
        self.released += 1

    def model_type(self, model: str) -> str | None:
        return {CHAT: "chat", EMBED: "embedding", BIG: "chat"}.get(model)

    def describe(self) -> list[ModelCard]:
        return [ModelCard(id=CHAT, type="chat"), ModelCard(id=EMBED, type="embedding")]


@asynccontextmanager
async def serving(app: Any, **config: Any) -> AsyncIterator[str]:
    port = free_port()
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "on"} | config
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    task = asyncio.create_task(server.serve())
    await eventually(lambda: server.started or task.done(), what="a server to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass
class Setup:
    router: str
    control: FakeControl
    runtime: FakeRuntime
    metrics: RouterMetrics


@asynccontextmanager
async def setup(**settings: Any) -> AsyncIterator[Setup]:
    runtime, control, metrics = FakeRuntime(), FakeControl(), RouterMetrics()
    config = Settings().model_copy(update={"sse_keepalive_s": 0.05, **settings})
    async with serving(runtime.app()) as upstream, serving(build_router_app(control, config, metrics)) as router:
        control.url = upstream
        yield Setup(router, control, runtime, metrics)


@aio
@pytest.mark.parametrize("stream", [False, True])
async def test_request_abandoned_while_its_model_loads_leaves_the_queue(stream: bool) -> None:
    """Acceptance 2 (router side): the client leaves during the load; the acquire is withdrawn, no
    lease is taken and nothing reaches a runtime."""
    async with setup() as s, httpx.AsyncClient(timeout=30) as client:
        body = {**CHAT_BODY, "stream": stream}

        async def call() -> None:
            async with client.stream("POST", f"{s.router}/v1/chat/completions", json=body) as response:
                async for _ in response.aiter_raw():
                    pass

        task = asyncio.create_task(call())
        await s.control.waiting.wait()
        task.cancel()  # closes the connection: the client has left
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(s.control.withdrawn.wait(), 30)
        s.control.load_gate.set()
        assert (s.control.acquired, s.runtime.seen) == (0, [])


@aio
async def test_abandoned_plain_request_closes_the_upstream_and_releases_first() -> None:
    async with setup() as s, httpx.AsyncClient(timeout=30) as client:
        s.control.load_gate.set()
        s.runtime.hold_plain = True
        task = asyncio.create_task(client.post(f"{s.router}/v1/chat/completions", json=CHAT_BODY))
        await s.runtime.request_arrived.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(s.runtime.client_left.wait(), 30)  # the runtime saw its client go
        await eventually(lambda: s.control.released == 1, what="the lease to be released")
        text = (await client.get(f"{s.router}/metrics")).text
        assert 'llmi_requests_total{endpoint="/v1/chat/completions",model="chat-model",status="499"} 1.0' in text


@aio
async def test_abandoned_stream_stops_the_runtime_and_releases_the_lease() -> None:
    async with setup() as s, httpx.AsyncClient(timeout=30) as client:
        s.control.load_gate.set()
        s.runtime.token_gate.set()
        async with client.stream("POST", f"{s.router}/v1/chat/completions", json={**CHAT_BODY, "stream": True}) as r:
            first = await anext(r.aiter_lines())
            assert first.startswith("data: ")
        # Leaving the block closed the connection mid-stream.
        await asyncio.wait_for(s.runtime.client_left.wait(), 30)
        await eventually(lambda: s.control.released == 1, what="the lease to be released")


@aio
async def test_sse_headers_arrive_before_the_first_token() -> None:
    """Acceptance 3: the runtime holds its first token; the client already has the headers."""
    async with setup() as s, httpx.AsyncClient(timeout=30) as client:
        s.control.load_gate.set()
        async with client.stream("POST", f"{s.router}/v1/chat/completions", json={**CHAT_BODY, "stream": True}) as r:
            assert not s.runtime.token_gate.is_set()  # headers are here, no token was produced
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["cache-control"] == "no-cache"
            assert r.headers["x-accel-buffering"] == "no"
            assert "content-encoding" not in r.headers
            s.runtime.token_gate.set()
            assert (await anext(r.aiter_lines())).startswith("data: ")


@aio
async def test_loading_comments_are_sent_while_a_cold_model_loads() -> None:
    """Acceptance 3: SSE headers and ': loading' comments while the load runs, then the stream."""
    async with setup() as s, httpx.AsyncClient(timeout=30) as client:
        s.runtime.token_gate.set()
        async with client.stream("POST", f"{s.router}/v1/chat/completions", json={**CHAT_BODY, "stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["cache-control"] == "no-cache"
            lines = r.aiter_lines()
            comments = 0
            while comments < 2:  # at least two: the first, and one keep-alive
                line = await anext(lines)
                if line:
                    assert line == f": loading {CHAT}"
                    comments += 1
            s.control.load_gate.set()
            line = await anext(lines)
            while not line or line.startswith(":"):
                line = await anext(lines)
            assert json.loads(line.removeprefix("data: "))["choices"][0]["delta"]["content"] == "a"


@aio
async def test_a_model_that_can_never_fit_is_a_400_with_the_reason() -> None:
    async with setup() as s, httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{s.router}/v1/chat/completions", json={**CHAT_BODY, "model": BIG})
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["code"] == "model_too_large"
        assert "40.0 GiB" in error["message"]
        assert "retry-after" not in r.headers


@aio
async def test_max_tokens_over_the_limit_is_refused_before_a_load() -> None:
    async with setup(max_tokens_limit=100) as s, httpx.AsyncClient(timeout=30) as client:
        r = await client.post(f"{s.router}/v1/chat/completions", json={**CHAT_BODY, "max_tokens": 101})
        assert r.status_code == 400
        assert r.json()["error"] == {
            "message": "max_tokens is 101; this server allows at most 100 (LLM_MAX_TOKENS_LIMIT).",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "max_tokens_too_large",
        }
        assert not s.control.waiting.is_set()
        s.control.load_gate.set()
        ok = await client.post(f"{s.router}/v1/chat/completions", json={**CHAT_BODY, "max_tokens": 100})
        assert ok.status_code == 200


@aio
@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("POST", "/v1/nothing", 404, "Invalid URL (POST /v1/nothing)."),
        ("GET", "/v1/chat/completions", 405, "Method GET is not allowed on /v1/chat/completions."),
    ],
)
async def test_unknown_routes_have_a_null_code(method: str, path: str, status: int, message: str) -> None:
    async with setup() as s, httpx.AsyncClient(timeout=30) as client:
        r = await client.request(method, f"{s.router}{path}")
        assert r.status_code == status
        assert r.json()["error"] == {"message": message, "type": "invalid_request_error", "param": None, "code": None}


@aio
async def test_validation_messages_are_for_people() -> None:
    async with setup() as s, httpx.AsyncClient(timeout=30) as client:
        bad = await client.post(f"{s.router}/v1/chat/completions", json={**CHAT_BODY, "temperature": 3})
        assert bad.status_code == 400
        error = bad.json()["error"]
        assert error["param"] == "temperature"
        assert error["message"] == "temperature: Input should be less than or equal to 2"
        assert "{" not in error["message"]
