"""The router app: wires the public paths to the proxy, the model list, health and metrics.

Public paths are an explicit list. A body is checked strictly with the runtime's own protocol
models before anything that could cost a load; for a model that is already ready only the
routing fields are read, since the runtime validates the rest anyway.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.routing import Route

from llmi import __version__
from llmi.auth import ApiKeyMiddleware, ApiKeys, load_keys
from llmi.errors import BadRequest, ClientGone, LlmiError, ModelNotFound, ResponseNotFound, WrongModelType
from llmi.limits import check_limits, check_pass_through_limits
from llmi.modeltypes import ENDPOINTS, RERANK_PATHS, ModelType
from llmi.names import valid_name
from llmi.openapi import add_operations
from llmi.protocol.chat import ChatCompletionRequest, CompletionRequest
from llmi.protocol.common import ErrorResponse
from llmi.protocol.embeddings import EmbeddingRequest
from llmi.protocol.models import ModelCard, ModelList
from llmi.protocol.rerank import RerankRequest, TeiRerankRequest, is_tei
from llmi.protocol.responses import ResponseRequest
from llmi.protocol.vision import (
    MultimodalEncodeRequest,
    MultimodalMatchRequest,
    VisionEncodeRequest,
    VisionSimilarityRequest,
)
from llmi.settings import Settings
from llmi.web import BodyLimitMiddleware, HeadAsGet, Receive, Scope, Send, install_error_handlers, parse_json, send_json
from llmi_router.metrics import RouterMetrics
from llmi_router.operations import install_operations
from llmi_router.page import install_page
from llmi_router.ports import ControlPlane, EngineProbe, ReadinessProbe
from llmi_router.proxy import Proxy, new_session

ROUTES: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/responses": ResponseRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/rerank": RerankRequest,
    "/v2/rerank": RerankRequest,
    "/rerank": RerankRequest,  # or TeiRerankRequest, by its fields
    "/v1/vision/encode": VisionEncodeRequest,
    "/v1/vision/similarity": VisionSimilarityRequest,
    "/v1/multimodal/encode": MultimodalEncodeRequest,
    "/v1/multimodal/match": MultimodalMatchRequest,
}
EMPTY_HINT = "No models yet: add a Hugging Face model folder to the models folder, or run `llmi pull <repo id>`."


_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown model", "model": ErrorResponse}}


class RouteFields(BaseModel):
    """What routing needs from a body: everything else is the runtime's to read."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = None
    stream: bool = False


class Gateway:
    """Turns one public POST into a forwarded request: read, route, check, forward, count."""

    def __init__(self, control: ControlPlane, settings: Settings, metrics: RouterMetrics) -> None:
        self.control = control
        self.settings = settings
        self.metrics = metrics
        self.probe = control if isinstance(control, ReadinessProbe) else None
        self.engines = control if isinstance(control, EngineProbe) else None
        self.proxy: Proxy | None = None

    async def start(self) -> None:
        session = new_session(self.settings.upstream_connect_timeout_s, self.settings.request_timeout_s)
        self.proxy = Proxy(self.control, session, self.settings.queue_timeout_s, self.settings.sse_keepalive_s)

    async def close(self) -> None:
        if self.proxy is not None:
            await self.proxy.session.close()

    async def handle(self, path: str, receive: Receive, send: Send) -> None:
        t0 = time.perf_counter()
        model, status = "-", 500
        try:
            body = await _read_body(receive)
            model, stream = self.route(path, body)
            assert self.proxy is not None, "the gateway serves only between start() and close()"
            status = await self.proxy.forward(model, path, body, stream, receive, send)
        except LlmiError as exc:
            status = exc.status
            await send_json(send, exc)
        except ClientGone:
            status = 499  # nobody is listening: nothing to send or log
        finally:
            self.count(model, path, status, t0)

    def count(self, model: str, path: str, status: int, t0: float) -> None:
        """One request in the metrics: its model (when known), path, status and latency."""
        self.count_known(model if self.control.model_type(model) else "-", path, status, t0)

    def count_known(self, model: str, path: str, status: int, t0: float) -> None:
        """``count`` for a model known to be in the catalog (the front's fast path), or "-"."""
        self.metrics.answered(model, path, status, time.perf_counter() - t0)

    def route(self, path: str, body: bytes) -> tuple[str, bool]:
        """The model and whether to stream; a 400/404 before anything costs a load."""
        try:
            fields = RouteFields.model_validate_json(body)
        except ValidationError:
            fields = None
        model = fields.model if fields is not None else None
        if model is not None and not valid_name(model):
            raise ModelNotFound(model)  # path-like, overlong or odd characters: never looked up
        if fields is not None and model is None and path in RERANK_PATHS:
            model = self.sole_reranker()
        if fields is None or model is None or not self.passes_through(model):
            # The strict check, and the limits, before a load can start.
            parsed = parse_json(body, self.request_model(path, body))
            model = getattr(parsed, "model", None) or model or self.sole_reranker()
            check_limits(parsed, self.settings)
            fields = RouteFields(model=model, stream=bool(getattr(parsed, "stream", False)))
        elif self.vllm_serves(model):
            # vLLM validates the rest for itself, but knows nothing of llmi's limits (and a load
            # may come first): they are checked here, ready or not.
            check_pass_through_limits(body, self.settings)
        assert model is not None
        self.check_endpoint(model, path)
        return model, fields.stream

    def passes_through(self, model: str) -> bool:
        """The runtime validates for itself: the model is ready (no load can follow), or vLLM serves
        it (it honours fields the transformers engine refuses: tools, logprobs, n, response_format)."""
        return (self.probe is not None and self.probe.is_ready(model)) or self.vllm_serves(model)

    def vllm_serves(self, model: str) -> bool:
        return self.engines is not None and self.engines.engine(model) == "vllm"

    def request_model(self, path: str, body: bytes) -> type[BaseModel]:
        if path != "/rerank":
            return ROUTES[path]
        try:
            decoded = json.loads(body)
        except ValueError:
            return RerankRequest  # its parse error names the problem
        return TeiRerankRequest if isinstance(decoded, dict) and is_tei(decoded) else RerankRequest

    def sole_reranker(self) -> str:
        """TEI clients name no model: the one reranker, when there is exactly one."""
        rerankers = [c.id for c in self.control.describe() if c.type == ModelType.RERANKER]
        if len(rerankers) != 1:
            raise BadRequest(
                f"model is required: {len(rerankers)} rerankers are available.", param="model", code="model_required"
            )
        return rerankers[0]

    def serves(self, model: str, path: str) -> bool:
        """Whether ``model``, known to be ready (so its name came from the catalog), serves ``path``."""
        kind = self.control.model_type(model)
        return kind is not None and path in _PATHS_OF[kind]

    def check_endpoint(self, model: str, path: str) -> None:
        """404 for an unknown model, 400 when its type does not serve ``path``."""
        kind = self.control.model_type(model) if valid_name(model) else None
        if kind is None:
            raise ModelNotFound(model)
        if path not in ENDPOINTS[ModelType(kind)]:
            raise WrongModelType(model, kind, path)


# The paths each type serves, by the type's name (``model_type`` gives a str: ModelType(...) on
# every request showed in the fast path's profile).
_PATHS_OF: dict[str, frozenset[str]] = {str(kind): frozenset(paths) for kind, paths in ENDPOINTS.items()}


class ProxyEndpoint:
    """A raw ASGI endpoint for one public path (no request objects on the hot path)."""

    def __init__(self, path: str, gateway: Gateway) -> None:
        self.path = path
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.gateway.handle(self.path, receive, send)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def build_router_app(
    control: ControlPlane,
    settings: Settings,
    metrics: RouterMetrics,
    background: Callable[[], Coroutine[Any, Any, None]] | None = None,  # create_task wants a coroutine
    startup: Callable[[], Awaitable[None]] | None = None,
    empty_hint: str = EMPTY_HINT,
) -> FastAPI:
    """The router app. ``startup`` runs before the first request is accepted; ``background``
    runs for the app's lifetime (catalog rescans, idle reaping)."""
    gateway = Gateway(control, settings, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        if startup is not None:
            await startup()
        task = asyncio.create_task(background()) if background is not None else None
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
            await control.close()
            await gateway.close()

    app = FastAPI(
        title="llmi",
        version=__version__,
        lifespan=lifespan,
        description="One OpenAI-compatible endpoint for many local models; a model is loaded when named.",
    )
    install_error_handlers(app)
    for path in ROUTES:
        app.router.routes.append(Route(path, ProxyEndpoint(path, gateway), methods=["POST"]))

    @app.get("/v1/models", operation_id="listModels", summary="Models and their state", tags=["models"])
    async def list_models() -> ModelList:
        return ModelList(data=control.describe())

    @app.get(
        "/v1/models/{model:path}",
        operation_id="retrieveModel",
        summary="One model",
        tags=["models"],
        responses=_NOT_FOUND,
    )
    async def get_model(model: str, request: Request) -> ModelCard:
        # Starlette's route pattern ends in "$", which also matches before a final newline and
        # drops it from the parameter: read the name from the path itself.
        model = request.scope["path"].removeprefix("/v1/models/")
        if not valid_name(model):
            raise ModelNotFound(model)
        for card in control.describe():
            if card.id == model:
                return card
        raise ModelNotFound(model)

    _install_no_stored_responses(app)

    @app.get("/v1/health", operation_id="health", summary="Memory, states and problems", tags=["meta"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, **control.health()}

    @app.get("/healthz", operation_id="healthz", summary="Liveness", tags=["meta"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", operation_id="readyz", summary="Readiness", tags=["meta"])
    async def readyz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", operation_id="metrics", summary="Prometheus metrics", tags=["meta"], response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    keys = load_keys(settings.api_keys, settings.api_keys_file)
    install_operations(app, control, settings)
    install_page(app, control, empty_hint, locked=bool(keys))
    _document(app, list(ROUTES))
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes)
    app.add_middleware(HeadAsGet)
    # Outermost: an unauthorised request costs no parse and no load.
    open_paths = {"/", *(["/metrics"] if settings.metrics_open else [])}
    app.add_middleware(ApiKeyMiddleware, keys=keys, open_paths=open_paths)
    app.state.gateway = gateway  # the front door routes ready models past the app (serve_app)
    app.state.keys = ApiKeys(keys)
    return app


def _install_no_stored_responses(app: FastAPI) -> None:
    """What the SDK's ``responses.retrieve``, ``delete`` and ``input_items.list`` call: llmi keeps no
    responses, so each is a 404 that says so (and not "Invalid URL")."""

    async def no_response(response_id: str) -> ErrorResponse:
        raise ResponseNotFound(response_id)

    stored = "/v1/responses/{response_id}"
    for method, path, operation_id, summary in (
        ("GET", stored, "getResponse", "A stored response (llmi stores none)"),
        ("DELETE", stored, "deleteResponse", "Delete a stored response (llmi stores none)"),
        ("GET", f"{stored}/input_items", "listInputItems", "A stored response's input (llmi stores none)"),
    ):
        app.add_api_route(
            path,
            no_response,
            methods=[method],
            operation_id=operation_id,
            summary=summary,
            tags=["responses"],
            status_code=404,
            response_description="Always: llmi keeps no responses",
        )


def _document(app: FastAPI, paths: list[str]) -> None:
    """FastAPI's description of the GET routes plus the protocol's POST operations."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = add_operations(build(), paths)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def serve_app(app: FastAPI, settings: Settings) -> int:
    """Run a router app on LLM_HOST:LLM_PORT until SIGINT/SIGTERM, draining in-flight requests.

    The front door (``llmi_router.front``) owns the public port; the app itself listens on a
    private Unix socket behind it. httptools and uvloop throughout: pure-Python h11 parsing was
    a fifth of the router's CPU per request, the ASGI stack and an HTTP client most of the rest."""
    from llmi_router.serving import run  # it imports this module

    return run(app, settings)
