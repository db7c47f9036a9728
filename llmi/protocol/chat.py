"""/v1/chat/completions and /v1/completions requests (OpenAI shape).

Fields OpenAI defines but llmi cannot honour are accepted only at their neutral values;
anything else is refused with a message naming the field, never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from llmi.protocol.common import PositiveInt, Request, Usage
from llmi.protocol.common import Response as ResponseBase

Role = Literal["system", "developer", "user", "assistant", "tool"]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    type: Literal["text"]
    text: str


class OtherPart(BaseModel):
    """Image, audio or file parts: recognised so the error can say what is unsupported."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    type: Literal["image_url", "input_audio", "file", "refusal"]


ContentPart = Annotated[TextPart | OtherPart, Field(discriminator="type")]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    role: Role
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    refusal: str | None = None

    def text(self) -> str:
        """The message as plain text; non-text parts are refused by the request check."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if isinstance(p, TextPart))


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    include_usage: bool = False
    continuous_usage_stats: bool = False


# Counts and lengths of stop strings and logit_bias are settings (llmi/limits.py), not types.
StopWord = Annotated[str, StringConstraints(min_length=1)]


class SamplingFields(Request):
    """Sampling parameters shared by chat and legacy completions."""

    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    max_tokens: PositiveInt | None = None
    stop: StopWord | list[StopWord] | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**64 - 1)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    n: Annotated[int, Field(ge=1, le=1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: PositiveInt | None = None
    logprobs: Literal[False] | None = None
    top_logprobs: Literal[0] | None = None
    tools: Annotated[list[dict[str, Any]], Field(max_length=0)] | None = None
    tool_choice: Literal["none", "auto"] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    modalities: list[Literal["text"]] | None = None
    reasoning_effort: str | None = None

    @model_validator(mode="after")
    def _check_supported(self) -> ChatCompletionRequest:
        if self.response_format is not None and self.response_format.get("type") != "text":
            raise ValueError("response_format other than {'type': 'text'} is not supported")
        for m in self.messages:
            if isinstance(m.content, list):
                for part in m.content:
                    if not isinstance(part, TextPart):
                        raise ValueError(f"message content parts of type '{part.type}' are not supported")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    echo: Literal[False] | None = None
    best_of: Literal[1] | None = None
    logprobs: Literal[0] | None = None
    suffix: None = None

    def token_limit(self) -> int | None:
        # The legacy API's default is 16 tokens.
        return 16 if self.max_tokens is None else self.max_tokens


# -- responses ------------------------------------------------------------------------------

FinishReason = Literal["stop", "length"]


class AssistantMessage(ResponseBase):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None


class ChatChoice(ResponseBase):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class ChatCompletion(ResponseBase):
    """OpenAI's ``chat.completion`` object."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChoice]
    usage: Usage


class ChunkDelta(ResponseBase):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(ResponseBase):
    index: int = 0
    delta: ChunkDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None


class ChatCompletionChunk(ResponseBase):
    """One ``data:`` event of a streamed chat completion (``usage`` only with include_usage)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class CompletionChoice(ResponseBase):
    text: str
    index: int
    logprobs: None = None
    finish_reason: FinishReason | None = None


class Completion(ResponseBase):
    """OpenAI's ``text_completion`` object; streamed events have the same shape."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
