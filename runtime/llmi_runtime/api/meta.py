"""/v1/models, health, readiness and metrics."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmi.protocol.models import ModelCard, ModelList
from llmi_runtime.api.deps import state_of
from llmi_runtime.state import Phase

router = APIRouter()
MAX_READY_WAIT_S = 30.0


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    state = state_of(request)
    info = state.engine.info() if state.engine is not None else {}
    measured = state.probe.read().measured_bytes if state.engine is not None else None
    card = ModelCard(
        id=state.name,
        created=state.created,
        type=state.model_type.value,
        engine="transformers",
        state=state.phase.value,
        placement=info.get("placement"),
        memory_bytes=measured or state.estimated_bytes,
        memory_estimated_bytes=state.estimated_bytes,
        memory_measured_bytes=measured,
        error=state.error,
    )
    return JSONResponse(ModelList(data=[card]).model_dump())


@router.get("/v1/health")
async def health(request: Request) -> JSONResponse:
    # Off the event loop: reading the process's PSS takes 10-20 ms on 2 cores, and the router
    # asks for it the moment the model is ready, as its first request arrives.
    return JSONResponse(await asyncio.to_thread(state_of(request).health))


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """Liveness: the process answers. A loading model is alive."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request, wait: float = Query(0.0, ge=0.0)) -> JSONResponse:
    """Readiness: 200 only once the model is loaded. With ``wait`` (seconds, at most 30) a loading
    runtime answers when loading ends or the time is up, so a launcher learns of it at once
    instead of polling."""
    state = state_of(request)
    if wait and state.phase is Phase.LOADING:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.settled.wait(), min(wait, MAX_READY_WAIT_S))
    body = {"status": state.phase.value, "model": state.name}
    if state.error:
        body["error"] = state.error
    return JSONResponse(body, status_code=200 if state.phase is Phase.READY else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    return Response(generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST)
