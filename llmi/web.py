"""HTTP plumbing shared by the router and the runtime: strict body parsing, the body-size
limit, and exception handlers that turn every failure into the OpenAI error envelope."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping, Sequence
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmi.errors import BadRequest, ClientGone, LlmiError, PayloadTooLarge, Unavailable, error_body

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_HTTP_TYPES = {401: "authentication_error", 403: "permission_error", 404: "invalid_request_error"}


# Error types of our own validators whose type is also the error's ``code``.
_CODED = frozenset({"unsupported_parameter"})


def describe_validation_error(exc: ValidationError) -> tuple[str, str | None, str | None]:
    """A one-line message, the offending parameter and a code, from pydantic's errors."""
    return describe_errors(exc.errors(include_url=False, include_context=False, include_input=False))


def describe_errors(errors: Sequence[Any], skip_loc: int = 0) -> tuple[str, str | None, str | None]:
    """Pydantic-style error dicts as a sentence for people (never a Python repr), the parameter
    they name and a stable code where one applies. ``skip_loc`` drops a leading location part
    (FastAPI's ``body``). A field that no branch of its union accepts is one problem, described
    by the branches that got furthest, not by the first branch tried."""
    if not errors:
        return "The request is not valid.", None, None
    first = errors[0]
    if first["type"] == "json_invalid":
        return f"Request body is not valid JSON: {first['msg']}", None, None
    loc = list(first.get("loc") or ())[skip_loc:]
    if first["type"] == "model_type" and not loc:
        return "Request body must be a JSON object.", None, None
    field = _params(loc)[:1]
    same = [e for e in errors if _params(list(e.get("loc") or ())[skip_loc:])[:1] == field]
    if field and len(same) > 1 and any(_has_tag(list(e.get("loc") or ())[skip_loc:]) for e in same):
        parts, msg, kind = _union_problem(same, skip_loc)
        rest = len(errors) - len(same)
    else:
        parts, msg, kind = _params(loc), first["msg"], first["type"]
        rest = len(errors) - 1
    param = ".".join(parts) or None
    if kind == "extra_forbidden":
        msg = "Unrecognized request argument supplied"
    elif kind == "value_error":
        msg = msg.removeprefix("Value error, ")
    more = f" (and {rest} more {'problem' if rest == 1 else 'problems'})" if rest else ""
    return (f"{param}: {msg}{more}" if param else f"{msg}{more}"), param, kind if kind in _CODED else None


def _union_problem(errors: Sequence[Any], skip_loc: int) -> tuple[list[str], str, str]:
    """What a union's branches say about one value: a constraint broken by a branch whose shape
    fits (an empty list where lists are accepted) before a bare type mismatch; among mismatches,
    the place the branches got furthest to (deepest, then latest item), their expectations
    joined ("a valid string or a valid array")."""
    located = [(_params(list(e.get("loc") or ())[skip_loc:]), e) for e in errors]
    fitting = [(p, e) for p, e in located if not e["type"].endswith("_type")]
    if fitting:
        parts, error = max(fitting, key=lambda pe: len(pe[0]))
        return parts, error["msg"], error["type"]
    furthest = max((p for p, _ in located), key=lambda p: (len(p), [int(x) if x.isdigit() else -1 for x in p]))
    there = [e for p, e in located if p == furthest]
    expected = list(dict.fromkeys(e["msg"].removeprefix("Input should be ") for e in there))
    said = expected[0] if len(expected) == 1 else ", ".join(expected[:-1]) + " or " + expected[-1]
    return furthest, f"Input should be {said}", there[0]["type"]


def _params(loc: list[Any]) -> list[str]:
    """A location's real field names and indexes (union branches add their type names)."""
    return [str(p) for p in loc if isinstance(p, int) or not _is_type_tag(str(p))]


def _has_tag(loc: list[Any]) -> bool:
    return any(isinstance(p, str) and _is_type_tag(p) for p in loc)


def _is_type_tag(part: str) -> bool:
    return (
        part in {"str", "int", "float", "bool", "list", "dict", "none"}
        or any(c in part for c in "[]()")
        or part.startswith(("list[", "constrained-", "function-"))
        or part[:1].isupper()
    )


async def parse_body(request: Request, model: type[M]) -> M:
    """Read and validate the JSON body strictly; every failure is a 400 with the field named."""
    return parse_json(await request.body(), model)


def parse_json(body: bytes, model: type[M]) -> M:
    if not body.strip():
        raise BadRequest("Request body is empty; expected a JSON object.")
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        message, param, code = describe_validation_error(exc)
        raise BadRequest(message, param=param, code=code) from None


class HeadAsGet:
    """HEAD answered as the GET of the same path (load balancers' health checks, ``curl -I``):
    the app sees a GET, and the server, which still sees HEAD, sends the head without the body.
    The OpenAPI stays as it is: no HEAD operation per route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses bodies over ``limit`` bytes with 413, by header or by counting the stream,
    so a huge upload is never buffered whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit or declared < 0:
                    await _send_json(send, *self._too_large())
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise PayloadTooLarge(self._message())
            return message

        await self.app(scope, counted, send)

    def _message(self) -> str:
        return f"Request body exceeds the limit of {self.limit} bytes (LLM_MAX_REQUEST_BYTES)."

    def _too_large(self) -> tuple[int, dict[str, Any]]:
        return 413, PayloadTooLarge(self._message()).body()


async def _send_json(send: Send, status: int, body: dict[str, Any], extra: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def error_headers(exc: LlmiError) -> dict[str, str]:
    if isinstance(exc, Unavailable):
        return {"Retry-After": str(max(1, round(exc.retry_after)))}
    return {}


def error_response(exc: LlmiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=error_headers(exc))


async def send_json(send: Send, exc: LlmiError) -> None:
    """An error as a raw ASGI response, for endpoints that run without request objects."""
    await _send_json(send, exc.status, exc.body(), error_headers(exc))


def install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as the OpenAI envelope; 5xx bodies never carry internals."""

    async def on_llmi(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, LlmiError)
        if exc.status >= 500:
            log.warning("request failed: %s", exc.message)
        return error_response(exc)

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            message = f"Invalid URL ({request.method} {request.url.path})."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        else:
            message = str(exc.detail)
        type_ = _HTTP_TYPES.get(exc.status_code, "invalid_request_error")
        # OpenAI sends code null here: the status is already the HTTP status.
        return JSONResponse(
            error_body(message, type_), status_code=exc.status_code, headers=getattr(exc, "headers", None)
        )

    async def on_validation(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = list(exc.errors())
        skip = 1 if errors and tuple(errors[0].get("loc") or ())[:1] in {("body",), ("query",), ("path",)} else 0
        message, param, code = describe_errors(errors, skip_loc=skip)
        return JSONResponse(error_body(message, "invalid_request_error", param=param, code=code), status_code=400)

    async def on_unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return JSONResponse(error_body("Internal server error.", "server_error"), status_code=500)

    async def on_client_gone(_: Request, __: Exception) -> Response:
        return Response(status_code=499)  # nobody is listening; nothing to log

    app.add_exception_handler(ClientGone, on_client_gone)
    app.add_exception_handler(LlmiError, on_llmi)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_unexpected)


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
# What keeps proxies from buffering or caching a stream (nginx honours X-Accel-Buffering);
# llmi never compresses responses, so nothing holds bytes back to fill a compression block.
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


async def wait_for_disconnect(receive: Receive) -> None:
    """Return when the client has gone. Call only once the request body has been read: then
    the server's next message is the disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(receive: Receive, work: Coroutine[Any, Any, T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first (then ClientGone), so an
    abandoned request stops using the model; streams get the same from their response."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
    if not task.done():
        # The client left: let the work unwind its cancellation (its own finally blocks run).
        await asyncio.wait({task})
        raise ClientGone
    if task.cancelled():
        raise ClientGone
    return task.result()
