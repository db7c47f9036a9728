"""What the router needs from a control plane: a way to get a ready model and let go of it.

The embedded supervisor and the Kubernetes backend both provide this; the router depends on
nothing else, and tests may pass in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from llmi.protocol.models import ModelCard


class Lease(Protocol):
    """A ready model's endpoint, held while one request uses it."""

    url: str
    socket: str | None  # a Unix socket the same runtime listens on (embedded), or None

    def release(self) -> None: ...


@dataclass
class OnceLease:
    """A lease whose release runs its callback exactly once, however often it is called."""

    url: str
    _release: Callable[[], None]
    socket: str | None = None  # a Unix socket the same runtime listens on, for the front's relay
    _done: bool = False

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._release()


class ControlPlane(Protocol):
    async def acquire(self, model: str, deadline_s: float) -> Lease:
        """Make ``model`` ready (loading it, evicting others) and hold it for one request.

        Raises ModelNotFound, Unavailable (503, Retry-After) or TooManyRequests (429)."""
        ...

    def model_type(self, model: str) -> str | None:
        """The type of a known model, or None."""
        ...

    def describe(self) -> list[ModelCard]:
        """Every model with its type, state, memory and placement, for /v1/models."""
        ...

    def health(self) -> dict[str, Any]:
        """What /v1/health adds: memory planned and budget, states, problems."""
        ...

    async def forget_if_dead(self, model: str, url: str) -> bool:
        """After a refused connection to ``url``: True when that runtime is gone and a retry
        may reach a fresh one."""
        ...

    async def close(self) -> None:
        """Stop background work (and, embedded, every runtime)."""
        ...


@runtime_checkable
class ReadinessProbe(Protocol):
    """Optional for a control plane: whether ``model`` is ready now, so that the router may skip
    its strict body check (the runtime checks again) when no load can follow, and a lease taken
    without waiting, for the front door's fast path."""

    def is_ready(self, model: str) -> bool: ...

    def hold_now(self, model: str) -> Lease | None:
        """A lease on ``model`` when one can be granted this instant (ready, below its concurrency
        bound, nothing queued before it), else None; never waits, never starts a load."""
        ...


@runtime_checkable
class EngineProbe(Protocol):
    """Optional for a control plane: the engine that serves ``model`` ("vllm", "transformers"),
    so that the router passes through what vLLM validates and honours (tools, logprobs, n, ...)."""

    def engine(self, model: str) -> str | None: ...
