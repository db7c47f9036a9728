"""/v1/responses: the Responses API over the same chat engine as /v1/chat/completions.

A stream is OpenAI's event sequence for one text message: ``response.created``,
``response.in_progress``, ``response.output_item.added``, ``response.content_part.added``, a
``response.output_text.delta`` per piece, then the matching ``.done`` events and
``response.completed`` (or ``response.incomplete`` when ``max_output_tokens`` cut it short).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from llmi.caps import default_cap
from llmi.errors import LlmiError
from llmi.limits import check_limits
from llmi.protocol.responses import (
    IncompleteDetails,
    OutputMessage,
    OutputText,
    ResponseObject,
    ResponseRequest,
    ResponseUsage,
)
from llmi.web import SSE_HEADERS, parse_body, unless_client_leaves
from llmi_runtime.api.deps import json_response, new_id, now, state_of
from llmi_runtime.api.text import collect
from llmi_runtime.engines.sampling import Delta, SamplingParams

if TYPE_CHECKING:
    from llmi_runtime.engines.chat import ChatEngine
    from llmi_runtime.state import RuntimeState

router = APIRouter()
log = logging.getLogger("llmi.runtime")
RESPONSES = "/v1/responses"


@router.post(RESPONSES, include_in_schema=False)
async def responses(request: Request) -> Response:
    state = state_of(request)
    req = await parse_body(request, ResponseRequest)
    check_limits(req, state.settings)
    engine: ChatEngine = state.engine_for(req.model, RESPONSES)
    messages = req.messages()
    prompt = await state.prepare.run(lambda: engine.chat_prompt(messages))
    defaults = engine.defaults()
    params = SamplingParams(
        max_tokens=engine.token_budget(
            len(prompt), req.max_output_tokens, default_cap(state.settings), ("input", "max_output_tokens")
        ),
        temperature=req.temperature if req.temperature is not None else float(defaults.get("temperature", 1.0)),
        top_p=req.top_p if req.top_p is not None else float(defaults.get("top_p", 1.0)),
        top_k=max(0, int(defaults.get("top_k", 0))),
        presence_penalty=0.0,
        frequency_penalty=0.0,
        logit_bias=engine.check_logit_bias(None),
        seed=None,
        stop=(),
    )
    shape = _Shape(req, new_id("resp"), new_id("msg"), now(), len(prompt))
    if req.stream:
        events = _events(state, prompt, params, shape)
        return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
    text, last = await unless_client_leaves(request.receive, collect(state, prompt, params))
    state.metrics.prompt_tokens.labels(RESPONSES).inc(len(prompt))
    return json_response(shape.response(text, last))


class _Shape:
    """The ids and echoed settings every object of one response carries."""

    def __init__(self, req: ResponseRequest, rid: str, mid: str, created: int, prompt_tokens: int) -> None:
        self.req, self.rid, self.mid, self.created, self.prompt_tokens = req, rid, mid, created, prompt_tokens

    def response(self, text: str | None, last: Delta | None) -> ResponseObject:
        """The response object: in progress (no text yet) or finished with ``last``."""
        req = self.req
        if last is None:
            status, output, usage, incomplete = "in_progress", [], None, None
        else:
            cut = last.finish_reason == "length"
            status = "incomplete" if cut else "completed"
            output = [self.message(text or "", status)]
            usage = ResponseUsage(
                input_tokens=self.prompt_tokens,
                output_tokens=last.completion_tokens,
                total_tokens=self.prompt_tokens + last.completion_tokens,
            )
            incomplete = IncompleteDetails(reason="max_output_tokens") if cut else None
        return ResponseObject(
            id=self.rid,
            created_at=self.created,
            status=status,  # type: ignore[arg-type]
            incomplete_details=incomplete,
            instructions=req.instructions,
            max_output_tokens=req.max_output_tokens,
            model=req.model,
            output=output,
            temperature=req.temperature,
            top_p=req.top_p,
            metadata=req.metadata or {},
            usage=usage,
        )

    def message(self, text: str | None, status: str) -> OutputMessage:
        content = [] if text is None else [OutputText(text=text)]
        return OutputMessage(id=self.mid, status=status, content=content)  # type: ignore[arg-type]


async def _events(
    state: RuntimeState, prompt: list[int], params: SamplingParams, shape: _Shape
) -> AsyncIterator[bytes]:
    engine: ChatEngine = state.engine
    number = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal number
        data = json.dumps({"type": kind, "sequence_number": number, **fields}, separators=(",", ":"))
        number += 1
        return f"event: {kind}\ndata: {data}\n\n".encode()

    part = {"item_id": shape.mid, "output_index": 0, "content_index": 0}
    yield event("response.created", response=shape.response(None, None).model_dump())
    yield event("response.in_progress", response=shape.response(None, None).model_dump())
    yield event("response.output_item.added", output_index=0, item=shape.message(None, "in_progress").model_dump())
    yield event("response.content_part.added", **part, part=OutputText(text="").model_dump())
    pieces: list[str] = []
    final = Delta("", 0, "length")
    try:
        async for delta in state.worker.stream(engine.stream(prompt, params)):
            if delta.text:
                pieces.append(delta.text)
                yield event("response.output_text.delta", **part, delta=delta.text, logprobs=[])
            final = delta
    except LlmiError as exc:
        yield event("error", **exc.body()["error"])
        return
    except Exception:
        log.exception("generation failed")
        yield event("error", message="Generation failed.", code=None, param=None)
        return
    text = "".join(pieces)
    state.metrics.prompt_tokens.labels(RESPONSES).inc(len(prompt))
    state.metrics.completion_tokens.inc(final.completion_tokens)
    done = shape.response(text, final)
    message = done.output[0]
    yield event("response.output_text.done", **part, text=text, logprobs=[])
    yield event("response.content_part.done", **part, part=message.content[0].model_dump())
    yield event("response.output_item.done", output_index=0, item=message.model_dump())
    kind = "response.completed" if done.status == "completed" else "response.incomplete"
    yield event(kind, response=done.model_dump())
