"""/v1/chat/completions and /v1/completions requests (OpenAI shape).

Fields OpenAI defines but llmi cannot honour are accepted only at their neutral values;
anything else is refused with a message naming the field, never silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from llmi.protocol.common import PositiveInt, Request, Usage, only, unsupported
from llmi.protocol.common import Response as ResponseBase

# How a refusal of what only the vLLM engine honours ends (the router passes these fields through to it).
VLLM_ONLY = "not supported by llmi's transformers engine (a model served by vLLM accepts it)"

# A count of log probabilities (chat's top_logprobs, completions' logprobs): 0 only.
NoLogprobs = Annotated[
    int,
    AfterValidator(only(0, f"log probabilities are {VLLM_ONLY}.")),
    WithJsonSchema({"type": "integer", "const": 0}),
]

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
    n: (
        Annotated[
            int,
            Field(ge=1),
            AfterValidator(only(1, f"more than one choice is {VLLM_ONLY}; send the request again for another.")),
            WithJsonSchema({"type": "integer", "minimum": 1, "maximum": 1}),
        ]
        | None
    ) = None
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
    logprobs: (
        Annotated[
            bool,
            AfterValidator(only(False, f"log probabilities are {VLLM_ONLY}.")),
            WithJsonSchema({"type": "boolean", "const": False}),
        ]
        | None
    ) = None
    top_logprobs: NoLogprobs | None = None
    tools: (
        Annotated[
            list[dict[str, Any]],
            AfterValidator(only([], f"tool calling is {VLLM_ONLY}.")),
            WithJsonSchema({"type": "array", "items": {"additionalProperties": True, "type": "object"}, "maxItems": 0}),
        ]
        | None
    ) = None
    tool_choice: Literal["none", "auto"] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    modalities: list[Literal["text"]] | None = None
    reasoning_effort: str | None = None

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") != "text":
            kind = value.get("type")
            named = f"type {kind!r}" if isinstance(kind, str) else "a response_format without a string type"
            raise unsupported(f"{named} is {VLLM_ONLY}; here only type 'text' is.")
        return value

    @field_validator("messages")
    @classmethod
    def _text_parts_only(cls, messages: list[Message]) -> list[Message]:
        for i, m in enumerate(messages):
            for j, part in enumerate(m.content if isinstance(m.content, list) else ()):
                if not isinstance(part, TextPart):
                    raise unsupported(
                        f"message {i} has a content part of type '{part.type}' (part {j}); this model reads text only."
                    )
        return messages

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(SamplingFields):
    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | Annotated[list[TokenIds], Field(min_length=1)]
    echo: (
        Annotated[
            bool,
            AfterValidator(only(False, "echoing the prompt back is not supported.")),
            WithJsonSchema({"type": "boolean", "const": False}),
        ]
        | None
    ) = None
    best_of: (
        Annotated[
            int,
            AfterValidator(only(1, "best_of above 1 is not supported; send the request again for another.")),
            WithJsonSchema({"type": "integer", "const": 1}),
        ]
        | None
    ) = None
    logprobs: NoLogprobs | None = None
    suffix: (
        Annotated[
            str,
            AfterValidator(only(None, "a suffix (fill-in-the-middle) is not supported.")),
            WithJsonSchema({"type": "null"}),
        ]
        | None
    ) = None

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
