"""Small helpers the route modules share."""

from __future__ import annotations

import secrets
import time
from typing import Any

from fastapi import Request

from llmi_runtime.state import RuntimeState


def state_of(request: Request) -> RuntimeState:
    state: RuntimeState = request.app.state.runtime
    return state


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def usage(prompt: int, completion: int = 0) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
