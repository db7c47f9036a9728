"""build_app(): the runtime's one place where routes, limits and error handlers meet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from llmi import __version__
from llmi.modeltypes import ENDPOINTS
from llmi.openapi import add_operations
from llmi.web import ASGIApp, BodyLimitMiddleware, HeadAsGet, Message, Receive, Scope, Send, install_error_handlers
from llmi_runtime.api import admin, embeddings, meta, rerank, responses, text, vision
from llmi_runtime.parking import Parker
from llmi_runtime.state import RuntimeState

QUIET = {"/healthz", "/readyz", "/metrics", "/v1/health", "/admin/park", "/admin/wake"}
API_PATHS = {path for paths in ENDPOINTS.values() for path in paths} | {"/v1/models"}


class MetricsMiddleware:
    """Counts requests by endpoint and status and times them to the last byte (pure ASGI, so
    streams pass through untouched and errors keep their own handlers)."""

    def __init__(self, app: ASGIApp, state: RuntimeState, paths: set[str]) -> None:
        self.app = app
        self.state = state
        self.paths = paths - QUIET

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in QUIET:
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.paths else "other"
        status = 500
        t0 = time.perf_counter()

        async def observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed)
        finally:
            self.state.metrics.requests.labels(endpoint, str(status)).inc()
            self.state.metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)


def build_app(state: RuntimeState, on_load_failure: Callable[[], None] | None = None) -> FastAPI:
    """The runtime app; the model starts loading when the app starts serving."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        async def load() -> None:
            await state.load()
            if state.error and on_load_failure is not None:
                on_load_failure()

        task = asyncio.create_task(load())
        try:
            yield
        finally:
            task.cancel()
            state.close()

    app = FastAPI(title="llmi runtime", version=__version__, lifespan=lifespan)
    app.state.runtime = state
    app.state.parker = Parker(state)
    for module in (text, responses, embeddings, rerank, vision, meta, admin):
        app.include_router(module.router)
    install_error_handlers(app)

    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_operations(build(), ENDPOINTS[state.model_type])
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(state.admission.middleware, paths=frozenset(ENDPOINTS[state.model_type]))
    app.add_middleware(MetricsMiddleware, state=state, paths=API_PATHS)
    app.add_middleware(BodyLimitMiddleware, limit=state.settings.max_request_bytes)
    app.add_middleware(HeadAsGet)
    return app
