"""Parking: a GPU runtime moves its weights to host memory and back, instead of being stopped.

Why: waking a parked model is a host-to-device copy (tens of milliseconds for a small model),
while a cold start re-imports the libraries and reads the weights again. What a parked
process still holds on the GPU (its CUDA context, allocator residue) stays in its measured
memory, so the supervisor can weigh parking against stopping.

Only ``gpu`` placements park: a ``cpu`` model has nothing to free on a device, and an
``offload`` model is spread over devices by accelerate's hooks, which ``Module.to`` would break.
``Parker`` is the one owner of the ready <-> parked transitions of ``RuntimeState.phase``;
the weights move on the model worker thread, which owns the model.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from llmi.errors import Conflict, Unavailable
from llmi_runtime.memory import MemoryReport
from llmi_runtime.state import Phase, RuntimeState

log = logging.getLogger("llmi.runtime")


class Device(Protocol):
    """Moves modules between devices and frees the device allocator's cache."""

    def move(self, module: Any, target: str) -> None: ...

    def free_cache(self) -> None: ...


class TorchDevice:
    def move(self, module: Any, target: str) -> None:
        module.to(target)  # nn.Module.to moves parameters and buffers in place

    def free_cache(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()


def park_refusal(phase: Phase, placement: str | None, busy: int) -> str | None:
    """Why this runtime cannot park now, or None when it can."""
    if phase is not Phase.READY:
        return f"the model is {phase.value}, only a ready model can be parked"
    if placement != "gpu":
        where = "on the CPU" if placement == "cpu" else f"with placement {placement}"
        return f"the model runs {where}; only a GPU placement can be parked (there is no device memory to free)"
    if busy:
        return f"the model is busy ({busy} requests running or waiting); park it once it is idle"
    return None


def park_engine(engine: Any, device: Device) -> None:
    """Weights to host memory, then the allocator's cached blocks back to the driver."""
    device.move(engine.model, "cpu")
    device.free_cache()


def wake_engine(engine: Any, device: Device) -> None:
    """Weights back to the engine's device; on failure (out of memory) they stay in host memory."""
    try:
        device.move(engine.model, str(engine.device))
    except Exception:
        device.move(engine.model, "cpu")
        device.free_cache()
        raise


class Parker:
    """Parks and wakes the runtime's model, one operation at a time."""

    def __init__(self, state: RuntimeState, device: Device | None = None) -> None:
        self.state = state
        self.device: Device = device or TorchDevice()
        self._lock = asyncio.Lock()

    async def park(self) -> MemoryReport:
        async with self._lock:
            state = self.state
            if state.phase is Phase.PARKED:
                return state.probe.read()
            placement = getattr(state.engine, "placement", None)
            refusal = park_refusal(state.phase, placement, sum(state.worker.load().values()))
            if refusal:
                raise Conflict(f"Cannot park '{state.name}': {refusal}.", code="cannot_park")
            state.phase = Phase.PARKED  # from here new requests get 503 + Retry-After
            engine = state.engine
            try:
                await state.worker.run(lambda: park_engine(engine, self.device))
            except Exception as exc:
                log.exception("parking %s failed", state.name)
                await self._restore(engine)
                raise Unavailable(f"Parking '{state.name}' failed: {type(exc).__name__}.", code="park_failed") from None
            log.info("parked %s in host memory", state.name)
            return state.probe.read()

    async def wake(self) -> MemoryReport:
        async with self._lock:
            state = self.state
            if state.phase is Phase.READY:
                return state.probe.read()
            if state.phase is not Phase.PARKED:
                raise Conflict(f"Cannot wake '{state.name}': the model is {state.phase.value}.", code="cannot_wake")
            engine = state.engine
            try:
                await state.worker.run(lambda: wake_engine(engine, self.device))
            except Exception as exc:
                log.warning("waking %s failed: %s", state.name, exc)
                raise Unavailable(
                    f"Waking '{state.name}' failed ({type(exc).__name__}); it stays parked.",
                    retry_after=5,
                    code="wake_failed",
                ) from None
            state.phase = Phase.READY
            log.info("woke %s", state.name)
            return state.probe.read()

    async def _restore(self, engine: Any) -> None:
        """After a failed park: back to the device and ready, or parked if even that fails."""
        try:
            await self.state.worker.run(lambda: wake_engine(engine, self.device))
        except Exception:
            log.exception("%s stays parked: its weights could not go back to the device", self.state.name)
            return
        self.state.phase = Phase.READY
