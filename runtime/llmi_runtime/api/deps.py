"""Small helpers the route modules share."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from fastapi import Request

from llmi_runtime.state import RuntimeState

T = TypeVar("T")


def state_of(request: Request) -> RuntimeState:
    state: RuntimeState = request.app.state.runtime
    return state


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def usage(prompt: int, completion: int = 0) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class ClientGone(Exception):
    """The client closed the connection before the answer was ready."""


async def unless_client_leaves(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``, cancelling it if the client disconnects, so an abandoned request stops
    using the model (streams get the same from their response's cancellation)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if task.cancelled():
        raise ClientGone
    return task.result()
