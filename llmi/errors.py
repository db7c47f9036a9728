"""Typed errors and the one OpenAI-shaped error envelope.

Services raise these; one table (``status``) decides the HTTP status, so no handler
invents its own shape. 5xx messages never carry internals.
"""

from __future__ import annotations

import json
from typing import Any


class LlmiError(Exception):
    """Base of every error a client may see."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, param=self.param, code=self.code)


class BadRequest(LlmiError):
    status = 400
    type = "invalid_request_error"


class WrongModelType(BadRequest):
    """A known model asked for what its type does not serve (chat from an embedding model)."""

    code = "wrong_model_type"

    def __init__(self, model: str, kind: str, path: str) -> None:
        article = "an" if kind[:1] in "aeiou" else "a"
        super().__init__(f"Model '{model}' is {article} {kind} model and does not serve {path}.", param="model")


class NotFound(LlmiError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        # Bounded: a hostile overlong name is not echoed back whole.
        shown = model if len(model) <= 80 else f"{model[:80]}... ({len(model)} characters)"
        super().__init__(f"The model '{shown}' does not exist.", param="model")


class ResponseNotFound(NotFound):
    """``client.responses.retrieve``, ``delete`` and ``input_items.list``: llmi answers a response
    and keeps nothing."""

    code = "response_not_found"

    def __init__(self, response_id: str) -> None:
        shown = response_id if len(response_id) <= 80 else f"{response_id[:80]}..."
        super().__init__(
            f"No response '{shown}' is stored: llmi keeps no responses (store is ignored). "
            "Keep the output you were sent, and send the whole conversation as input.",
            param="response_id",
        )


class Conflict(LlmiError):
    """The request contradicts what the resource is doing (parking a model that runs on the CPU)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class ModelTooLarge(LlmiError):
    """The model can never be loaded here (it exceeds the whole budget, even offloaded): a
    permanent refusal, so a 400 that clients do not retry, with the reason."""

    status = 400
    type = "invalid_request_error"
    code = "model_too_large"

    def __init__(self, model: str, reason: str) -> None:
        super().__init__(f"Model '{model}' cannot be loaded: {reason}", param="model")


class TokenLimitExceeded(LlmiError):
    """``max_tokens`` above LLM_MAX_TOKENS_LIMIT."""

    status = 400
    type = "invalid_request_error"
    code = "max_tokens_too_large"


class LimitExceeded(BadRequest):
    """A request over one of the configured limits (LLM_MAX_*): the message names the limit and
    its setting, ``param`` the field; a 400 clients should not retry unchanged."""

    code = "limit_exceeded"


class PayloadTooLarge(LlmiError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Unavailable(LlmiError):
    """The model is not ready (loading, or no room in time); clients should retry."""

    status = 503
    type = "server_error"
    code = "model_not_ready"

    def __init__(self, message: str, *, retry_after: float = 1.0, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after


class NotReadyInTime(Unavailable):
    """The model did not become ready before the request's deadline (embedded or Kubernetes)."""

    def __init__(self, model: str, deadline_s: float) -> None:
        super().__init__(
            f"Model '{model}' could not be made ready in time.",
            retry_after=max(1.0, deadline_s / 2),
            code="model_not_ready",
        )


class TooManyRequests(Unavailable):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"


class ClientGone(Exception):
    """The client closed the connection before the answer was ready; nobody is listening."""


class UpstreamFailed(LlmiError):
    status = 502
    type = "server_error"
    code = "upstream_failed"


def error_body(message: str, type_: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The envelope OpenAI's clients parse: ``{"error": {message, type, param, code}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openai_error(content: bytes, status: int) -> bytes:
    """An upstream's error body in OpenAI's envelope. vLLM answers ``{"object": "error", "message",
    "type": "BadRequestError", "code": 400}`` (or the same inside ``"error"``): the integer code
    and the Python class name become ``null`` and OpenAI's type. llmi's own bodies pass unchanged."""
    try:
        body = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return content
    if not isinstance(body, dict):
        return content
    inner = body.get("error")
    error: dict[str, Any] = inner if isinstance(inner, dict) else body
    if "message" not in error:
        return content
    code = error.get("code")
    ours = error.get("type") in OPENAI_TYPES and (code is None or isinstance(code, str))
    if ours and error is not body:
        return content
    return json.dumps(
        error_body(
            str(error.get("message")),
            "invalid_request_error" if status < 500 else "server_error",
            param=error.get("param") if isinstance(error.get("param"), str) else None,
            code=code if isinstance(code, str) else None,
        )
    ).encode()


OPENAI_TYPES = {"invalid_request_error", "server_error", "rate_limit_error", "authentication_error", "not_found_error"}
