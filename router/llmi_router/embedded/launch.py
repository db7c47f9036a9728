"""What the supervisor needs from a launcher: start a runtime for a model, wait until it is
ready, stop it. The cold launcher (a fresh ``llmi runtime`` process) and warm ones implement it;
tests pass in-memory fakes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class RuntimeSpec:
    """One runtime to start: the model, where the plan put it, and the child's environment."""

    name: str
    path: Path
    model_type: str
    placement: str
    footprint_bytes: int  # of the budget
    memory_bytes: int  # the whole model (offload keeps the rest in host memory)
    env: Mapping[str, str]

    @property
    def max_gpu_memory(self) -> int | None:
        return self.footprint_bytes if self.placement == "offload" else None


class Handle(Protocol):
    """A started runtime: where it listens, a task that ends when it exits, and a way to stop it."""

    # Read-only, so that a property (the cold handle's url) or a narrower future implements them.
    @property
    def url(self) -> str: ...

    @property
    def socket(self) -> str | None:
        """A Unix socket it listens on besides ``url`` (the front relays through it), or None."""
        ...

    @property
    def exited(self) -> asyncio.Future[int] | None: ...

    def reason(self) -> str: ...

    def kill(self) -> None:
        """SIGKILL it now, without waiting for the exit (``stop`` waits)."""
        ...

    async def stop(self, grace_s: float = 10.0) -> int: ...


class Launcher(Protocol):
    async def start(self, spec: RuntimeSpec) -> Handle: ...

    async def wait_ready(self, handle: Any, deadline_s: float) -> float: ...

    async def measure(self, handle: Any) -> int | None:
        """Bytes the ready runtime really holds of the budget's kind (``memory.measured_bytes`` of
        its /v1/health: PSS on CPU, allocator plus context on a GPU); None when it cannot tell."""
        ...

    async def park(self, handle: Any) -> int | None:
        """Move the runtime's weights to host memory; returns what it still holds on the GPU."""
        ...

    async def wake(self, handle: Any) -> None:
        """Move a parked runtime's weights back to the GPU."""
        ...

    def reserved_bytes(self) -> int:
        """Memory the launcher itself holds that the budget must count (a pre-imported parent or
        a spare runtime); 0 for the cold launcher."""
        ...

    def on_shift(self, notify: Callable[[], None]) -> None:
        """Call ``notify`` whenever the memory its runtimes share with it shifts (a spare runtime
        finished warming up), so that they are measured again; never, for the cold launcher."""
        ...

    def spare_state(self) -> str | None:
        """Its spare runtime: ``"warming"``, ``"warm"``, or None when it keeps none."""
        ...

    async def close(self) -> None: ...
