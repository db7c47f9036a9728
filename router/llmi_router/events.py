"""State changes of models as a stream: what `/v1/events`, the status page and `llmi ps --watch`
show. The control plane publishes; each subscriber has its own bounded queue, so a slow reader
loses its oldest events (and is told so) instead of slowing the control plane down."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel

HISTORY = 200
QUEUE = 1000


class ModelEvent(BaseModel):
    """One change: ``kind`` is loading, ready, failed, evicting, parking, parked, waking, idle,
    crashed, stopped, found, gone or back (and ``dropped`` when a reader fell behind)."""

    kind: str
    model: str
    time: float
    state: str | None = None
    detail: str = ""
    seconds: float | None = None
    memory_estimated_bytes: int | None = None
    memory_measured_bytes: int | None = None
    placement: str | None = None


class EventHub:
    """Fan-out of model events with a short history for readers that join late."""

    def __init__(self, history: int = HISTORY) -> None:
        self._history: deque[ModelEvent] = deque(maxlen=history)
        self._subscribers: set[asyncio.Queue[ModelEvent]] = set()

    def publish(self, event: ModelEvent) -> None:
        self._history.append(event)
        for queue in self._subscribers:
            if queue.full():
                queue.get_nowait()
                queue.put_nowait(ModelEvent(kind="dropped", model="", time=time.time(), detail="reader fell behind"))
                continue
            queue.put_nowait(event)

    def recent(self) -> list[ModelEvent]:
        return list(self._history)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[ModelEvent]]:
        queue: asyncio.Queue[ModelEvent] = asyncio.Queue(QUEUE)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)


def event_json(event: ModelEvent) -> dict[str, Any]:
    return event.model_dump(exclude_none=True)
