"""Runtime admin endpoints the supervisor calls: park the model in host memory and wake it.

Not public: the router forwards only its allowlisted API paths, so clients never reach these.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llmi_runtime.api.deps import state_of
from llmi_runtime.memory import MemoryReport
from llmi_runtime.parking import Parker

router = APIRouter()


def parker_of(request: Request) -> Parker:
    parker: Parker = request.app.state.parker
    return parker


def _answer(request: Request, report: MemoryReport) -> JSONResponse:
    state = state_of(request)
    return JSONResponse({"model": state.name, "state": state.phase.value, "memory": report.as_json()})


@router.post("/admin/park")
async def park(request: Request) -> JSONResponse:
    """Weights to host memory (GPU placement only; 409 otherwise); requests get 503 until woken."""
    return _answer(request, await parker_of(request).park())


@router.post("/admin/wake")
async def wake(request: Request) -> JSONResponse:
    """Weights back to the GPU; the model serves again."""
    return _answer(request, await parker_of(request).wake())
