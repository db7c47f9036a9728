"""A stand-in for `vllm serve` in tests: the same command line, endpoints and error shape, no model.

Run as ``python tests/vllm_stub.py serve MODEL --served-model-name NAME --host H --port P ...``
(what LLM_VLLM_COMMAND points at). Every call is appended as a JSON line to the file named by
LLMI_VLLM_STUB_LOG, so a test can check the arguments and the sleep/wake calls it received.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

REPLY = "Hello from the stub"


def option(argv: list[str], flag: str, default: str | None = None) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else default


def main(argv: list[str]) -> None:
    assert argv[0] == "serve", argv
    name = option(argv, "--served-model-name") or argv[1]
    state = {"sleeping": False}
    log_path = os.environ.get("LLMI_VLLM_STUB_LOG")

    def record(event: str, **fields: Any) -> None:
        if log_path:
            with open(log_path, "a") as out:
                out.write(json.dumps({"model": name, "event": event, **fields}) + "\n")

    record("argv", argv=argv, env={k: v for k, v in os.environ.items() if k.startswith("VLLM_")})

    def error(message: str, status: int) -> JSONResponse:
        # vLLM's own error body: an integer code, "object": "error".
        body = {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": status}
        return JSONResponse(body, status_code=status)

    async def health(_: Request) -> Response:
        return Response(status_code=200)

    async def models(_: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "owned_by": "vllm"}]})

    async def sleep(request: Request) -> Response:
        state["sleeping"] = True
        record("sleep", level=request.query_params.get("level"))
        return Response(status_code=200)

    async def wake_up(_: Request) -> Response:
        state["sleeping"] = False
        record("wake_up")
        return Response(status_code=200)

    async def chat(request: Request) -> Response:
        body = await request.json()
        record("chat", stream=bool(body.get("stream")))
        if state["sleeping"]:
            return error("The engine is sleeping.", 503)
        if body.get("model") != name:
            return error(f"The model `{body.get('model')}` does not exist.", 404)
        if int(body.get("max_tokens") or 16) > 1000:
            return error("max_tokens is too large for this stub's context.", 400)
        created = int(time.time())
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion",
                    "created": created,
                    "model": name,
                    "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": REPLY}, "finish_reason": "stop"}
                    ],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
                }
            )

        async def events() -> AsyncIterator[bytes]:
            for i, word in enumerate(REPLY.split(" ")):
                delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
                chunk = {
                    "id": "chatcmpl-stub",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": name,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n".encode()
            done = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}  # fmt: skip
            yield f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/models", models),
            Route("/sleep", sleep, methods=["POST"]),
            Route("/wake_up", wake_up, methods=["POST"]),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )
    host = option(argv, "--host", "127.0.0.1") or "127.0.0.1"
    uvicorn.run(app, host=host, port=int(option(argv, "--port", "8000") or 8000), log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
