"""Small helpers the route modules share."""

from __future__ import annotations

import secrets
import time
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from llmi import __version__
from llmi_runtime.state import RuntimeState

# OpenAI's schema has system_fingerprint as a string: which build answered.
SYSTEM_FINGERPRINT = f"fp_llmi_{__version__}"


def state_of(request: Request) -> RuntimeState:
    state: RuntimeState = request.app.state.runtime
    return state


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def usage(prompt: int, completion: int = 0) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def json_response(body: BaseModel, status_code: int = 200) -> Response:
    """A protocol response model as JSON, serialised by pydantic (no second pass)."""
    return Response(body.model_dump_json(), status_code=status_code, media_type="application/json")
