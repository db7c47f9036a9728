"""Issue 12's faults, seen by a client: a runtime that dies at load, dies during a request or
hangs at load is answered with the envelope, shown in /v1/models (failed, with the reason) and in
/metrics, retried only after its backoff, and never blocks another model.

The real supervisor and router, with the in-memory launcher of tests/supervisor_fakes.py (time
injected) and fake runtimes on real sockets: one that answers, one that drops every connection.
The supervisor's own tests (tests/test_supervisor.py) cover the same faults state by state; the
real-process versions are in tests/test_serve_faults.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmi.settings import Settings
from llmi_router.app import build_router_app
from llmi_router.embedded.launch import RuntimeSpec
from llmi_router.embedded.supervisor import Supervisor
from tests.supervisor_fakes import Clock, FakeHandle, FakeLauncher, entry, make, state_is
from tests.test_proxy import serving

aio = pytest.mark.asyncio(loop_scope="session")
BODY = {"input": "x"}


def _answering() -> Starlette:
    async def embed(request: Request) -> Response:
        await request.body()
        return JSONResponse({"object": "list", "data": [], "model": "m", "usage": {}})

    return Starlette(routes=[Route("/v1/embeddings", embed, methods=["POST"])])


@asynccontextmanager
async def dropping(on_request: Any, hold: bool = False) -> AsyncIterator[str]:
    """A runtime that reads a request, then dies without answering (``on_request`` first), or
    with ``hold`` keeps the connection open and never answers."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        on_request()
        if hold:
            await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class World:
    client: httpx.AsyncClient
    sup: Supervisor
    launcher: FakeLauncher
    clock: Clock
    urls: dict[str, str]  # where each model's next runtime listens

    async def post(self, model: str) -> httpx.Response:
        return await self.client.post("/v1/embeddings", json={"model": model, **BODY})

    async def card(self, model: str) -> dict[str, Any]:
        cards = {c["id"]: c for c in (await self.client.get("/v1/models")).json()["data"]}
        return cards[model]

    async def healthy(self) -> None:
        assert (await self.client.get("/healthz")).status_code == 200
        r = await self.post("good")
        assert r.status_code == 200, r.text


@asynccontextmanager
async def world(queue_timeout_s: float = 0.5, request_timeout_s: float = 600, **settings: Any) -> AsyncIterator[World]:
    sup, launcher, clock = await make(
        entry("good"), entry("bad"), entry("hang"), entry("dies"), budget_gib=8, load_timeout_s=60, **settings
    )
    urls: dict[str, str] = {}
    start = launcher.start

    async def start_at_url(spec: RuntimeSpec) -> FakeHandle:
        handle = await start(spec)
        handle.url = urls["answering"] if spec.name not in urls else urls[spec.name]
        return handle

    launcher.start = start_at_url  # type: ignore[method-assign]
    config = Settings(_env_file=None, queue_timeout_s=queue_timeout_s, request_timeout_s=request_timeout_s)  # type: ignore[call-arg]
    router = build_router_app(sup, config, sup.metrics)
    async with serving(_answering()) as answering, serving(router) as url:
        urls["answering"] = answering
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield World(client, sup, launcher, clock, urls)


def check_envelope(r: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["type"] == "server_error"
    if status == 503:
        assert int(r.headers["retry-after"]) >= 1
    return error


@aio
async def test_a_runtime_that_dies_at_load_is_failed_with_its_reason_and_retried_after_backoff() -> None:
    async with world() as w:
        w.launcher.fail["bad"] = "runtime could not load the model: broken weights"
        error = check_envelope(await w.post("bad"), 503, "model_failed")
        assert "broken weights" in error["message"]
        card = await w.card("bad")
        assert card["state"] == "failed"
        assert "broken weights" in card["error"]
        assert 'llmi_model_loads_total{model="bad",result="failed"} 1.0' in (await w.client.get("/metrics")).text
        await w.healthy()
        # Within the backoff: refused again, no second start.
        check_envelope(await w.post("bad"), 503, "model_failed")
        assert w.launcher.started.count("bad") == 1
        # After it, one new try, which now loads.
        del w.launcher.fail["bad"]
        w.clock.now += 3600
        assert (await w.post("bad")).status_code == 200
        assert w.launcher.started.count("bad") == 2
        assert (await w.card("bad"))["state"] == "ready"


@aio
async def test_a_runtime_that_dies_during_a_request_is_a_502_and_restarts_on_the_next() -> None:
    async with world() as w:

        def die() -> None:
            w.launcher.handles["dies"].crash()

        async with dropping(die) as dead:
            w.urls["dies"] = dead
            error = check_envelope(await w.post("dies"), 502, "upstream_failed")
            assert "dies" in error["message"]
            await state_is(w.sup, "dies", "stopped")
            card = await w.card("dies")
            assert "goodbye" in card["error"]  # the runtime's own last words
            assert 'llmi_runtime_crashes_total{model="dies"} 1.0' in (await w.client.get("/metrics")).text
            await w.healthy()
        del w.urls["dies"]  # its next runtime answers
        w.clock.now += 3600  # past the crash backoff
        assert (await w.post("dies")).status_code == 200
        assert w.launcher.started.count("dies") == 2


@aio
async def test_a_runtime_that_hangs_at_load_never_blocks_others_and_fails_at_its_deadline() -> None:
    async with world() as w:
        w.launcher.gates["hang"] = asyncio.Event()  # never opened by itself
        waiting = asyncio.create_task(w.post("hang"))
        await state_is(w.sup, "hang", "starting")
        await w.healthy()  # another model loads and answers meanwhile
        check_envelope(await waiting, 503, "model_not_ready")  # the request's own deadline (0.5 s)
        assert (await w.card("hang"))["state"] == "loading"
        w.clock.now += 61  # past LLM_LOAD_TIMEOUT_S
        await w.sup.reap_idle()
        card = await w.card("hang")
        assert card["state"] == "failed"
        assert "not ready after 60s" in card["error"]
        assert w.launcher.handles["hang"].stopped
        check_envelope(await w.post("hang"), 503, "model_failed")
        assert w.launcher.started.count("hang") == 1  # no retry within the backoff
        await w.healthy()


@aio
async def test_a_full_queue_is_429_with_retry_after_and_the_queue_recovers() -> None:
    async with world(queue_timeout_s=60, max_queue_per_model=1) as w:
        w.launcher.gates["hang"] = gate = asyncio.Event()
        first = asyncio.create_task(w.post("hang"))
        await state_is(w.sup, "hang", "starting")
        r = await w.post("hang")  # one waits already: LLM_MAX_QUEUE_PER_MODEL=1
        assert r.status_code == 429, r.text
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert (error["type"], error["code"]) == ("rate_limit_error", "queue_full")
        assert int(r.headers["retry-after"]) >= 1
        await w.healthy()  # other models are not held up by the full queue
        gate.set()
        assert (await first).status_code == 200  # the one that waited is served
        assert (await w.post("hang")).status_code == 200


@aio
async def test_a_runtime_past_the_request_timeout_is_a_502_naming_the_limit() -> None:
    async with world(request_timeout_s=0.3) as w, dropping(lambda: None, hold=True) as silent:
        w.urls["dies"] = silent
        error = check_envelope(await w.post("dies"), 502, "upstream_failed")
        assert "LLM_REQUEST_TIMEOUT_S" in error["message"]
        assert (await w.card("dies"))["in_flight"] == 0  # its lease was returned
        await w.healthy()
