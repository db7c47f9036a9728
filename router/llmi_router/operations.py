"""What the server is doing, and what an operator may change: `/v1/events` (SSE) and the admin
endpoints (load, unload, pin a model). Thin routes over the control plane's own operations."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from llmi.errors import LlmiError, ModelNotFound
from llmi.names import valid_name
from llmi.protocol.common import ErrorResponse
from llmi.protocol.models import ModelCard
from llmi.settings import Settings
from llmi.web import SSE_HEADERS, parse_body
from llmi_router.events import EventHub, event_json
from llmi_router.ports import ControlPlane

HEARTBEAT_S = 15.0
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"description": what, "model": ErrorResponse}
    for status, what in ((400, "Bad request"), (401, "No or a wrong API key"), (404, "Unknown model"),
                         (501, "Not offered by this control plane"), (503, "Not ready in time"))
}  # fmt: skip


class Unsupported(LlmiError):
    status = 501
    type = "invalid_request_error"
    code = "not_supported"


class PinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    pinned: bool = True


@runtime_checkable
class Operable(Protocol):
    """A control plane an operator can steer (the embedded supervisor; Kubernetes scales)."""

    events: EventHub

    async def load(self, model: str, deadline_s: float) -> ModelCard: ...

    async def unload(self, model: str) -> ModelCard: ...

    async def pin(self, model: str, pinned: bool) -> ModelCard: ...


def _operable(control: ControlPlane, model: str | None = None) -> Operable:
    if model is not None and not valid_name(model):
        raise ModelNotFound(model)  # never handed to the control plane
    if not isinstance(control, Operable):
        raise Unsupported("This control plane does not offer model operations.")
    return control


def install_operations(app: FastAPI, control: ControlPlane, settings: Settings) -> None:
    @app.get("/v1/events", summary="Model state changes as server-sent events", operation_id="events")
    async def events(request: Request) -> StreamingResponse:
        hub = _operable(control).events

        async def stream() -> AsyncIterator[bytes]:
            async with hub.subscribe() as queue:
                snapshot = {"kind": "snapshot", "models": [card.model_dump() for card in control.describe()]}
                yield _sse(snapshot)
                while not await request.is_disconnected():
                    try:
                        event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
                    except TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    yield _sse(event_json(event))

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SSE_HEADERS)

    admin: dict[str, Any] = {"tags": ["admin"], "response_model": ModelCard, "responses": ERRORS}

    @app.post("/v1/admin/models/{model:path}/load", summary="Load a model now", operation_id="loadModel", **admin)
    async def load(model: str) -> JSONResponse:
        card = await _operable(control, model).load(model, settings.queue_timeout_s)
        return JSONResponse(card.model_dump())

    @app.post("/v1/admin/models/{model:path}/unload", summary="Unload a model now", operation_id="unloadModel", **admin)
    async def unload(model: str) -> JSONResponse:
        return JSONResponse((await _operable(control, model).unload(model)).model_dump())

    @app.post(
        "/v1/admin/models/{model:path}/pin",
        summary="Pin or unpin a model",
        operation_id="pinModel",
        openapi_extra={"requestBody": {"content": {"application/json": {"schema": PinRequest.model_json_schema()}}}},
        **admin,
    )
    async def pin(model: str, request: Request) -> JSONResponse:
        body = await parse_body(request, PinRequest) if await request.body() else PinRequest()
        return JSONResponse((await _operable(control, model).pin(model, body.pinned)).model_dump())


def _sse(data: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"
