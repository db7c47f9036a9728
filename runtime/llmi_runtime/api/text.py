"""/v1/chat/completions and /v1/completions."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from llmi.caps import default_cap
from llmi.errors import BadRequest, LlmiError
from llmi.limits import check_limits
from llmi.protocol.chat import (
    AssistantMessage,
    ChatChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChunkChoice,
    ChunkDelta,
    Completion,
    CompletionChoice,
    CompletionRequest,
    SamplingFields,
)
from llmi.protocol.common import Usage
from llmi.web import SSE_DONE, SSE_HEADERS, parse_body, sse_event, unless_client_leaves
from llmi_runtime.api.deps import SYSTEM_FINGERPRINT, json_response, new_id, now, state_of, usage
from llmi_runtime.engines.sampling import Delta, SamplingParams
from llmi_runtime.state import RuntimeState

if TYPE_CHECKING:
    from llmi_runtime.engines.chat import ChatEngine

router = APIRouter()
log = logging.getLogger("llmi.runtime")
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"


def sampling(
    engine: ChatEngine, req: SamplingFields, limit: int, prompt_len: int, default_max: int | None
) -> SamplingParams:
    defaults = engine.defaults()
    return SamplingParams(
        max_tokens=engine.token_budget(prompt_len, limit if limit else None, default_max),
        temperature=req.temperature if req.temperature is not None else float(defaults.get("temperature", 1.0)),
        top_p=req.top_p if req.top_p is not None else float(defaults.get("top_p", 1.0)),
        top_k=max(0, req.top_k if req.top_k is not None else int(defaults.get("top_k", 0))),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        logit_bias=engine.check_logit_bias(req.logit_bias),
        seed=req.seed,
        stop=tuple(req.stop_list()),
    )


@router.post(CHAT, include_in_schema=False)
async def chat_completions(request: Request) -> Response:
    state = state_of(request)
    req = await parse_body(request, ChatCompletionRequest)
    check_limits(req, state.settings)
    engine: ChatEngine = state.engine_for(req.model, CHAT)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    # Templating and tokenizing a long prompt is CPU work: on the prepare thread, so the model's
    # thread keeps stepping other generations meanwhile.
    prompt = await state.prepare.run(lambda: engine.chat_prompt(messages))
    params = sampling(engine, req, req.token_limit() or 0, len(prompt), default_cap(state.settings))
    cid, created = new_id("chatcmpl"), now()

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(delta: ChunkDelta, finish: str | None) -> dict[str, Any]:
        event = ChatCompletionChunk(
            id=cid,
            created=created,
            model=req.model,
            system_fingerprint=SYSTEM_FINGERPRINT,
            choices=[ChunkChoice(delta=delta, finish_reason=finish)],  # type: ignore[arg-type]
        ).model_dump()
        event["choices"][0]["delta"] = delta.model_dump(exclude_none=True)  # OpenAI leaves unset fields out
        if not include_usage:
            del event["usage"]
        return event

    if req.stream:
        return _sse(
            _stream_events(
                state,
                prompt,
                params,
                include_usage,
                first=lambda: chunk(ChunkDelta(role="assistant", content=""), None),
                piece=lambda d: chunk(ChunkDelta(content=d.text), None) if d.text else None,
                last=lambda d: chunk(ChunkDelta(), d.finish_reason),
                usage_chunk=lambda u: {**chunk(ChunkDelta(), None), "choices": [], "usage": u},
            )
        )
    text, last = await unless_client_leaves(request.receive, collect(state, prompt, params))
    state.metrics.prompt_tokens.labels(CHAT).inc(len(prompt))
    answer = ChatCompletion(
        id=cid,
        created=created,
        model=req.model,
        system_fingerprint=SYSTEM_FINGERPRINT,
        choices=[
            ChatChoice(index=0, message=AssistantMessage(content=text), finish_reason=last.finish_reason)  # type: ignore[arg-type]
        ],
        usage=Usage(**usage(len(prompt), last.completion_tokens)),
    )
    return json_response(answer)


@router.post(COMPLETIONS, include_in_schema=False)
async def completions(request: Request) -> Response:
    state = state_of(request)
    req = await parse_body(request, CompletionRequest)
    check_limits(req, state.settings)
    engine: ChatEngine = state.engine_for(req.model, COMPLETIONS)
    prompts: list[Any] = (
        [req.prompt] if isinstance(req.prompt, str) or isinstance(req.prompt[0], int) else list(req.prompt)
    )
    if len(prompts) > 1 and req.stream:
        # One stream per request keeps the event order simple for clients; batch without streaming.
        raise BadRequest("Streaming is supported for one prompt at a time.", param="prompt")
    ids = [await state.prepare.run(lambda p=p: engine.text_prompt(p)) for p in prompts]
    params = [sampling(engine, req, req.token_limit(), len(i), default_cap(state.settings)) for i in ids]
    cid, created = new_id("cmpl"), now()

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(text: str, finish: str | None) -> dict[str, Any]:
        event = Completion(
            id=cid,
            created=created,
            model=req.model,
            system_fingerprint=SYSTEM_FINGERPRINT,
            choices=[CompletionChoice(text=text, index=0, finish_reason=finish)],  # type: ignore[arg-type]
        ).model_dump()
        if not include_usage:
            del event["usage"]
        return event

    if req.stream:
        return _sse(
            _stream_events(
                state,
                ids[0],
                params[0],
                include_usage,
                first=None,
                piece=lambda d: chunk(d.text, None) if d.text else None,
                last=lambda d: chunk("", d.finish_reason),
                usage_chunk=lambda u: {**chunk("", None), "choices": [], "usage": u},
            )
        )
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for index, (prompt_ids, p) in enumerate(zip(ids, params, strict=True)):
        text, last = await unless_client_leaves(request.receive, collect(state, prompt_ids, p))
        choices.append(CompletionChoice(text=text, index=index, finish_reason=last.finish_reason))  # type: ignore[arg-type]
        prompt_tokens += len(prompt_ids)
        completion_tokens += last.completion_tokens
    state.metrics.prompt_tokens.labels(COMPLETIONS).inc(prompt_tokens)
    answer = Completion(
        id=cid,
        created=created,
        model=req.model,
        system_fingerprint=SYSTEM_FINGERPRINT,
        choices=choices,
        usage=Usage(**usage(prompt_tokens, completion_tokens)),
    )
    return json_response(answer)


async def collect(state: RuntimeState, prompt: list[int], params: SamplingParams) -> tuple[str, Delta]:
    engine: ChatEngine = state.engine
    parts: list[str] = []
    last = Delta("", 0, "length")
    async for delta in state.worker.stream(engine.stream(prompt, params)):
        parts.append(delta.text)
        last = delta
    state.metrics.completion_tokens.inc(last.completion_tokens)
    return "".join(parts), last


async def _stream_events(
    state: RuntimeState,
    prompt: list[int],
    params: SamplingParams,
    include_usage: bool,
    *,
    first: Callable[[], dict[str, Any]] | None,
    piece: Callable[[Delta], dict[str, Any] | None],
    last: Callable[[Delta], dict[str, Any]],
    usage_chunk: Callable[[dict[str, Any]], dict[str, Any]],
) -> AsyncIterator[bytes]:
    """SSE events in OpenAI's order; a failure after headers are sent becomes an error event."""
    engine: ChatEngine = state.engine
    if first is not None:
        yield sse_event(first())
    final = Delta("", 0, "length")
    try:
        async for delta in state.worker.stream(engine.stream(prompt, params)):
            event = piece(delta)
            if event is not None:
                yield sse_event(event)
            final = delta
    except LlmiError as exc:
        yield sse_event(exc.body())
        yield SSE_DONE
        return
    except Exception:
        log.exception("generation failed")
        yield sse_event(
            {"error": {"message": "Generation failed.", "type": "server_error", "param": None, "code": None}}
        )
        yield SSE_DONE
        return
    yield sse_event(last(final))
    state.metrics.completion_tokens.inc(final.completion_tokens)
    if include_usage:
        yield sse_event(usage_chunk(usage(len(prompt), final.completion_tokens)))
    yield SSE_DONE


def _sse(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
