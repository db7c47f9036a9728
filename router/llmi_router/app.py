"""The router: validate, make the model ready, forward unchanged, stream back.

Public paths are an explicit list; bodies are validated with the same protocol models as the
runtime, so a malformed request never costs a model load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from llmi import __version__
from llmi.auth import ApiKeyMiddleware, load_keys
from llmi.errors import BadRequest, LlmiError, ModelNotFound, UpstreamFailed
from llmi.modeltypes import ENDPOINTS, ModelType
from llmi.protocol.chat import ChatCompletionRequest, CompletionRequest
from llmi.protocol.embeddings import EmbeddingRequest
from llmi.protocol.rerank import RerankRequest
from llmi.protocol.vision import (
    MultimodalEncodeRequest,
    MultimodalMatchRequest,
    VisionEncodeRequest,
    VisionSimilarityRequest,
)
from llmi.settings import Settings
from llmi.web import (
    SSE_DONE,
    BodyLimitMiddleware,
    install_error_handlers,
    parse_body,
    sse_event,
    unless_client_leaves,
)
from llmi_router.metrics import RouterMetrics
from llmi_router.operations import install_operations
from llmi_router.page import install_page
from llmi_router.ports import ControlPlane

log = logging.getLogger("llmi.router")

ROUTES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/rerank": RerankRequest,
    "/v1/vision/encode": VisionEncodeRequest,
    "/v1/vision/similarity": VisionSimilarityRequest,
    "/v1/multimodal/encode": MultimodalEncodeRequest,
    "/v1/multimodal/match": MultimodalMatchRequest,
}
EMPTY_HINT = "No models yet: add a Hugging Face model folder to the models folder, or run `llmi pull <repo id>`."
HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "server", "date"}


def build_router_app(
    control: ControlPlane,
    settings: Settings,
    metrics: RouterMetrics,
    background: Callable[[], Awaitable[None]] | None = None,
    startup: Callable[[], Awaitable[None]] | None = None,
    empty_hint: str = EMPTY_HINT,
) -> FastAPI:
    """The router app. ``startup`` runs before the first request is accepted; ``background``
    runs for the app's lifetime (catalog rescans, idle reaping)."""
    client = httpx.AsyncClient(timeout=httpx.Timeout(settings.request_timeout_s, connect=10), http2=False)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if startup is not None:
            await startup()
        task = asyncio.create_task(background()) if background is not None else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            await control.close()
            await client.aclose()

    app = FastAPI(title="llmi", version=__version__, lifespan=lifespan)
    install_error_handlers(app)

    def make_handler(path: str, model_cls: type[BaseModel]) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            t0 = time.perf_counter()
            model, status = "-", 500
            try:
                parsed = await parse_body(request, model_cls)
                model = parsed.model  # type: ignore[attr-defined]
                check_endpoint(control, model, path)
                response = await _forward(request, path, model, bool(getattr(parsed, "stream", False)))
                status = response.status_code
                return response
            except LlmiError as exc:
                status = exc.status
                raise
            finally:
                known = model if control.model_type(model) else "-"
                metrics.requests.labels(known, path, str(status)).inc()
                metrics.latency.labels(known, path).observe(time.perf_counter() - t0)

        return handler

    async def _forward(request: Request, path: str, model: str, stream: bool) -> Response:
        body = await request.body()
        for attempt in (1, 2):
            lease = await control.acquire(model, settings.queue_timeout_s)
            try:
                upstream = await client.send(
                    client.build_request(
                        "POST", f"{lease.url}{path}", content=body, headers={"content-type": "application/json"}
                    ),
                    stream=True,
                )
                break
            except httpx.ConnectError:
                # Nothing was sent: if the runtime just died, retry once on a fresh one.
                lease.release()
                if attempt == 2 or not await control.forget_if_dead(model, lease.url):
                    raise UpstreamFailed(f"The runtime of '{model}' is not reachable.") from None
            except httpx.HTTPError as exc:
                lease.release()
                raise UpstreamFailed(f"The runtime of '{model}' did not answer: {type(exc).__name__}.") from None
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
        if upstream.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(
                _relay_stream(upstream, lease.release, model), status_code=upstream.status_code, headers=headers
            )
        try:
            content = await unless_client_leaves(request, upstream.aread())
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"The runtime of '{model}' failed mid-answer: {type(exc).__name__}.") from None
        finally:
            await upstream.aclose()
            lease.release()
        return Response(content, status_code=upstream.status_code, headers=headers)

    async def _relay_stream(upstream: httpx.Response, release: Callable[[], None], model: str) -> AsyncIterator[bytes]:
        """Pass SSE bytes through as they come; a runtime that dies mid-stream ends it with an
        error event instead of a silent cut."""
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as exc:
            log.warning("stream from %s broke: %s", model, exc)
            error = UpstreamFailed(f"The runtime of '{model}' failed mid-stream.")
            yield b"\n\n" + sse_event(error.body()) + SSE_DONE
        finally:
            await upstream.aclose()
            release()

    def check_endpoint(control: ControlPlane, model: str, path: str) -> None:
        """404 for an unknown model, 400 when its type does not serve ``path``."""
        kind = control.model_type(model)
        if kind is None:
            raise ModelNotFound(model)
        if path not in ENDPOINTS[ModelType(kind)]:
            raise BadRequest(
                f"Model '{model}' is a {kind} model and does not serve {path}.", param="model", code="wrong_model_type"
            )

    for path, model_cls in ROUTES.items():
        app.add_api_route(path, make_handler(path, model_cls), methods=["POST"], include_in_schema=True)

    @app.get("/v1/models")
    async def list_models() -> JSONResponse:
        cards = [card.model_dump() for card in control.describe()]
        return JSONResponse({"object": "list", "data": cards})

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> JSONResponse:
        for card in control.describe():
            if card.id == model:
                return JSONResponse(card.model_dump())
        raise ModelNotFound(model)

    @app.get("/v1/health")
    async def health() -> JSONResponse:
        body: dict[str, Any] = {"status": "ok", "version": __version__, **control.health()}
        return JSONResponse(body)

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    keys = load_keys(settings.api_keys, settings.api_keys_file)
    install_operations(app, control, settings)
    install_page(app, control, empty_hint, locked=bool(keys))
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes)
    # Outermost: an unauthorised request costs no parse and no load.
    app.add_middleware(ApiKeyMiddleware, keys=keys, open_paths={"/", *(["/metrics"] if settings.metrics_open else [])})
    return app


def serve_app(app: FastAPI, settings: Settings) -> None:
    """Run a router app on LLM_HOST:LLM_PORT until SIGINT/SIGTERM, draining in-flight requests."""
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        timeout_graceful_shutdown=int(settings.drain_timeout_s),
    )
